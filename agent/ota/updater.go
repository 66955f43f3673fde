// Package ota is the agent's over-the-air A/B updater: it installs a
// signed release into the inactive slot of the boot disk and settles the
// trial boot of that slot, so that a robot always boots a complete slot.
//
// Install takes an update command, verifies the release's signature by a
// key baked into the image and its metadata (profile, minimum agent
// version, partition sizes) before it writes a byte, downloads only the
// chunks the robot does not already have in its active slot or in its
// download cache (so a cut download resumes), writes the inactive slot's
// boot and system partitions (only the pieces that differ), flushes, reads
// them back against the release's sha256, arms a one-shot trial of that
// slot and reboots into it. OnStart, called once at every agent start,
// finishes what a reboot left: on a trial boot it runs the health check
// within a timeout and commits the slot or reboots back to the old one;
// after a trial that never came up (watchdog reset, power cut) it reports
// the rollback. Every state change goes to Report (an update Event).
//
// What survives a power cut: the slot being written is never the default
// until Commit, and Commit happens only on a healthy trial boot of a slot
// that was flushed and verified first — so the firmware always finds the
// old slot or the new, complete one (see the power-cut sweep in the tests).
// The small state file (StateFile in Options.StateDir, on the persistent
// partition) tells the next start which update was in flight.
//
// Downgrades: a validly signed release can still be an old one with a
// known hole, so a robot refuses a release whose security version
// (release.Config.SecurityVersion) is below its floor — the highest
// security version it committed, or the build time of an image it ran
// when an update started (Options.CurrentSecurityVersion) — unless the
// command allows the downgrade (protocol.UpdateArgs.AllowDowngrade, an
// engineer's deployment). Neither an allowed downgrade nor a rollback
// command lowers the floor: the next ordinary update must still not go
// below the highest security version the robot ever held.
//
// OpenPi builds an Updater on the Raspberry Pi the agent runs on; the
// update command that drives it is answered by package updatecmd.
package ota

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/protocol"
)

// Defaults for Options.
const (
	DefaultHealthTimeout    = 300 * time.Second
	DefaultHealthRetry      = 5 * time.Second
	DefaultProgressInterval = 5 * time.Second
)

// ReasonTrialLost is the rollback reason when the trial boot never reached
// the agent: the watchdog reset a hung trial, or power was lost.
const ReasonTrialLost = "trial boot did not come up (watchdog reset or power loss)"

// ReasonRebootNotMade is the failure reason when the agent starts again
// in the boot that asked for the trial reboot: the machine never
// restarted, so the trial was never tried.
const ReasonRebootNotMade = "the reboot into the trial never happened: the agent started again in the same boot (its reboot request failed or the agent was killed making it; see its journal)"

// BootIDFile is where Linux gives the id of the running boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// Errors the updater returns for requests it refuses; check with errors.Is.
var (
	ErrBusy         = errors.New("another update is running")
	ErrTrialPending = errors.New("a trial boot is pending: it must be committed or rolled back first")
	// ErrRefused wraps every reason a release is refused before anything
	// is written (signature, pin, profile, agent version, sizes).
	ErrRefused = errors.New("release refused")
	// ErrNoRollback: the previous slot holds no complete, known version.
	ErrNoRollback = errors.New("no previous version to roll back to")
)

