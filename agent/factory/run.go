package factory

// The factory run: what `agent factory run` does in the provisioning
// initramfs, from a bare board to a reboot into the installed robot.
//
//	probe ─ POST report ─▶ plan ─┬─ wait:    GET plan again after RetryAfterSeconds
//	                             ├─ hold:    say why (once), re-probe every HoldPoll,
//	                             │           re-report when the hardware changed
//	                             ├─ install: image ─▶ identity ─▶ reboot
//	                             └─ done:    reboot
//
// Every step is reported to the station (StationProgress), which forwards it
// to control. A step that fails is retried on its own (Attempts times, with a
// backoff), so a dropped download or a station that restarts costs a retry
// of that step, not of the run: the image download resumes where it broke
// (package source), and an image that is already on the disk — a run
// interrupted after the image, e.g. by a power cut — is recognised by
// checking the disk against the block map's checksums and not written again.
// When a step still fails, the last report says why and Run returns the
// error, so the initramfs shell shows it; powering the board off and on
// starts over from the top, and the checks above skip what is done.
//
// While held, the board re-probes every HoldPoll and sends the station a new
// report only when the hardware changed (a technician plugged in a bus or
// replaced a servo); otherwise it only asks for the plan, so the station can
// also release a board by itself. Whatever the station answers next (wait,
// install, hold with another reason) is followed.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/provision/flash"
	"github.com/lekiwi/heartbeat/provision/source"
)

// Steps and statuses the run reports (StationProgress.Step, .Status). A step
// in progress is reported again as StatusStarted with growing Done bytes.
const (
	StepProbe    = "probe"
	StepMatch    = "match" // held: the station found no profile that fits
	StepIdentity = "identity"
	StepInstall  = "install"
	StepVerify   = "verify"
	StepReboot   = "reboot"

	StatusStarted = "started"
	StatusWaiting = "waiting"
	StatusHeld    = "held"
	StatusDone    = "done"
	StatusFailed  = "failed"
)

// RunOptions configure Run. Zero values mean the real board.
type RunOptions struct {
	// StationURL and Token reach the station; when empty they are read from
	// the kernel command line (Probe.ProcRoot/cmdline).
	StationURL, Token string
	// Probe says where to look for hardware. The storage device the plan
	// names is opened as Probe.DevRoot/<name>.
	Probe Options
	// HTTPClient reaches the station; its transport gets the board token
	// added. Nil: a client on http.DefaultTransport's settings.
	HTTPClient *http.Client
	// OpenTarget opens the disk at path for writing an image of imageSize
	// bytes and returns it with the disk's size. Default: flash.OpenBlockTarget
	// (O_DIRECT, O_EXCL). The target is closed (if an io.Closer) before the
	// identity is written through a buffered descriptor of path.
	OpenTarget func(path string, imageSize int64) (flash.Target, int64, error)
	// Reboot restarts the board; called once, at the end. Required: in
	// the provisioning initramfs no service manager runs, so `agent
	// factory run` passes reboot.Syscall. If it returns nil (a dry run),
	// Run returns nil.
	Reboot reboot.Rebooter
	// Log receives what a technician at the console should see; default
	// os.Stderr.
	Log io.Writer
	// Attempts is how many times a step is tried before the run fails;
	// default 5. Backoff is the wait before the first retry, doubled up to
	// 30 s; default 2 s.
	Attempts int
	Backoff  time.Duration
	// HoldPoll is how often a held board re-probes and asks again; default
	// 15 s (the station's RetryAfterSeconds wins when it sets one).
	HoldPoll time.Duration
	// ProgressEvery throttles byte progress reports; default 1 s.
	ProgressEvery time.Duration
	// RequestTimeout bounds each API call (not the image stream); default 20 s.
	RequestTimeout time.Duration
	// Sleep waits d or until ctx ends; default a timer. Tests make it instant.
	Sleep func(ctx context.Context, d time.Duration) error
	// Source tunes the image download (retries, backoff); its HTTPClient
	// and Size are set by Run.
	Source source.Options
}

// Waits on the station's say-so are clamped to these, so a bad
// RetryAfterSeconds neither spins nor parks the board for hours.
const (
	minWait     = time.Second
	maxWait     = 5 * time.Minute
	defaultWait = 5 * time.Second
	maxBackoff  = 30 * time.Second
)

