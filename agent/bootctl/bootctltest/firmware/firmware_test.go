package firmware

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

func autoboot(t testing.TB, def string) []byte {
	t.Helper()
	b, err := layout.Autoboot(def)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAutoboot(t *testing.T) {
	a, b := autoboot(t, "a"), autoboot(t, "b")
	torn := append([]byte(nil), a...) // [all] digit from b, [tryboot] digit from a
	copy(torn, b[:strings.Index(string(b), "[tryboot]")])
	for _, c := range []struct {
		name        string
		file        string
		trial       bool
		want        int
		wantAB      bool
		errContains string
	}{
		{"built a, normal", string(a), false, 2, true, ""},
		{"built a, trial", string(a), true, 3, true, ""},
		{"built b, normal", string(b), false, 3, true, ""},
		{"built b, trial", string(b), true, 2, true, ""},
		{"torn mix still names a slot", string(torn), false, 3, true, ""},
		{"no tryboot_a_b", "[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n", true, 3, false, ""},
		{"[none] ignored", "[all]\nboot_partition=2\n[none]\nboot_partition=3\n", false, 2, false, ""},
		{"later line wins", "boot_partition=2\nboot_partition=3\n", false, 3, false, ""},
		{"nothing selected", "[tryboot]\nboot_partition=3\n", false, 0, false, "no boot_partition"},
		{"NUL bytes", "[all]\nboot_partition=2\n\x00\x00", false, 0, false, "half-written"},
		{"bad number", "[all]\nboot_partition=x\n", false, 0, false, "not a small number"},
		{"unknown filter", "[pi5]\nboot_partition=2\n", false, 0, false, "not modelled"},
		{"unknown key", "[all]\nfoo=1\nboot_partition=2\n", false, 0, false, "not modelled"},
		{"too long", "[all]\nboot_partition=2\n" + strings.Repeat("#\n", 300), false, 0, false, "at most 512"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseAutoboot([]byte(c.file), c.trial)
			if c.errContains != "" {
				if err == nil || !strings.Contains(err.Error(), c.errContains) {
					t.Fatalf("err = %v, want one containing %q", err, c.errContains)
				}
				return
			}
			if err != nil || got.BootPartition != c.want || got.TrybootAB != c.wantAB {
				t.Fatalf("got %+v, %v; want partition %d, tryboot_a_b %v", got, err, c.want, c.wantAB)
			}
		})
	}
}

func FuzzParseAutoboot(f *testing.F) {
	f.Add(autoboot(f, "a"), true)
	f.Add(autoboot(f, "b"), false)
	f.Add([]byte("[tryboot]\nboot_partition=3\n[all]\nboot_partition=2"), true)
	f.Fuzz(func(t *testing.T, b []byte, trial bool) {
		a, err := ParseAutoboot(b, trial)
		if err == nil && (a.BootPartition <= 0 || a.BootPartition > 127 || len(b) > MaxAutobootSize) {
			t.Fatalf("accepted %q as %+v", b, a)
		}
	})
}

// image builds the test image once per test and returns it as a disk.
func image(t *testing.T) (*powercut.Disk, *layout.Plan) {
	t.Helper()
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{Description: "bootctl test"})
	path, plan := img.Path, img.Plan
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return powercut.NewDisk(f, plan.Size), plan
}