// Options are the updater's parts; Boot, Disk, DiskSize, TrustedKeys,
// Source, StateDir, CacheDir and Profile are required.
type Options struct {
	Boot     bootctl.Controller
	Disk     Disk  // the whole boot disk
	DiskSize int64 // its size in bytes
	// TrustedKeys are the image's baked update keys
	// (release.ReadPublicKeys("/etc/lekiwi/update-keys")).
	TrustedKeys []ed25519.PublicKey
	Source      Source
	// StateDir holds StateFile, CacheDir the chunks of partial downloads;
	// both on the persistent partition.
	StateDir, CacheDir string
	// Store, if set, keeps the state instead of StateDir's file (tests
	// model what a power cut does to it).
	Store        Store
	Profile      string // the robot's profile: a release of another is refused
	AgentVersion string // this agent's version, against the release's minimum
	// CurrentVersion is the running image's version (image.json); it names
	// what the old slot holds for a later rollback.
	CurrentVersion string
	// CurrentSecurityVersion is the running image's build time
	// (image.json's created, Unix seconds), the security version releases
	// of it default to: a release below it is a downgrade. 0: unknown.
	CurrentSecurityVersion int64
	// Report receives every state change; nil drops them.
	Report func(protocol.UpdateState)
	// Health is the trial boot's health check (see Health); nil passes.
	// It is retried every HealthRetry until it passes or the timeout ends.
	Health        func(ctx context.Context) error
	HealthTimeout time.Duration // default DefaultHealthTimeout
	HealthRetry   time.Duration // default DefaultHealthRetry
	// DownloadAttempts bounds the tries of a download whose link drops;
	// each try fetches only what earlier ones did not (default 5), after
	// RetryDelay, doubled each time (default 2 s).
	DownloadAttempts int
	RetryDelay       time.Duration
	// ProgressInterval spaces downloading/writing progress reports.
	ProgressInterval time.Duration
	Now              func() time.Time // default time.Now
	// BootID returns the running boot's id; default reads BootIDFile.
	// An error leaves the id unrecorded, and a restart in the same boot
	// then reads as a trial that never came up.
	BootID func() (string, error)
}

// Updater runs one update at a time.
type Updater struct {
	o    Options
	busy sync.Mutex
}

