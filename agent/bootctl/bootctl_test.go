package bootctl_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

func TestSlots(t *testing.T) {
	for _, c := range []struct {
		in         string
		want       bootctl.Slot
		boot, root int
	}{{"a", bootctl.A, 2, 4}, {"B", bootctl.B, 3, 5}} {
		s, err := bootctl.ParseSlot(c.in)
		if err != nil || s != c.want || s.BootPartition() != c.boot || s.SystemPartition() != c.root || s.Other() == s || !s.Valid() {
			t.Errorf("%q: %v %v", c.in, s, err)
		}
		if back, err := bootctl.SlotOfBootPartition(c.boot); err != nil || back != s {
			t.Errorf("partition %d: %v %v", c.boot, back, err)
		}
	}
	for _, bad := range []string{"", "c", "ab"} {
		if _, err := bootctl.ParseSlot(bad); err == nil {
			t.Errorf("ParseSlot(%q) accepted", bad)
		}
	}
	for _, n := range []int{0, 1, 4, 6} {
		if _, err := bootctl.SlotOfBootPartition(n); err == nil {
			t.Errorf("partition %d accepted as a boot slot", n)
		}
	}
}

// machine is a modelled Pi running the real controller over a device.
type machine struct {
	pi  *firmware.Pi
	ctl *rpi.Controller
}

func newMachine(dev *powercut.Device, plan *layout.Plan, dt string) (*machine, error) {
	bc := plan.Part(layout.BootConfig)
	sec, err := dev.Section(bc.Start, bc.Size)
	if err != nil {
		return nil, err
	}
	pi, ctl, err := firmware.NewControlledPi(dev, dev.Size(), sec, dt)
	if err != nil {
		return nil, err
	}
	return &machine{pi: pi, ctl: ctl}, nil
}

// boot powers on or resets and checks the firmware's choice.
func (m *machine) boot(want bootctl.Slot, trial bool) error {
	b, err := m.pi.Boot()
	if err != nil {
		return err
	}
	if b.Slot != want || b.Trial != trial {
		return fmt.Errorf("the firmware booted %s (trial %v, %s), want %s (trial %v)", b.Slot, b.Trial, b.Reason, want, trial)
	}
	return nil
}

func (m *machine) status(ctx context.Context, want bootctl.Status) error {
	st, err := m.ctl.Status(ctx)
	if err != nil {
		return err
	}
	if st != want {
		return fmt.Errorf("status %+v, want %+v", st, want)
	}
	return nil
}

func builtDisk(t *testing.T) (*powercut.Disk, *layout.Plan, *os.File) {
	t.Helper()
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{Description: "bootctl test"})
	path, plan := img.Path, img.Plan
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return powercut.NewDisk(f, plan.Size), plan, f
}

// TestTrialOutcomes: a failed health check and a hung trial both end on the
// old slot; a healthy trial is committed and survives reboots.
func TestTrialOutcomes(t *testing.T) {
	ctx := context.Background()
	disk, plan, _ := builtDisk(t)
	dev := powercut.NewDevice(disk, powercut.Fault{})
	m, err := newMachine(dev, plan, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	step("power on", m.boot(bootctl.A, false))
	step("status", m.status(ctx, bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.B}))

	// Health check fails: the agent reboots normally, back to a.
	step("arm", m.ctl.ArmTryboot(ctx, bootctl.B))
	step("reboot tryboot", m.ctl.Reboot(ctx, true))
	step("trial", m.boot(bootctl.B, true))
	step("trial status", m.status(ctx, bootctl.Status{Booted: bootctl.B, Trial: true, Default: bootctl.A, TrialSlot: bootctl.B}))
	step("roll back", m.ctl.Reboot(ctx, false))
	step("back on a", m.boot(bootctl.A, false))

	// The trial hangs: the watchdog resets it into a.
	step("arm", m.ctl.ArmTryboot(ctx, bootctl.B))
	step("reboot tryboot", m.ctl.Reboot(ctx, true))
	step("trial", m.boot(bootctl.B, true))
	reset, b, err := m.pi.Advance(90 * time.Second)
	if !reset || err != nil || b.Slot != bootctl.A || !strings.Contains(b.Reason, "watchdog") {
		t.Fatalf("hung trial: reset %v, %+v, %v", reset, b, err)
	}
	step("after the watchdog", m.status(ctx, bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.B}))

	// A healthy trial is committed and stays.
	step("arm", m.ctl.ArmTryboot(ctx, bootctl.B))
	step("reboot tryboot", m.ctl.Reboot(ctx, true))
	step("trial", m.boot(bootctl.B, true))
	m.pi.Kick()
	step("commit", m.ctl.Commit(ctx, bootctl.B))
	if reset, _, _ := m.pi.Advance(30 * time.Second); reset {
		t.Fatal("watchdog reset a kicked system")
	}
	step("reboot", m.ctl.Reboot(ctx, false))
	step("committed b", m.boot(bootctl.B, false))
	m.pi.PowerCut()
	step("power cycle", m.boot(bootctl.B, false))
	step("status", m.status(ctx, bootctl.Status{Booted: bootctl.B, Default: bootctl.B, TrialSlot: bootctl.A}))
	if w := dev.Writes(); len(w) != 1 || w[0].Len != 512 {
		t.Fatalf("the whole cycle wrote %+v, want the one commit sector", w)
	}
}

// region is a byte range of the disk.
type region struct{ off, n int64 }

// updateFixture: the built image with slot b's first MiB of boot_b and its
// system_b superblock area erased (an abandoned earlier update), and the
// bytes that make slot b whole again — what a slot writer would write.
type updateFixture struct {
	initial *powercut.Disk
	plan    *layout.Plan
	patches []region
	content [][]byte
}