func (o *RunOptions) defaults() error {
	proc := o.Probe.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	if o.Probe.PingTimeout == 0 {
		d, err := PingTimeoutFromCmdline(proc)
		if err != nil {
			return err
		}
		o.Probe.PingTimeout = d
	}
	if o.StationURL == "" || o.Token == "" {
		u, t, err := StationFromCmdline(proc)
		if err != nil {
			return err
		}
		if o.StationURL == "" {
			o.StationURL = u
		}
		if o.Token == "" {
			o.Token = t
		}
	}
	if o.Probe.DevRoot == "" {
		o.Probe.DevRoot = "/dev"
	}
	if o.OpenTarget == nil {
		o.OpenTarget = openBlockTarget
	}
	if o.Reboot == nil {
		return errors.New("factory run: no way to reboot given (reboot.Syscall in the provisioning initramfs)")
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Backoff <= 0 {
		o.Backoff = 2 * time.Second
	}
	if o.HoldPoll <= 0 {
		o.HoldPoll = 15 * time.Second
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 20 * time.Second
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func openBlockTarget(path string, imageSize int64) (flash.Target, int64, error) {
	t, err := flash.OpenBlockTarget(path, imageSize, flash.BlockOptions{})
	if err != nil {
		return nil, 0, err
	}
	return t, t.Info().Size, nil
}

// runner is one factory run.
type runner struct {
	o   RunOptions
	st  *station
	log io.Writer

	mu       sync.Mutex // progress reports come from flash's goroutine too
	lastSent map[string]time.Time
}

// Run carries out the factory run against the station (see the notes at the
// top of this file). It returns only when the board is about to reboot (nil,
// after Reboot returned nil), or with the error that stopped the run, which
// the station was told about as far as it could be reached.
func Run(ctx context.Context, o RunOptions) error {
	if err := o.defaults(); err != nil {
		return fmt.Errorf("factory run: %w", err)
	}
	base, err := checkStationURL(o.StationURL)
	if err != nil {
		return fmt.Errorf("factory run: %w", err)
	}
	if err := checkToken(o.Token); err != nil {
		return fmt.Errorf("factory run: %w (check the %s= kernel argument or --token)", err, protocol.KernelArgToken)
	}
	u, _ := url.Parse(base)
	client := &http.Client{}
	if o.HTTPClient != nil {
		*client = *o.HTTPClient
	}
	next := client.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	client.Transport = &bearer{host: u.Host, token: o.Token, next: next}
	r := &runner{
		o:        o,
		st:       &station{base: base, client: client, timeout: o.RequestTimeout},
		log:      o.Log,
		lastSent: map[string]time.Time{},
	}
	if err := r.run(ctx); err != nil {
		r.logf("FAILED: %v", err)
		return fmt.Errorf("factory run: %w", err)
	}
	return nil
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "factory: "+format+"\n", args...)
}

func (r *runner) run(ctx context.Context) error {
	r.report(ctx, protocol.StationProgress{Step: StepProbe, Status: StatusStarted})
	hw, err := Probe(ctx, r.o.Probe)
	if err != nil {
		return err
	}
	for _, w := range hw.Warnings {
		r.logf("probe warning: %s", w)
	}
	var plan protocol.StationPlan
	err = r.retry(ctx, StepProbe, "send the hardware report", func(ctx context.Context) error {
		plan, err = r.st.report(ctx, hw)
		return err
	})
	if err != nil {
		return err
	}
	r.report(ctx, protocol.StationProgress{Step: StepProbe, Status: StatusDone, Detail: summary(hw)})
	r.logf("%s: reported to %s", summary(hw), r.st.base)

	lastHold, waiting := "", false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if plan.Action != protocol.PlanHold {
			lastHold = ""
		}
		if plan.Action != protocol.PlanWait {
			waiting = false
		}
		switch plan.Action {
		case protocol.PlanWait:
			if !waiting {
				waiting = true
				reason := plan.Reason
				if reason == "" {
					reason = "the station is waiting for this robot's identity from control"
				}
				r.logf("waiting: %s", reason)
				r.report(ctx, protocol.StationProgress{Step: StepIdentity, Status: StatusWaiting, Detail: reason})
			}
			if err := r.o.Sleep(ctx, clampWait(plan.RetryAfterSeconds, defaultWait)); err != nil {
				return err
			}
			if plan, err = r.fetchPlan(ctx); err != nil {
				return err
			}
		case protocol.PlanHold:
			if plan.Reason != lastHold {
				lastHold = plan.Reason
				r.logf("HELD: %s", plan.Reason)
				r.logf("fix the robot; this board checks again every %s and goes on by itself", clampWait(plan.RetryAfterSeconds, r.o.HoldPoll))
				r.report(ctx, protocol.StationProgress{Step: StepMatch, Status: StatusHeld, Detail: plan.Reason})
			}
			if err := r.o.Sleep(ctx, clampWait(plan.RetryAfterSeconds, r.o.HoldPoll)); err != nil {
				return err
			}
			again, err := Probe(ctx, r.o.Probe)
			if err != nil {
				return err
			}
			if sameHardware(hw, again) {
				plan, err = r.fetchPlan(ctx)
			} else {
				hw = again
				r.logf("the hardware changed (%s): reporting again", summary(hw))
				err = r.retry(ctx, StepProbe, "send the hardware report", func(ctx context.Context) error {
					plan, err = r.st.report(ctx, hw)
					return err
				})
			}
			if err != nil {
				return err
			}
		case protocol.PlanInstall:
			return r.install(ctx, hw, plan)
		case protocol.PlanDone:
			r.logf("the station says this board is already installed")
			return r.reboot(ctx, "already installed")
		default:
			err := fmt.Errorf("the station asked for %q, which this agent does not know (update the agent in the provisioning initramfs)", plan.Action)
			r.report(ctx, protocol.StationProgress{Step: StepProbe, Status: StatusFailed, Detail: err.Error()})
			return err
		}
	}
}

func (r *runner) fetchPlan(ctx context.Context) (protocol.StationPlan, error) {
	var plan protocol.StationPlan
	err := r.retry(ctx, "", "fetch the plan", func(ctx context.Context) error {
		var err error
		plan, err = r.st.plan(ctx)
		return err
	})
	return plan, err
}

// clampWait turns the station's RetryAfterSeconds (0: def) into a wait.
func clampWait(seconds int, def time.Duration) time.Duration {
	d := def
	if seconds > 0 {
		d = time.Duration(seconds) * time.Second
	}
	return min(max(d, minWait), maxWait)
}

// sameHardware compares two probes by what they would tell the station.
func sameHardware(a, b *protocol.HardwareReport) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

func summary(hw *protocol.HardwareReport) string {
	var buses []string
	for _, b := range hw.ServoBuses {
		buses = append(buses, fmt.Sprintf("%s answers %v", b.Device, b.IDs))
	}
	s := fmt.Sprintf("%s serial %s", hw.Board.Model, hw.Board.Serial)
	if len(buses) > 0 {
		s += "; servo buses: " + strings.Join(buses, ", ")
	} else {
		s += "; no servo bus"
	}
	return s
}

// stepError names the step that failed when it is not the one retried
// (the image step fails in install or in verify).
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// retry runs fn until it succeeds, fails permanently, or failed Attempts
// times, waiting Backoff (doubling) in between. step, when not "", gets a
// failed report for every failure, saying whether it is retried.
func (r *runner) retry(ctx context.Context, step, what string, fn func(context.Context) error) error {
	wait := r.o.Backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		failed := step
		var se *stepError
		if errors.As(err, &se) {
			failed = se.step
		}
		last := attempt >= r.o.Attempts || isPermanent(err)
		detail := fmt.Sprintf("%s: %v", what, err)
		if last {
			if attempt > 1 {
				detail = fmt.Sprintf("%s: gave up after %d attempts: %v", what, attempt, err)
			}
			if failed != "" {
				r.report(ctx, protocol.StationProgress{Step: failed, Status: StatusFailed, Detail: detail})
			}
			return errors.New(detail)
		}
		detail = fmt.Sprintf("%s (attempt %d of %d; retrying in %s)", detail, attempt, r.o.Attempts, wait)
		r.logf("%s", detail)
		if failed != "" {
			r.report(ctx, protocol.StationProgress{Step: failed, Status: StatusFailed, Detail: detail})
		}
		if err := r.o.Sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, maxBackoff)
	}
}