// New checks the options; it touches nothing.
func New(o Options) (*Updater, error) {
	switch {
	case o.Boot == nil:
		return nil, errors.New("updater: no boot controller")
	case o.Disk == nil || o.DiskSize <= 0:
		return nil, errors.New("updater: no boot disk (open the whole disk, e.g. /dev/mmcblk0, read-write)")
	case len(o.TrustedKeys) == 0:
		return nil, errors.New("updater: no trusted update keys: this robot could accept no release (bake keys with `provision image build --update-key`)")
	case o.Source == nil:
		return nil, errors.New("updater: no release source")
	case o.StateDir == "" && o.Store == nil || o.CacheDir == "":
		return nil, errors.New("updater: state and cache directories are required (on the persistent partition)")
	case o.Profile == "":
		return nil, errors.New("updater: the robot's profile is required to check releases against")
	case o.CurrentSecurityVersion < 0:
		return nil, fmt.Errorf("updater: the running image's security version %d is negative", o.CurrentSecurityVersion)
	}
	if o.Store == nil {
		o.Store = FileStore{Path: filepath.Join(o.StateDir, StateFile)}
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = DefaultHealthTimeout
	}
	if o.HealthRetry <= 0 {
		o.HealthRetry = DefaultHealthRetry
	}
	if o.DownloadAttempts <= 0 {
		o.DownloadAttempts = 5
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 2 * time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = DefaultProgressInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BootID == nil {
		o.BootID = readBootID
	}
	if o.Report == nil {
		o.Report = func(protocol.UpdateState) {}
	}
	return &Updater{o: o}, nil
}

func (u *Updater) report(s protocol.UpdateState) {
	s.Since = u.o.Now()
	u.o.Report(s)
}

// Install installs the release args names into the inactive slot and
// reboots into a trial of it (see the package comment). It reports every
// state; on a refusal or failure it reports failed and returns the error,
// and the robot keeps running and booting what it did. On a real Pi a
// successful Install does not return (the machine reboots); with a
// modelled reboot it returns nil after Reboot.
//
// args.Rollback runs Rollback instead.
func (u *Updater) Install(ctx context.Context, args protocol.UpdateArgs) error {
	if !u.busy.TryLock() {
		return fmt.Errorf("update %s: %w", args.Version, ErrBusy)
	}
	defer u.busy.Unlock()
	if args.Rollback {
		return u.rollback(ctx, args)
	}
	base := protocol.UpdateState{DeploymentID: args.DeploymentID, Version: args.Version}
	fail := func(err error) error { return u.failed(base, err) }
	cost := startCost()
	st, plan, state, err := u.preflight(ctx)
	if err != nil {
		return fail(err)
	}
	target := st.Booted.Other()
	base.Slot = string(target)

	rel, err := u.verify(ctx, args, plan, target, u.floor(state))
	if err != nil {
		return fail(err)
	}
	if args.Version == "" {
		base.Version = rel.Config.Version
	}

	// From here on the inactive slot is no longer a known version.
	state.Pending = &Pending{DeploymentID: args.DeploymentID, Release: args.Release, Version: rel.Config.Version,
		Slot: target, From: st.Booted, Phase: phaseInstalling, HealthTimeoutSeconds: args.HealthTimeoutSeconds,
		HealthRetries: args.HealthRetries, Started: u.o.Now(), SecurityVersion: rel.Config.SecurityVersion, AllowDowngrade: args.AllowDowngrade}
	state.SecurityFloor = u.floor(state)
	// The running, default slot is complete by definition; its version is
	// what the updater wrote there, or the image's.
	from := state.slot(st.Booted)
	from.Complete = true
	if from.Version == "" {
		from.Version = u.o.CurrentVersion
	}
	state.Slots[target] = &SlotRecord{Version: rel.Config.Version}
	if err := saveState(u.o.Store, state); err != nil {
		return fail(err)
	}
	abandon := u.abandonWith(state, fail)

	hashes, err := u.download(ctx, rel, args, plan, st.Booted, target, base)
	if err != nil {
		return abandon(err)
	}

	// The release's boot partition carries a generic cloud-init seed; the
	// robot's own (instance id, host name) comes from the running slot.
	if err := carrySeed(ctx, u.o.Disk, plan, st.Booted, target); err != nil {
		return abandon(err)
	}

	rec := state.slot(target)
	// hashes are the release's, as verified before the seed was carried.
	rec.Complete, rec.SHA256 = true, hashes
	state.Pending.Phase = phaseArmed
	state.Pending.BootID = u.bootID()
	if err := saveState(u.o.Store, state); err != nil {
		return abandon(err)
	}
	if err := u.armAndReboot(ctx, target, base, cost); err != nil {
		return abandon(err)
	}
	return nil
}

// abandonWith returns fail preceded by dropping the pending update from
// the saved state: for failures after the state named a pending update
// and before the trial reboot, which leave the default slot as it was.
func (u *Updater) abandonWith(state *State, fail func(error) error) func(error) error {
	return func(err error) error {
		state.Pending = nil
		if serr := saveState(u.o.Store, state); serr != nil {
			err = errors.Join(err, serr)
		}
		return fail(err)
	}
}

// armAndReboot arms a one-shot trial boot of slot, reports the update
// armed and asks for the trial reboot. Armed but not rebooted is harmless
// (a normal boot selects the default), but the update has then failed.
func (u *Updater) armAndReboot(ctx context.Context, slot bootctl.Slot, base protocol.UpdateState, cost processCost) error {
	if err := u.o.Boot.ArmTryboot(ctx, slot); err != nil {
		return fmt.Errorf("arm a trial boot of slot %s: %w", slot, err)
	}
	s := base
	s.State = protocol.UpdateArmed
	s.AgentMaxRSSBytes, s.AgentCPUSeconds = cost.since()
	u.report(s)
	if err := u.o.Boot.Reboot(ctx, true); err != nil {
		return fmt.Errorf("reboot into the trial of slot %s: %w", slot, err)
	}
	return nil
}

// preflight reads the boot status, the disk layout and the state, and
// refuses while a trial is pending.
func (u *Updater) preflight(ctx context.Context) (bootctl.Status, *layout.Plan, *State, error) {
	st, err := u.o.Boot.Status(ctx)
	if err != nil {
		return st, nil, nil, fmt.Errorf("boot status: %w", err)
	}
	if st.PendingCommit() || st.Booted != st.Default {
		return st, nil, nil, fmt.Errorf("running slot %s, default slot %s (trial %v): %w", st.Booted, st.Default, st.Trial, ErrTrialPending)
	}
	state, err := loadState(u.o.Store)
	if err != nil {
		return st, nil, nil, err
	}
	if p := state.Pending; p != nil && p.Phase == phaseArmed {
		return st, nil, nil, fmt.Errorf("update %s to slot %s is armed (restart the agent to settle it): %w", p.Version, p.Slot, ErrTrialPending)
	}
	plan, err := layout.ReadGPT(u.o.Disk, u.o.DiskSize)
	if err != nil {
		return st, nil, nil, fmt.Errorf("boot disk: %w", err)
	}
	if err := layout.CheckAB(plan); err != nil {
		return st, nil, nil, fmt.Errorf("boot disk: %w", err)
	}
	return st, plan, state, nil
}

// floor is the lowest security version the robot installs unless told to
// downgrade: the highest it committed, or the running image's build time.
// Install and rollback save it as State.SecurityFloor before they change
// what runs, so the build time of an image the robot leaves stays part of
// the floor after an allowed downgrade or a rollback.
func (u *Updater) floor(s *State) int64 { return max(s.SecurityFloor, u.o.CurrentSecurityVersion) }

// verify fetches and checks the release; nothing is written before it
// returns without error. floor is the robot's security floor.
func (u *Updater) verify(ctx context.Context, args protocol.UpdateArgs, plan *layout.Plan, target bootctl.Slot, floor int64) (*release.Release, error) {
	if args.Release == "" {
		return nil, fmt.Errorf("%w: the update names no release", ErrRefused)
	}
	raw, cfg, err := u.o.Source.Pull(ctx, args.Release)
	if err != nil {
		return nil, fmt.Errorf("fetch release %s: %w", args.Release, err)
	}
	if want := pinnedDigest(args.Release); want != "" && digestOf(raw) != want {
		return nil, fmt.Errorf("%w: release %s: the manifest served is %s, not the approved one", ErrRefused, args.Release, digestOf(raw))
	}
	rel, err := release.Verify(u.o.TrustedKeys, raw, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrRefused, args.Release, err)
	}
	c := rel.Config
	if args.Version != "" && c.Version != args.Version {
		return nil, fmt.Errorf("%w: release %s is version %s, the update asks for %s", ErrRefused, args.Release, c.Version, args.Version)
	}
	if c.Profile != u.o.Profile {
		return nil, fmt.Errorf("%w: release %s is for profile %q, this robot is %q", ErrRefused, c.Version, c.Profile, u.o.Profile)
	}
	if !agentSatisfies(u.o.AgentVersion, c.MinAgentVersion) {
		return nil, fmt.Errorf("%w: release %s needs agent %s or newer, this agent is %s: update the agent first", ErrRefused, c.Version, c.MinAgentVersion, u.o.AgentVersion)
	}
	// The security version is read from the verified config: the signature
	// covers it.
	if c.SecurityVersion < floor && !args.AllowDowngrade {
		return nil, fmt.Errorf("%w: release %s is a downgrade: its security version %d is below this robot's floor %d (the highest it committed, or the build time of the image it runs); to install it on purpose, deploy it with allow_downgrade (control deploy create --allow-downgrade)", ErrRefused, c.Version, c.SecurityVersion, floor)
	}
	for _, n := range []int{target.BootPartition(), target.SystemPartition()} {
		part := plan.Part(n)
		rp, ok := c.Partition(part.Name)
		if !ok {
			return nil, fmt.Errorf("%w: release %s carries no %s", ErrRefused, c.Version, part.Name)
		}
		if rp.Size > part.Size {
			return nil, fmt.Errorf("%w: release %s's %s is %d bytes, this disk's %s only %d", ErrRefused, c.Version, part.Name, rp.Size, part.Name, part.Size)
		}
	}
	return rel, nil
}