func newUpdateFixture(t *testing.T) *updateFixture {
	t.Helper()
	disk, plan, f := builtDisk(t)
	fx := &updateFixture{plan: plan, initial: disk}
	const chunk = 64 << 10
	for _, r := range []region{{plan.Part(layout.BootB).Start, 1 << 20}, {plan.Part(layout.SystemB).Start, chunk}} {
		for off := r.off; off < r.off+r.n; off += chunk {
			b := make([]byte, chunk)
			if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			fx.patches = append(fx.patches, region{off, chunk})
			fx.content = append(fx.content, b)
		}
		var err error
		if fx.initial, err = fx.initial.With(make([]byte, r.n), r.off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := firmware.Select(fx.initial, fx.initial.Size(), true, firmware.Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := firmware.Select(fx.initial, fx.initial.Size(), true, firmware.Options{}); b.Slot != bootctl.A {
		t.Fatalf("the erased slot b still boots: %+v", b)
	}
	return fx
}

// scenario is an update cycle as the updater will run it: write slot b,
// flush, arm, trial boot, commit, reboot; then a second cycle back to a.
// Runs are sequential, so they share one device tree directory.
func (fx *updateFixture) scenario(flushBeforeTrial bool, dt string) powercut.Scenario {
	return func(ctx context.Context, dev *powercut.Device) error {
		m, err := newMachine(dev, fx.plan, dt)
		if err != nil {
			return err
		}
		if err := m.boot(bootctl.A, false); err != nil {
			return err
		}
		for i, r := range fx.patches {
			if _, err := dev.WriteAt(fx.content[i], r.off); err != nil {
				return fmt.Errorf("write slot b: %w", err)
			}
		}
		if flushBeforeTrial {
			if err := dev.Sync(); err != nil {
				return fmt.Errorf("flush slot b: %w", err)
			}
		}
		for _, s := range []bootctl.Slot{bootctl.B, bootctl.A} {
			if err := m.ctl.ArmTryboot(ctx, s); err != nil {
				return err
			}
			if err := m.ctl.Reboot(ctx, true); err != nil {
				return err
			}
			if err := m.boot(s, true); err != nil {
				return err
			}
			if err := m.ctl.Commit(ctx, s); err != nil {
				return err
			}
			if err := m.ctl.Reboot(ctx, false); err != nil {
				return err
			}
			if err := m.boot(s, false); err != nil {
				return err
			}
		}
		return nil
	}
}

// check: after the cut, power-on boots a slot whose partitions are exactly
// as before the update or exactly as the update wrote them, and
// autoboot.txt is exactly one of its two versions.
func (fx *updateFixture) check(ctx context.Context, c powercut.Cut) error {
	b, err := firmware.Select(c.Disk, c.Disk.Size(), false, firmware.Options{})
	if err != nil {
		return err
	}
	for _, n := range []int{b.Partition, b.Root} {
		p := fx.plan.Part(n)
		old, upd, err := c.Region(p.Start, p.Size)
		if err != nil {
			return err
		}
		if !old && !upd {
			return fmt.Errorf("the firmware boots slot %s (%s) but %s is neither the old nor the new content", b.Slot, b.Reason, p.Name)
		}
	}
	bc := fx.plan.Part(layout.BootConfig)
	fsys, err := fat.Open(io.NewSectionReader(c.Disk, bc.Start, bc.Size), bc.Size)
	if err != nil {
		return err
	}
	got, err := fsys.ReadFile("autoboot.txt")
	if err != nil {
		return err
	}
	a, _ := layout.Autoboot("a")
	bb, _ := layout.Autoboot("b")
	if !bytes.Equal(got, a) && !bytes.Equal(got, bb) {
		return fmt.Errorf("autoboot.txt is a mix of versions:\n%q", got)
	}
	return nil
}

func TestPowerCutUpdateAndCommit(t *testing.T) {
	fx := newUpdateFixture(t)
	ctx := context.Background()
	start := time.Now()
	rep, err := powercut.Sweep(ctx, powercut.Config{Initial: fx.initial, Scenario: fx.scenario(true, t.TempDir()), Check: fx.check, Seed: 8})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Writes != len(fx.patches)+2 {
		t.Errorf("%d writes, want %d slot chunks + 2 commit sectors", rep.Writes, len(fx.patches))
	}
	fmt.Printf("power-cut sweep (write slot b, flush, arm, trial, commit b, trial and commit a): %d writes, %d cut points, %d cut runs, every one boots a complete slot (%s)\n",
		rep.Writes, rep.CutPoints, rep.Runs, time.Since(start).Round(time.Millisecond))
}

// TestPowerCutCatchesUnflushedSlot: an updater that trial-boots and
// commits without flushing the slot first can lose slot data that the
// commit's flush does not cover in time; the sweep must find it.
func TestPowerCutCatchesUnflushedSlot(t *testing.T) {
	fx := newUpdateFixture(t)
	_, err := powercut.Sweep(context.Background(), powercut.Config{Initial: fx.initial, Scenario: fx.scenario(false, t.TempDir()), Check: fx.check, Seed: 8, MaxFailures: 1})
	if err == nil {
		t.Fatal("the sweep passed an update that commits before its slot is durable")
	}
	if !errors.Is(err, firmware.ErrNoBoot) && !strings.Contains(err.Error(), "neither the old nor the new") {
		t.Fatalf("unexpected failure: %v", err)
	}
	t.Logf("caught: %v", err)
}