// report tells the station about a step. Milestones (everything but byte
// progress) are retried a little; a station that cannot be reached does not
// stop the run, which only needs the station for the plan and the image.
func (r *runner) report(ctx context.Context, p protocol.StationProgress) {
	r.mu.Lock()
	r.lastSent[p.Step] = time.Now()
	r.mu.Unlock()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = r.st.progress(ctx, p); err == nil || isPermanent(err) || ctx.Err() != nil {
			break
		}
		if r.o.Sleep(ctx, time.Second) != nil {
			break
		}
	}
	if err != nil && ctx.Err() == nil {
		r.logf("could not report %s %s to the station: %v", p.Step, p.Status, err)
	}
}

// reportBytes reports byte progress at most every ProgressEvery per step,
// without retrying (the next one follows shortly).
func (r *runner) reportBytes(ctx context.Context, step string, done, total int64) {
	r.mu.Lock()
	if time.Since(r.lastSent[step]) < r.o.ProgressEvery {
		r.mu.Unlock()
		return
	}
	r.lastSent[step] = time.Now()
	r.mu.Unlock()
	_ = r.st.progress(ctx, protocol.StationProgress{Step: step, Status: StatusStarted, Done: done, Total: total})
}

func (r *runner) reboot(ctx context.Context, why string) error {
	r.report(ctx, protocol.StationProgress{Step: StepReboot, Status: StatusStarted, Detail: why})
	r.logf("rebooting (%s)", why)
	if err := r.o.Reboot.Reboot(ctx, ""); err != nil {
		err = fmt.Errorf("%w (power-cycle the board)", err)
		r.report(ctx, protocol.StationProgress{Step: StepReboot, Status: StatusFailed, Detail: err.Error()})
		return err
	}
	return nil
}

