package ota_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/protocol"
)

// updateCycle is the whole update as the agent runs it on a modelled Pi:
// power on slot a, Install (delta download, write slot b, flush, verify,
// arm, reboot into the trial), the trial boot, a fresh agent's OnStart
// (health check, commit), a normal reboot into b. dir holds the agent's
// persistent directories.
func updateCycle(f *fixture, dir string) powercut.Scenario {
	return func(ctx context.Context, dev *powercut.Device) error {
		r, err := newRobot(dev, f.plan, dir)
		if err != nil {
			return err
		}
		if err := r.boot(bootctl.A, false); err != nil {
			return err
		}
		u, err := r.newAgent(ota.DirSource{}, nil, f.key)
		if err != nil {
			return err
		}
		if err := u.Install(ctx, f.args()); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if err := r.boot(bootctl.B, true); err != nil {
			return err
		}
		if u, err = r.newAgent(ota.DirSource{}, func(context.Context) error { return nil }, f.key); err != nil {
			return err
		}
		out, err := u.OnStart(ctx)
		if err != nil {
			return fmt.Errorf("settle the trial: %w", err)
		}
		if out.State != protocol.UpdateCommitted {
			return fmt.Errorf("the trial ended %+v", out)
		}
		if err := r.ctl.Reboot(ctx, false); err != nil {
			return err
		}
		return r.boot(bootctl.B, false)
	}
}

// TestPowerCutSweep: power fails at every write of a whole
// update — each data write of slot b and the commit sector (arming writes
// nothing: autoboot.txt as built already names b under [tryboot]) — with
// the cut write lost, torn or whole and the write cache lost or partly
// kept. After every cut the firmware boots a slot whose partitions are
// exactly the old content or exactly the verified new release, never
// anything else; and the agent's next start says what happened: the
// update committed, rolled back because the trial never came up, or an
// install to resume — which, resumed, completes.
func TestPowerCutSweep(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	root := t.TempDir()
	runs := 0
	var dir string
	outcomes := map[string]int{}
	resumed := 0
	check := func(ctx context.Context, c powercut.Cut) error {
		b, err := firmware.Select(c.Disk, c.Disk.Size(), false, firmware.Options{})
		if err != nil {
			return fmt.Errorf("after the cut: %w", err)
		}
		if c.Write == 0 {
			if b.Slot != bootctl.B {
				return fmt.Errorf("the uncut update leaves slot %s as the default", b.Slot)
			}
			return slotMatchesRelease(f, c.Disk, bootctl.B)
		}
		for _, n := range []int{b.Partition, b.Root} {
			p := f.plan.Part(n)
			old, upd, err := c.Region(p.Start, p.Size)
			if err != nil {
				return err
			}
			if b.Slot == bootctl.B && !upd || !old && !upd {
				return fmt.Errorf("the firmware boots slot %s (%s) but %s is neither the old content nor the verified release", b.Slot, b.Reason, p.Name)
			}
		}
		// The agent's next start on the surviving disk and state.
		dev := powercut.NewDevice(c.Disk, powercut.Fault{})
		r, err := newRobot(dev, f.plan, dir)
		if err != nil {
			return err
		}
		if err := r.boot(b.Slot, false); err != nil {
			return err
		}
		u, err := r.newAgent(ota.DirSource{}, nil, f.key)
		if err != nil {
			return err
		}
		out, err := u.OnStart(ctx)
		if err != nil {
			return fmt.Errorf("start after the cut: %w", err)
		}
		kind := out.State
		switch {
		case b.Slot == bootctl.B && (out.State == protocol.UpdateCommitted || out.State == ""):
		case b.Slot == bootctl.A && out.State == protocol.UpdateRolledBack && out.Reason == ota.ReasonTrialLost:
		case b.Slot == bootctl.A && out.State == "" && out.Resume != nil:
			kind = "resume"
		default:
			return fmt.Errorf("booted slot %s, the agent's start gives %+v", b.Slot, out)
		}
		outcomes[fmt.Sprintf("slot %s, %s", b.Slot, kind)]++
		if kind != "resume" || c.Tear != powercut.TearLose {
			return nil
		}
		// Resume the interrupted install to the end (for one fault variant:
		// each resume is a whole update).
		resumed++
		if err := u.Install(ctx, *out.Resume); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		if err := r.boot(bootctl.B, true); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		if out, err = r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateCommitted {
			return fmt.Errorf("resumed update: %+v, %v", out, err)
		}
		return slotMatchesRelease(f, dev.Current(), bootctl.B)
	}
	scenario := func(ctx context.Context, dev *powercut.Device) error {
		runs++
		dir = filepath.Join(root, fmt.Sprint(runs))
		defer func() {
			// keep only the directory the check needs
			os.RemoveAll(filepath.Join(root, fmt.Sprint(runs-1)))
		}()
		return updateCycle(f, dir)(ctx, dev)
	}
	start := time.Now()
	rep, err := powercut.Sweep(ctx, powercut.Config{
		Initial: f.disk1(t), Scenario: scenario, Check: check, Seed: 8,
		Tears: []powercut.Tear{powercut.TearLose, powercut.TearSubset, powercut.TearWhole},
		// A random subset of the unsynced sectors survives: it covers
		// "all lost" and "all kept" per sector; package bootctl's own
		// sweep runs every cache policy over the commit sector.
		Caches: []powercut.Cache{powercut.CacheRandom},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.CutPoints != rep.Writes+1 {
		t.Errorf("%d cut points for %d writes: the sweep skipped some", rep.CutPoints, rep.Writes)
	}
	if outcomes["slot a, resume"] == 0 || outcomes["slot a, rolled_back"] == 0 || outcomes["slot b, committed"]+outcomes["slot b, "] == 0 {
		t.Errorf("the sweep did not reach every outcome: %v", outcomes)
	}
	var parts []string
	for k, v := range outcomes {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	fmt.Printf("power-cut sweep over a whole update (write slot b, flush, verify, arm, trial, commit): %d writes (%d syncs), %d cut points (every write and after the last), %d cut runs (tears lost/torn-subset/whole × random cache survival), every one boots a complete slot; next start: %s; %d interrupted installs resumed to a committed update (%s)\n",
		rep.Writes, rep.Syncs, rep.CutPoints, rep.Runs, strings.Join(parts, ", "), resumed, time.Since(start).Round(time.Millisecond))
}
