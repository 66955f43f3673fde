// Package bench is the technician's bench behind `provision flash`: it
// checks and opens the targets (image files, or block devices after package
// device's safety checks), asks for confirmation, flashes them all at once
// with package flash, writes each card's own identity with image/customize,
// and reports per target.
//
// Order per card, and why:
//
//  1. Every block device is inspected before anything is opened for
//     writing; one refusal (mounted, system disk, not removable, too big)
//     stops the whole run, because a wrong device in the list is a typo to
//     fix, not a card to skip.
//  2. Confirmation shows model, size and serial of every device.
//  3. Each card takes its identity before it is written (the identity
//     source journals it, so no identity is handed out twice), the image is
//     flashed and verified against the source, and only then is the
//     identity written — after verification, because it changes the
//     persistent partition and the seeds the source hashes cover.
//  4. Every card's identity source learns how its card ended (Finish), so a
//     failed card's identity shows as failed in the journal.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/provision/device"
	"github.com/lekiwi/heartbeat/provision/flash"
	"github.com/lekiwi/heartbeat/provision/identity"
	"github.com/lekiwi/heartbeat/provision/progress"
)

// Phases beyond flash's own.
const (
	PhaseOpen     flash.Phase = "open"     // checking and opening the target
	PhaseZero     flash.Phase = "zero"     // zeroing a used card for a map-less image
	PhaseIdentity flash.Phase = "identity" // taking or writing the card's identity
)

// Job is one bench run.
type Job struct {
	Source  flash.Source
	Targets []string // image files or whole-disk block devices
	Policy  device.Policy
	Roots   device.Roots // where sysfs and mountinfo are read; zero = the real ones
	// Identities gives each card its own robot identity; nil leaves the
	// cards as the image is.
	Identities identity.Source
	Flash      flash.Options // Progress is overwritten with Reporter's
	Reporter   progress.Reporter
	// Confirm is shown the block devices about to be overwritten and returns
	// nil to go on; nil skips confirmation (--yes).
	Confirm func([]device.Info) error
	// DirectFiles writes and verifies file targets with O_DIRECT, as block
	// devices are, so that verification reads the disk and not the page
	// cache.
	DirectFiles bool
	// Buffered turns O_DIRECT off for block devices (a misbehaving reader).
	Buffered bool
}

// Outcome is what happened to one target.
type Outcome struct {
	flash.Result
	Device  *device.Info // nil for a file target
	RobotID string       // the identity written, if any
	Direct  bool         // written and read back with O_DIRECT
}

// ErrDeclined is returned when the technician did not confirm.
var ErrDeclined = errors.New("not confirmed: nothing was written")

// target is one opened target of the run.
type target struct {
	path  string
	info  *device.Info
	t     flash.Target
	block *flash.BlockTarget // nil for a buffered file target
	robot *customize.Robot
	out   *Outcome
}

// Run flashes every target of job. The error is about the run as a whole
// (a refusal, no confirmation, no source); each target's own failure is in
// its Outcome.
func Run(ctx context.Context, job Job) ([]Outcome, error) {
	if job.Source == nil {
		return nil, errors.New("bench: no image to flash")
	}
	if len(job.Targets) == 0 {
		return nil, errors.New("bench: no targets: name image files or whole disks such as /dev/sdb")
	}
	rep := job.Reporter
	if rep == nil {
		rep = nopReporter{}
	}
	seen := map[string]bool{}
	outs := make([]Outcome, len(job.Targets))
	targets := make([]*target, len(job.Targets))
	var devices []device.Info
	var refusals []error
	for i, p := range job.Targets {
		if seen[p] {
			return nil, fmt.Errorf("bench: target %s is named twice", p)
		}
		seen[p] = true
		outs[i].Target, outs[i].Phase = p, PhaseOpen
		targets[i] = &target{path: p, out: &outs[i]}
		isDev, err := isBlockDevice(p)
		if err != nil {
			return nil, err
		}
		if !isDev {
			continue
		}
		info, err := device.Inspect(p, job.Roots, job.Policy)
		if err != nil {
			refusals = append(refusals, err)
			continue
		}
		targets[i].info = &info
		outs[i].Device = &info
		devices = append(devices, info)
	}
	if len(refusals) > 0 {
		return nil, fmt.Errorf("bench: refusing to flash (nothing was written): %w", errors.Join(refusals...))
	}
	if len(devices) > 0 && job.Confirm != nil {
		if err := job.Confirm(devices); err != nil {
			return nil, err
		}
	}

	size := job.Source.Size()
	noMap := job.Source.BlockMap() == nil
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() { t.open(ctx, job, size, noMap, rep) })
	}
	wg.Wait()
	var live []*target
	var fts []flash.Target
	for _, t := range targets {
		if t.out.Err == nil {
			live = append(live, t)
			fts = append(fts, t.t)
		}
	}
	opts := job.Flash
	opts.Progress = func(name string, ph flash.Phase, done, total int64) {
		rep.Update(name, string(ph), done, total)
	}
	for i, r := range flash.Flash(ctx, job.Source, fts, opts) {
		t := live[i]
		d := t.out.Duration
		t.out.Result = r
		t.out.Duration += d
		if t.block != nil {
			t.out.Direct = t.block.Info().Direct
			if err := t.block.Close(); err != nil && t.out.Err == nil {
				t.out.Err = fmt.Errorf("%s: close: %w", t.path, err)
			}
		} else if c, ok := t.t.(interface{ Close() error }); ok {
			c.Close()
		}
	}
	for _, t := range live {
		if t.out.Err == nil && t.robot != nil {
			wg.Go(func() { t.writeIdentity(size, rep) })
		}
	}
	wg.Wait()
	for _, t := range targets {
		if t.robot != nil && job.Identities != nil {
			if err := job.Identities.Finish(t.robot.RobotID, t.path, t.out.Err); err != nil && t.out.Err == nil {
				t.out.Err = fmt.Errorf("%s: record the identity's outcome: %w", t.path, err)
			}
		}
		rep.Finish(t.path, t.out.Err)
	}
	return outs, nil
}

