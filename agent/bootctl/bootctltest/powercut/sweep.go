package powercut

import (
	"context"
	"errors"
	"fmt"
)

// Scenario is the code under test: it runs against dev and returns the
// error of the first failed write or sync (which wraps ErrPowerCut after a
// cut). It must do the same writes every time it runs from the same disk.
type Scenario func(ctx context.Context, dev *Device) error

// Cut is one surviving disk handed to a Check.
type Cut struct {
	// Write is the write during which the power failed (1-based); Writes+1
	// is a cut after the scenario finished; 0 is the uncut run, whose Disk
	// is everything it wrote.
	Write  int
	Writes int // the scenario's write count
	Tear   Tear
	Cache  Cache
	Record WriteRecord // the cut write (zero for Write 0 or Writes+1)
	// Disk is what the next power-on finds.
	Disk *Disk
	// Initial and Final are the disk before the scenario and after its
	// uncut run, for checks like "each slot is either as before or as
	// finally written".
	Initial, Final *Disk
}

// Region reports whether the powered-on disk holds, in [off, off+n), the
// bytes it held before the scenario (asInitial) and those of the uncut
// run (asFinal): "each slot is either as before or as updated" is
// asInitial || asFinal for every partition of a slot.
func (c Cut) Region(off, n int64) (asInitial, asFinal bool, err error) {
	if asInitial, err = EqualRegion(c.Disk, c.Initial, off, n); err != nil {
		return false, false, err
	}
	if asFinal, err = EqualRegion(c.Disk, c.Final, off, n); err != nil {
		return false, false, err
	}
	return asInitial, asFinal, nil
}

func (c Cut) String() string {
	if c.Write == 0 {
		return fmt.Sprintf("uncut run (%d writes)", c.Writes)
	}
	if c.Write > c.Writes {
		return fmt.Sprintf("cut after the last of %d writes (%s)", c.Writes, c.Cache)
	}
	return fmt.Sprintf("cut at write %d of %d (%d bytes at %d, %s, %s)", c.Write, c.Writes, c.Record.Len, c.Record.Off, c.Tear, c.Cache)
}

// Check inspects one surviving disk; an error is a failed sweep.
type Check func(ctx context.Context, c Cut) error

// Config is a sweep.
type Config struct {
	Initial  *Disk
	Scenario Scenario
	Check    Check
	// Tears and Caches are the fault variants tried at every cut point;
	// empty means all of them.
	Tears  []Tear
	Caches []Cache
	Seed   uint64
	// Stride, if above 1, cuts only at every Stride-th write (plus the
	// first and last), for scenarios too long to sweep fully.
	Stride int
	// MaxFailures stops the sweep after this many failed checks (default 10).
	MaxFailures int
}

// Report is what a sweep covered.
type Report struct {
	Writes    int // writes of the uncut scenario
	Syncs     int
	CutPoints int // distinct write numbers cut at (including after the end)
	Runs      int // scenario runs with a cut (cut points × variants)
	Final     *Disk
}

// Sweep runs the scenario uncut, checks the result, then for every cut
// point and fault variant runs it again on a fresh copy of Initial, cuts,
// and checks the surviving disk.
func Sweep(ctx context.Context, cfg Config) (Report, error) {
	var rep Report
	if cfg.Initial == nil || cfg.Scenario == nil || cfg.Check == nil {
		return rep, errors.New("powercut sweep: Initial, Scenario and Check are required")
	}
	tears, caches := cfg.Tears, cfg.Caches
	if len(tears) == 0 {
		tears = []Tear{TearLose, TearPrefix, TearSubset, TearWhole}
	}
	if len(caches) == 0 {
		caches = []Cache{CacheLose, CacheKeep, CacheRandom}
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 10
	}
	dev := NewDevice(cfg.Initial, Fault{})
	if err := cfg.Scenario(ctx, dev); err != nil {
		return rep, fmt.Errorf("powercut sweep: the scenario fails without a power cut: %w", err)
	}
	ref := dev.Writes()
	rep.Writes, rep.Syncs, rep.Final = len(ref), dev.Syncs(), dev.Current()
	base := Cut{Writes: len(ref), Initial: cfg.Initial, Final: rep.Final}
	uncut := base
	uncut.Disk = rep.Final
	if err := cfg.Check(ctx, uncut); err != nil {
		return rep, fmt.Errorf("powercut sweep: %s: %w", uncut, err)
	}
	var failures []error
	for at := 1; at <= len(ref)+1; at++ {
		if cfg.Stride > 1 && at%cfg.Stride != 0 && at != 1 && at < len(ref) {
			continue
		}
		rep.CutPoints++
		for _, tear := range tears {
			if at > len(ref) && tear != TearLose {
				continue // nothing to tear after the end
			}
			if at <= len(ref) && ref[at-1].Len <= SectorSize && (tear == TearPrefix || tear == TearSubset) {
				continue // a one-sector write is lost or whole
			}
			for _, cache := range caches {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				c := base
				c.Write, c.Tear, c.Cache = at, tear, cache
				if at <= len(ref) {
					c.Record = ref[at-1]
				}
				disk, err := runCut(ctx, cfg, c, ref)
				rep.Runs++
				if err == nil {
					c.Disk = disk
					err = cfg.Check(ctx, c)
				}
				if err != nil {
					failures = append(failures, fmt.Errorf("%s: %w", c, err))
					if len(failures) >= cfg.MaxFailures {
						return rep, errors.Join(failures...)
					}
				}
			}
		}
	}
	return rep, errors.Join(failures...)
}

// runCut runs the scenario once with the power failing as c says and
// returns the surviving disk.
func runCut(ctx context.Context, cfg Config, c Cut, ref []WriteRecord) (*Disk, error) {
	dev := NewDevice(cfg.Initial, Fault{At: c.Write, Tear: c.Tear, Cache: c.Cache, Seed: cfg.Seed})
	err := cfg.Scenario(ctx, dev)
	got := dev.Writes()
	for i := range min(len(got), c.Write) {
		if got[i] != ref[i] {
			return nil, fmt.Errorf("the scenario is not deterministic: write %d is %d bytes at %d now, %d bytes at %d in the uncut run", i+1, got[i].Len, got[i].Off, ref[i].Len, ref[i].Off)
		}
	}
	switch {
	case c.Write <= len(ref) && err == nil:
		return nil, errors.New("the scenario reported success although a write failed (an ignored write error)")
	case c.Write <= len(ref) && !errors.Is(err, ErrPowerCut):
		return nil, fmt.Errorf("the scenario failed with something other than the power cut: %w", err)
	case c.Write > len(ref) && err != nil:
		return nil, fmt.Errorf("the scenario failed without a cut: %w", err)
	}
	return dev.PowerOff(), nil
}