// install writes the image and the identity onto the disk the plan names,
// then reboots.
func (r *runner) install(ctx context.Context, hw *protocol.HardwareReport, plan protocol.StationPlan) error {
	path, err := r.storagePath(hw, plan)
	if err != nil {
		r.report(ctx, protocol.StationProgress{Step: StepInstall, Status: StatusFailed, Detail: err.Error()})
		return err
	}
	robot := customize.Robot{RobotID: plan.RobotID, Hostname: plan.Hostname, CAPEM: []byte(plan.CAPEM), EnrollToken: plan.EnrollToken}
	if plan.RobotID == "" || plan.EnrollToken == "" {
		err := fmt.Errorf("the station's install plan has no robot id or enrollment token: the station is broken or outdated (see its log)")
		r.report(ctx, protocol.StationProgress{Step: StepIdentity, Status: StatusFailed, Detail: err.Error()})
		return err
	}
	r.logf("installing image %s (%d bytes) onto %s for %s", plan.ImageVersion, plan.ImageSize, path, plan.RobotID)
	if err := r.retry(ctx, StepInstall, "image onto "+path, func(ctx context.Context) error {
		return r.writeImage(ctx, path, plan)
	}); err != nil {
		return err
	}
	r.report(ctx, protocol.StationProgress{Step: StepIdentity, Status: StatusStarted, Detail: plan.RobotID})
	if err := r.retry(ctx, StepIdentity, "identity onto "+path, func(ctx context.Context) error {
		return writeIdentity(path, plan, robot)
	}); err != nil {
		return err
	}
	r.report(ctx, protocol.StationProgress{Step: StepIdentity, Status: StatusDone, Detail: plan.RobotID})
	return r.reboot(ctx, "installed "+plan.RobotID)
}

// storagePath resolves the plan's storage device under DevRoot, refusing a
// name that is not a disk the probe reported.
func (r *runner) storagePath(hw *protocol.HardwareReport, plan protocol.StationPlan) (string, error) {
	name := plan.Storage
	if name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
		return "", fmt.Errorf("the station's plan names storage %q, which is not a device name: the station is broken (see its log)", name)
	}
	var found []string
	for _, s := range hw.Storage {
		if s.Name == name {
			if s.SizeBytes > 0 && plan.ImageSize > int64(s.SizeBytes) {
				return "", fmt.Errorf("the image is %d bytes but %s holds only %d: fit a larger %s", plan.ImageSize, name, s.SizeBytes, s.Kind)
			}
			return filepath.Join(r.o.Probe.DevRoot, name), nil
		}
		found = append(found, s.Name)
	}
	return "", fmt.Errorf("the station asked to install onto %s, but this board has only %v: check the disk is seated, or the station's choice", name, found)
}