// open opens t for writing and takes its identity; failures land in t.out.
func (t *target) open(ctx context.Context, job Job, size int64, noMap bool, rep progress.Reporter) {
	start := time.Now()
	defer func() { t.out.Duration = time.Since(start) }()
	fail := func(err error) { t.out.Err = fmt.Errorf("%s: %w", t.path, err) }
	rep.Update(t.path, string(PhaseOpen), 0, size)
	switch {
	case t.info != nil:
		bt, err := flash.OpenBlockTarget(t.path, size, flash.BlockOptions{Buffered: job.Buffered})
		if err != nil {
			fail(err)
			return
		}
		t.t, t.block = bt, bt
		if noMap {
			// Without a block map the engine skips zero blocks; on a used
			// card those must be zeroed first.
			t.out.Phase = PhaseZero
			if err := bt.ZeroFill(ctx, func(done, total int64) { rep.Update(t.path, string(PhaseZero), done, total) }); err != nil {
				bt.Close()
				fail(err)
				return
			}
		}
	case job.DirectFiles:
		bt, err := flash.OpenFileTargetDirect(t.path, size)
		if err != nil {
			fail(err)
			return
		}
		t.t, t.block = bt, bt
	default:
		ft, err := flash.OpenFileTarget(t.path, size)
		if err != nil {
			fail(err)
			return
		}
		t.t = ft
	}
	if job.Identities != nil {
		t.out.Phase = PhaseIdentity
		r, err := job.Identities.Next(ctx, t.path)
		if err != nil {
			if c, ok := t.t.(interface{ Close() error }); ok {
				c.Close()
			}
			fail(fmt.Errorf("no identity for this card: %w", err))
			return
		}
		t.robot = &r
		t.out.RobotID = r.RobotID
	}
	t.out.Phase = flash.PhasePrepare
}

// writeIdentity writes the card's identity through an ordinary (buffered)
// descriptor: customize makes small writes that O_DIRECT would refuse.
func (t *target) writeIdentity(size int64, rep progress.Reporter) {
	start := time.Now()
	defer func() { t.out.Duration += time.Since(start) }()
	t.out.Phase = PhaseIdentity
	rep.Update(t.path, string(PhaseIdentity), 0, 1)
	f, err := os.OpenFile(t.path, os.O_RDWR, 0)
	if err != nil {
		t.out.Err = fmt.Errorf("%s: open to write identity %s: %w", t.path, t.robot.RobotID, err)
		return
	}
	defer f.Close()
	if err := customize.ApplyTo(f, size, t.path, *t.robot); err != nil {
		t.out.Err = fmt.Errorf("%s: write identity %s: %w", t.path, t.robot.RobotID, err)
		return
	}
	rep.Update(t.path, string(PhaseIdentity), 1, 1)
	t.out.Phase = flash.PhaseDone
}

func isBlockDevice(p string) (bool, error) {
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		if strings.HasPrefix(filepath.Clean(p), "/dev/") {
			// Never create a file where a disk was meant: the card is gone.
			return false, fmt.Errorf("bench: target %s does not exist (card removed? reader unplugged?)", p)
		}
		return false, nil // a new image file
	}
	if err != nil {
		return false, fmt.Errorf("bench: target %s: %w", p, err)
	}
	m := fi.Mode()
	if m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0 {
		return true, nil
	}
	if m&os.ModeCharDevice != 0 {
		return false, fmt.Errorf("bench: target %s is a character device, not a disk", p)
	}
	return false, nil
}

// Watch flashes every card inserted after it starts, until ctx ends (the
// bench with a hub of card readers). Each new removable disk with media is
// checked against job.Policy — a refused card is reported and left alone —
// and flashed on its own while other cards may still be in progress. open
// gives a fresh source for each card (a stream cannot be read twice);
// job.Targets and job.Confirm are ignored. report is called once per card,
// from the card's goroutine.
func Watch(ctx context.Context, job Job, open func() (flash.Source, func(), error), interval time.Duration, report func(Outcome)) error {
	cards := make(chan device.Info)
	errc := make(chan error, 1)
	go func() { errc <- device.Watch(ctx, job.Roots, interval, cards) }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case err := <-errc:
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		case info := <-cards:
			wg.Go(func() {
				out := Outcome{Result: flash.Result{Target: info.Path, Phase: PhaseOpen}, Device: &info}
				src, closeSrc, err := open()
				if err != nil {
					out.Err = fmt.Errorf("%s: open the image: %w", info.Path, err)
					report(out)
					return
				}
				defer closeSrc()
				one := job
				one.Source, one.Targets, one.Confirm = src, []string{info.Path}, nil
				outs, err := Run(ctx, one)
				if err != nil {
					out.Err = err
					report(out)
					return
				}
				report(outs[0])
			})
		}
	}
}

type nopReporter struct{}

func (nopReporter) Update(string, string, int64, int64) {}
func (nopReporter) Finish(string, error)                {}
func (nopReporter) Close()                              {}