// download fetches what is missing, writes the target slot, flushes and
// verifies it, and returns the verified partition hashes.
func (u *Updater) download(ctx context.Context, rel *release.Release, args protocol.UpdateArgs, plan *layout.Plan, active, target bootctl.Slot, base protocol.UpdateState) (map[string]string, error) {
	blobs, err := u.o.Source.Blobs(ctx, args.Release)
	if err != nil {
		return nil, fmt.Errorf("release %s blobs: %w", args.Release, err)
	}
	var downloaded atomic.Int64
	local := release.NewSlotChunks()
	for _, n := range []int{active.BootPartition(), active.SystemPartition()} {
		p := plan.Part(n)
		if err := local.Add(ctx, readerAt{u.o.Disk, p.Start}, p.Size); err != nil {
			return nil, fmt.Errorf("index the active slot's %s: %w", p.Name, err)
		}
	}
	f := &release.Fetcher{Release: rel, Source: countingSource{blobs, &downloaded}, Local: local, CacheDir: u.o.CacheDir}
	names := []string{plan.Part(target.BootPartition()).Name, plan.Part(target.SystemPartition()).Name}
	fp, err := f.Plan(names...)
	if err != nil {
		return nil, err
	}

	s := base
	s.State, s.Total = protocol.UpdateDownloading, fp.DownloadBytes
	u.report(s)
	stop := u.progress(ctx, func() protocol.UpdateState {
		p := s
		p.Done, p.Downloaded = downloaded.Load(), downloaded.Load()
		return p
	})
	err = u.fetch(ctx, f, names)
	stop()
	if err != nil {
		return nil, fmt.Errorf("download release %s: %w", rel.Config.Version, err)
	}

	w := base
	w.State, w.Total, w.Downloaded = protocol.UpdateWriting, fp.TotalBytes, downloaded.Load()
	u.report(w)
	var written atomic.Int64
	stop = u.progress(ctx, func() protocol.UpdateState { p := w; p.Done = written.Load(); return p })
	defer stop()
	var before int64
	for _, name := range names {
		part := plan.Part(partNumber(plan, name))
		progress := func(d int64) { written.Store(before + d) }
		_, err := writePartition(ctx, f, name, u.o.Disk, part, progress)
		if errors.Is(err, release.ErrChunkUnavailable) {
			// A cached chunk was damaged (power cut while caching): fetch
			// what is missing again and rewrite.
			if _, err = f.Fetch(ctx, names...); err == nil {
				_, err = writePartition(ctx, f, name, u.o.Disk, part, progress)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("write %s of release %s: %w", name, rel.Config.Version, err)
		}
		rp, _ := rel.Config.Partition(name)
		before += rp.Size
	}
	if err := u.o.Disk.Sync(); err != nil {
		return nil, fmt.Errorf("flush slot %s: %w", target, err)
	}
	stop()

	v := base
	v.State, v.Downloaded = protocol.UpdateVerifying, downloaded.Load()
	u.report(v)
	hashes := map[string]string{}
	for _, name := range names {
		part := plan.Part(partNumber(plan, name))
		rp, _ := rel.Config.Partition(name)
		dropCache(u.o.Disk, part.Start, rp.Size)
		got, err := hashRegion(ctx, u.o.Disk, part.Start, rp.Size)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", name, err)
		}
		if got != rp.SHA256 {
			return nil, fmt.Errorf("verify %s: the disk holds sha256 %s after writing, the release says %s (a failing SD card?)", name, got, rp.SHA256)
		}
		hashes[name] = got.String()
	}
	if err := checkBootable(u.o.Disk, plan, target.BootPartition(), target.SystemPartition()); err != nil {
		return nil, err
	}
	// The slot holds every chunk now; the cache is no longer needed.
	if err := clearCache(u.o.CacheDir); err != nil {
		return nil, err
	}
	return hashes, nil
}