// writeImage flashes the station's image onto the disk at path, unless it
// is already there.
func (r *runner) writeImage(ctx context.Context, path string, plan protocol.StationPlan) (err error) {
	if plan.ImageSize <= 0 {
		return permanent("the station's install plan has no image size: the station is broken (see its log)")
	}
	t, size, err := r.o.OpenTarget(path, plan.ImageSize)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if c, ok := t.(io.Closer); ok {
		defer func() {
			if cerr := c.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close %s: %w", path, cerr)
			}
		}()
	}
	if size < plan.ImageSize {
		return permanent("the image is %d bytes but %s holds only %d: fit a larger disk", plan.ImageSize, path, size)
	}
	m, err := r.st.blockMap(ctx)
	if err != nil {
		return err
	}
	if m != nil {
		if m.ImageSize != plan.ImageSize {
			return permanent("the station's block map is for a %d-byte image but its plan says %d bytes: the station serves mismatched files", m.ImageSize, plan.ImageSize)
		}
		if err := onDisk(ctx, t, m); err == nil {
			r.logf("the image is already on %s (every block-map checksum matches): skipping to the identity", path)
			r.report(ctx, protocol.StationProgress{Step: StepInstall, Status: StatusDone, Done: plan.ImageSize, Total: plan.ImageSize, Detail: "already on " + path + " (verified against the block map)"})
			return nil
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	r.report(ctx, protocol.StationProgress{Step: StepInstall, Status: StatusStarted, Total: plan.ImageSize, Detail: plan.ImageVersion})
	so := r.o.Source
	so.HTTPClient, so.Size, so.Progress = r.st.client, plan.ImageSize, nil
	src, err := source.Open(ctx, r.st.imageURL(), so)
	if err != nil {
		return fmt.Errorf("open the image stream: %w", err)
	}
	defer src.Close()
	var verifying bool
	progress := func(_ string, ph flash.Phase, done, total int64) {
		switch ph {
		case flash.PhaseWrite:
			r.reportBytes(ctx, StepInstall, done, total)
		case flash.PhaseHeader:
			_ = r.st.progress(ctx, protocol.StationProgress{Step: StepInstall, Status: StatusDone, Done: total, Total: total})
		case flash.PhaseVerify:
			if !verifying {
				verifying = true
				r.mu.Lock()
				r.lastSent[StepVerify] = time.Now()
				r.mu.Unlock()
				_ = r.st.progress(ctx, protocol.StationProgress{Step: StepVerify, Status: StatusStarted, Done: done, Total: total})
				return
			}
			r.reportBytes(ctx, StepVerify, done, total)
		}
	}
	res := flash.Flash(ctx, src, []flash.Target{t}, flash.Options{Progress: progress})[0]
	if res.Err != nil {
		step := StepInstall
		if res.Phase == flash.PhaseVerify {
			step = StepVerify
		}
		return &stepError{step: step, err: res.Err}
	}
	r.report(ctx, protocol.StationProgress{Step: StepVerify, Status: StatusDone, Detail: fmt.Sprintf("%d bytes written and read back", res.BytesWritten)})
	return nil
}

// onDisk checks every mapped range of the disk against the block map's
// checksums; it stops at the first mismatch (on a disk that has not been
// written, that is the partition table, in the first range).
func onDisk(ctx context.Context, t flash.Target, m *bmap.Map) error {
	if err := m.Validate(); err != nil {
		return err
	}
	bs := int64(m.BlockSize)
	buf := make([]byte, 4<<20)
	for _, rg := range m.Ranges {
		want, err := hex.DecodeString(rg.SHA256)
		if err != nil || len(want) != sha256.Size {
			return fmt.Errorf("block map has no checksum for blocks %d–%d", rg.First, rg.Last)
		}
		off, end := rg.First*bs, min((rg.Last+1)*bs, m.ImageSize)
		h := sha256.New()
		for off < end {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(buf)), end-off)
			k, err := t.ReadAt(buf[:n], off)
			if int64(k) != n {
				return fmt.Errorf("read %d bytes at %d: %w", n, off, err)
			}
			h.Write(buf[:n])
			off += n
		}
		if got := h.Sum(nil); string(got) != string(want) {
			return fmt.Errorf("blocks %d–%d differ", rg.First, rg.Last)
		}
	}
	return nil
}

// writeIdentity writes the robot's identity into the installed image
// through a buffered descriptor: customize writes small unaligned pieces,
// and ApplyTo syncs before it returns.
func writeIdentity(path string, plan protocol.StationPlan, robot customize.Robot) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if plan.Profile != "" {
		gpt, err := layout.ReadGPT(f, plan.ImageSize)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		info, err := customize.ReadInfo(f, gpt)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if info.Profile != plan.Profile {
			return permanent("the station served a %s image for a %s robot: check the station's image for %s", info.Profile, plan.Profile, plan.Profile)
		}
	}
	if err := customize.ApplyTo(f, plan.ImageSize, path, robot); err != nil {
		return err
	}
	return f.Close()
}