// withAutoboot rewrites autoboot.txt on d in place.
func withAutoboot(t *testing.T, d *powercut.Disk, plan *layout.Plan, content []byte) *powercut.Disk {
	t.Helper()
	dev := powercut.NewDevice(d, powercut.Fault{})
	bc := plan.Part(layout.BootConfig)
	sec, err := dev.Section(bc.Start, bc.Size)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := fat.Open(sec, bc.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := fsys.Overwrite(sec, "autoboot.txt", content); err != nil {
		t.Fatal(err)
	}
	return dev.Current()
}

func zeroAt(t *testing.T, d *powercut.Disk, off int64, n int) *powercut.Disk {
	t.Helper()
	out, err := d.With(make([]byte, n), off)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSelect(t *testing.T) {
	disk, plan := image(t)
	onB := withAutoboot(t, disk, plan, autoboot(t, "b"))
	brokenBootB := zeroAt(t, disk, plan.Part(layout.BootB).Start, 512)
	brokenSysB := zeroAt(t, disk, plan.Part(layout.SystemB).Start+1024, 1024)
	brokenDefault := zeroAt(t, onB, plan.Part(layout.BootB).Start, 512)
	noAutoboot := zeroAt(t, disk, plan.Part(layout.BootConfig).Start, 512)
	for _, c := range []struct {
		name     string
		disk     *powercut.Disk
		tryboot  bool
		want     bootctl.Slot
		trial    bool
		reason   string
		wantNoBt bool
	}{
		{"built image boots a", disk, false, bootctl.A, false, "default", false},
		{"tryboot boots b", disk, true, bootctl.B, true, "tryboot", false},
		{"committed b boots b", onB, false, bootctl.B, false, "default", false},
		{"tryboot from b boots a", onB, true, bootctl.A, true, "tryboot", false},
		{"broken trial FAT falls back", brokenBootB, true, bootctl.A, false, "tryboot failed", false},
		{"trial without ext4 falls back", brokenSysB, true, bootctl.A, false, "no ext4 superblock", false},
		{"broken trial not used normally", brokenBootB, false, bootctl.A, false, "default", false},
		{"broken default does not boot", brokenDefault, false, "", false, "", true},
		{"no bootconfig does not boot", noAutoboot, false, "", false, "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := Select(c.disk, c.disk.Size(), c.tryboot, Options{})
			if c.wantNoBt {
				if !errors.Is(err, ErrNoBoot) {
					t.Fatalf("booted %+v (err %v), want ErrNoBoot", b, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Slot != c.want || b.Trial != c.trial || !strings.Contains(b.Reason, c.reason) || b.Partition != c.want.BootPartition() || b.Root != c.want.SystemPartition() {
				t.Fatalf("booted %+v, want slot %s trial %v reason ~%q", b, c.want, c.trial, c.reason)
			}
		})
	}
	t.Run("required files", func(t *testing.T) {
		if _, err := Select(disk, disk.Size(), false, Options{Required: []string{"kernel_2712.img"}}); !errors.Is(err, ErrNoBoot) {
			t.Fatalf("booted without a kernel: %v", err)
		}
		if b, err := Select(disk, disk.Size(), false, Options{Required: []string{"config.txt"}}); err != nil || b.Slot != bootctl.A {
			t.Fatalf("%+v %v", b, err)
		}
	})
}

func TestPiTrybootIsOneShot(t *testing.T) {
	disk, _ := image(t)
	ctx := context.Background()
	dt := t.TempDir()
	pi := NewPi(disk, disk.Size(), PiOptions{DeviceTree: dt, Watchdog: time.Minute})
	boot := func(want bootctl.Slot, trial bool) {
		t.Helper()
		b, err := pi.Boot()
		if err != nil || b.Slot != want || b.Trial != trial {
			t.Fatalf("boot: %+v %v, want slot %s trial %v", b, err, want, trial)
		}
		bi, err := rpi.ReadBootInfo(dt)
		if err != nil || bi.Partition != want.BootPartition() || bi.Tryboot != trial {
			t.Fatalf("device tree says %+v (%v) after booting %s", bi, err, want)
		}
	}
	boot(bootctl.A, false)
	if err := pi.Reboot(ctx, "0 tryboot"); err != nil {
		t.Fatal(err)
	}
	boot(bootctl.B, true)
	// Any reset after the firmware consumed the flag boots the default.
	if err := pi.Reboot(ctx, ""); err != nil {
		t.Fatal(err)
	}
	boot(bootctl.A, false)
	// A power cut loses a flag that was set but not yet consumed.
	if err := pi.Reboot(ctx, "0 tryboot"); err != nil {
		t.Fatal(err)
	}
	pi.PowerCut()
	boot(bootctl.A, false)

	for _, arg := range []string{"3", "0 recovery", "tryboot now"} {
		if err := pi.Reboot(ctx, arg); err == nil {
			t.Errorf("reboot %q accepted", arg)
		}
	}
	if n := len(pi.Boots()); n != 4 {
		t.Errorf("%d boots recorded, want 4", n)
	}
}

func TestPiWatchdogResetsHungTrial(t *testing.T) {
	disk, _ := image(t)
	pi := NewPi(disk, disk.Size(), PiOptions{Watchdog: time.Minute})
	if _, err := pi.Boot(); err != nil {
		t.Fatal(err)
	}
	if err := pi.Reboot(context.Background(), "0 tryboot"); err != nil {
		t.Fatal(err)
	}
	if b, err := pi.Boot(); err != nil || b.Slot != bootctl.B {
		t.Fatalf("trial: %+v %v", b, err)
	}
	// A healthy system kicks: no reset.
	for range 5 {
		if reset, _, _ := pi.Advance(50 * time.Second); reset {
			t.Fatal("reset although the system kicked the watchdog")
		}
		pi.Kick()
	}
	// Then it hangs.
	if reset, _, _ := pi.Advance(59 * time.Second); reset {
		t.Fatal("reset before the timeout")
	}
	reset, b, err := pi.Advance(2 * time.Second)
	if !reset || err != nil || b.Slot != bootctl.A || b.Trial || !strings.Contains(b.Reason, "watchdog") {
		t.Fatalf("after the hang: reset %v, %+v, %v; want a watchdog reset into slot a", reset, b, err)
	}
	if r, ok := pi.Running(); !ok || r.Slot != bootctl.A {
		t.Fatalf("running %+v %v", r, ok)
	}
}