// fetch downloads what is missing, retrying a dropped link: every try
// plans again, so it fetches only the chunks not yet cached. A chunk that
// fails its hash is not retried (the source serves wrong bytes).
func (u *Updater) fetch(ctx context.Context, f *release.Fetcher, names []string) error {
	delay := u.o.RetryDelay
	var err error
	for try := 1; try <= u.o.DownloadAttempts; try++ {
		if _, err = f.Fetch(ctx, names...); err == nil || ctx.Err() != nil || errors.Is(err, release.ErrCorruptChunk) {
			return err
		}
		if try == u.o.DownloadAttempts {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, time.Minute)
	}
	return fmt.Errorf("%d attempts: %w", u.o.DownloadAttempts, err)
}

// progress reports cur() every ProgressInterval until stop is called.
func (u *Updater) progress(ctx context.Context, cur func() protocol.UpdateState) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(u.o.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				u.report(cur())
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }
}

func partNumber(plan *layout.Plan, name string) int {
	for _, p := range plan.Partitions {
		if p.Name == name {
			return p.Number
		}
	}
	return 0
}

func clearCache(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("download cache: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("download cache: %w", err)
		}
	}
	return nil
}

// readerAt is a partition of the disk as an io.ReaderAt.
type readerAt struct {
	d   Disk
	off int64
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) { return r.d.ReadAt(p, r.off+off) }

// bootID is the running boot's id, or "" when it cannot be read.
func (u *Updater) bootID() string {
	id, err := u.o.BootID()
	if err != nil {
		return ""
	}
	return id
}

func readBootID() (string, error) {
	b, err := os.ReadFile(BootIDFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// failed reports base as failed with err's reason and returns err.
func (u *Updater) failed(base protocol.UpdateState, err error) error {
	base.State, base.Reason = protocol.UpdateFailed, err.Error()
	u.report(base)
	return err
}
