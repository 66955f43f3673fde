package rpi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

func render(t testing.TB, s bootctl.Slot) []byte {
	t.Helper()
	b, err := RenderAutoboot(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAutoboot(t *testing.T) {
	for _, c := range []struct {
		name, file   string
		def, trial   bootctl.Slot
		errContains  string
		slotsErrPart string
	}{
		{"built a", string(render(t, bootctl.A)), bootctl.A, bootctl.B, "", ""},
		{"built b", string(render(t, bootctl.B)), bootctl.B, bootctl.A, "", ""},
		{"no tryboot_a_b", "[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n", "", "", "", "tryboot_a_b"},
		{"no trial", "[all]\ntryboot_a_b=1\nboot_partition=2\n", "", "", "", "[tryboot]"},
		{"partition 1", "[all]\ntryboot_a_b=1\nboot_partition=1\n[tryboot]\nboot_partition=3\n", "", "", "", "neither boot_a"},
		{"other filter", "[pi5]\nboot_partition=2\n", "", "", "section [pi5]", ""},
		{"repeated", "[all]\nboot_partition=2\nboot_partition=3\n", "", "", "repeated", ""},
		{"garbage", "[all]\nboot_partition=2\n\x00\xff", "", "", "control or invalid", ""},
		{"unknown key", "[all]\nboot_partition=2\nkernel=x\n", "", "", "not a small number", ""},
		{"empty", "", "", "", "no boot_partition", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseAutoboot([]byte(c.file))
			if c.errContains != "" {
				if err == nil || !strings.Contains(err.Error(), c.errContains) {
					t.Fatalf("err %v, want ~%q", err, c.errContains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			def, trial, err := a.Slots()
			if c.slotsErrPart != "" {
				if err == nil || !strings.Contains(err.Error(), c.slotsErrPart) {
					t.Fatalf("Slots: %v, want ~%q", err, c.slotsErrPart)
				}
				return
			}
			if err != nil || def != c.def || trial != c.trial {
				t.Fatalf("%s/%s %v, want %s/%s", def, trial, err, c.def, c.trial)
			}
		})
	}
}

// TestTornCommitSelectsASlot: the two autoboot.txt versions differ in a
// few bytes; every mix of them (a write torn at any byte, in any order)
// still parses to a slot pair, so a commit can never leave a third state.
func TestTornCommitSelectsASlot(t *testing.T) {
	a, b := render(t, bootctl.A), render(t, bootctl.B)
	var diff []int
	for i := range a {
		if a[i] != b[i] {
			diff = append(diff, i)
		}
	}
	if len(a) != len(b) || len(a) != 512 || len(diff) == 0 || len(diff) > 8 {
		t.Fatalf("versions are %d and %d bytes and differ at %v: not a one-sector in-place rewrite", len(a), len(b), diff)
	}
	for mask := 0; mask < 1<<len(diff); mask++ {
		mix := append([]byte(nil), a...)
		for j, i := range diff {
			if mask&(1<<j) != 0 {
				mix[i] = b[i]
			}
		}
		p, err := ParseAutoboot(mix)
		if err != nil {
			t.Fatalf("mix %b: %v", mask, err)
		}
		if _, err := bootctl.SlotOfBootPartition(p.Default); err != nil || !p.TrybootAB {
			t.Fatalf("mix %b: %+v %v", mask, p, err)
		}
	}
}

func FuzzParseAutoboot(f *testing.F) {
	f.Add(render(f, bootctl.A))
	f.Add(render(f, bootctl.B))
	f.Add([]byte("[tryboot]\nboot_partition=3\n[all]\nboot_partition=2\ntryboot_a_b=1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAutoboot(b)
		if err != nil {
			return
		}
		if a.Default <= 0 || a.Default > 127 || a.Trial < 0 || a.Trial > 127 {
			t.Fatalf("accepted %q as %+v", b, a)
		}
		if def, _, err := a.Slots(); err == nil && !def.Valid() {
			t.Fatalf("invalid slot from %q", b)
		}
	})
}

func FuzzParseDTU32(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseDTU32(b)
		if (err == nil) != (len(b) == 4) || err == nil && v != uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]) {
			t.Fatalf("%x: %d %v", b, v, err)
		}
	})
}

func TestReadBootInfo(t *testing.T) {
	dt := t.TempDir()
	if _, err := ReadBootInfo(dt); err == nil || !strings.Contains(err.Error(), "rpi-eeprom-update") {
		t.Fatalf("missing properties: %v", err)
	}
	for _, want := range []BootInfo{{Tryboot: true, Partition: 3}, {Tryboot: false, Partition: 2}} {
		if err := WriteBootInfo(dt, want); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadBootInfo(dt); err != nil || got != want {
			t.Fatalf("%+v %v, want %+v", got, err, want)
		}
	}
	os.WriteFile(filepath.Join(dt, dtBootloader, dtTryboot), []byte("1\n"), 0o644)
	if _, err := ReadBootInfo(dt); err == nil {
		t.Fatal("accepted a text property")
	}
}

// kernelRoots writes the kernel's view of disks and the mount table under
// a new directory; it returns the roots to read them from.
func kernelRoots(t *testing.T, mountinfo string, disks ...imagetest.KernelDisk) Roots {
	t.Helper()
	root := t.TempDir()
	if err := imagetest.WriteKernelTree(root, mountinfo, disks...); err != nil {
		t.Fatal(err)
	}
	return Roots{Proc: filepath.Join(root, "proc"), Dev: filepath.Join(root, "dev"), Sys: filepath.Join(root, "sys")}
}

func TestFindBootDiskForEachNaming(t *testing.T) {
	sd, nvme, usb := imagetest.PiSDCard(""), imagetest.PiNVMe(""), imagetest.PiUSB("")
	// The same image on every disk: the same partition GUIDs, so only the
	// mount table tells which one / is on.
	multipath := nvme
	multipath.SysDir = "virtual/nvme-subsystem/nvme-subsys0/nvme0n1" // CONFIG_NVME_MULTIPATH
	for _, c := range []struct {
		name  string
		root  string // mount table line for /
		disks []imagetest.KernelDisk
		want  BootDisk
	}{
		{"sd", "22 1 179:4 / / rw,noatime shared:1 - ext4 /dev/root rw", []imagetest.KernelDisk{sd, usb},
			BootDisk{Disk: "mmcblk0", BootConfig: "mmcblk0p1"}},
		{"nvme", "22 1 259:5 / / rw,noatime shared:1 - ext4 /dev/nvme0n1p5 rw", []imagetest.KernelDisk{sd, nvme},
			BootDisk{Disk: "nvme0n1", BootConfig: "nvme0n1p1"}},
		{"nvme multipath", "22 1 259:4 / / rw,noatime shared:1 - ext4 /dev/nvme0n1p4 rw", []imagetest.KernelDisk{multipath},
			BootDisk{Disk: "nvme0n1", BootConfig: "nvme0n1p1"}},
		{"usb", "22 1 8:4 / / rw,noatime shared:1 - ext4 /dev/sda4 rw", []imagetest.KernelDisk{sd, usb},
			BootDisk{Disk: "sda", BootConfig: "sda1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := kernelRoots(t, imagetest.MountTable(c.root), c.disks...)
			got, err := FindBootDisk(r)
			want := BootDisk{Disk: filepath.Join(r.Dev, c.want.Disk), BootConfig: filepath.Join(r.Dev, c.want.BootConfig)}
			if err != nil || got != want {
				t.Fatalf("FindBootDisk = %+v, %v; want %+v", got, err, want)
			}
			if byName, err := BootDiskAt(want.Disk); err != nil || byName != want {
				t.Fatalf("BootDiskAt(%s) = %+v, %v; want %+v", want.Disk, byName, err, want)
			}
		})
	}
}

func TestFindBootDiskRefuses(t *testing.T) {
	sd := imagetest.PiSDCard("")
	for _, c := range []struct {
		name, mountinfo string
		sysfs           func(r Roots)
		want            []string
	}{
		{name: "nfs root", mountinfo: imagetest.MountTable("22 1 0:20 / / rw,relatime shared:1 - nfs 10.0.0.1:/srv/robots/r1 rw,vers=3,addr=10.0.0.1"),
			want: []string{"/ is nfs from 10.0.0.1:/srv/robots/r1", "not a partition", "set update_disk"}},
		{name: "overlay root", mountinfo: imagetest.MountTable("22 1 179:4 / / ro,noatime shared:1 - ext4 /dev/mmcblk0p4 ro",
			"40 22 0:30 / / rw,relatime shared:20 - overlay overlay rw,lowerdir=/media/root-ro,upperdir=/media/root-rw/overlay"),
			want: []string{"/ is overlay from overlay", "set update_disk"}},
		{name: "no link in sysfs", mountinfo: imagetest.MountTable("22 1 179:4 / / rw - ext4 /dev/root rw"),
			sysfs: func(r Roots) { os.Remove(filepath.Join(r.Sys, "dev/block/179:4")) },
			want:  []string{"block device 179:4, which sysfs does not show", "set update_disk"}},
		{name: "whole-disk root", mountinfo: imagetest.MountTable("22 1 179:0 / / rw - ext4 /dev/mmcblk0 rw"),
			want: []string{"/ is on mmcblk0 (179:0), which is not a partition", "set update_disk"}},
		{name: "root not a slot", mountinfo: imagetest.MountTable("22 1 179:2 / / rw - ext4 /dev/mmcblk0p2 rw"),
			want: []string{"partition 2 of mmcblk0", "mmcblk0 is not an A/B disk"}},
		{name: "no bootconfig partition", mountinfo: imagetest.MountTable("22 1 179:4 / / rw - ext4 /dev/root rw"),
			sysfs: func(r Roots) {
				os.RemoveAll(filepath.Join(r.Sys, "devices", sd.SysDir, "mmcblk0p1"))
			},
			want: []string{"mmcblk0 (holding / on mmcblk0p4) has no partition 1"}},
		{name: "no root mount", mountinfo: "26 1 0:22 / /proc rw - proc proc rw\n", want: []string{"has no mount on /"}},
		{name: "bad mount table", mountinfo: "garbage\n", want: []string{"mountinfo", "garbage"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := kernelRoots(t, c.mountinfo, sd)
			if c.sysfs != nil {
				c.sysfs(r)
			}
			got, err := FindBootDisk(r)
			if err == nil {
				t.Fatalf("found %+v", got)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if _, err := FindBootDisk(Roots{Proc: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "read the mount table") {
		t.Errorf("no mount table: %v", err)
	}
}

func TestPartitionDeviceNamesAsTheKernel(t *testing.T) {
	for _, d := range []imagetest.KernelDisk{imagetest.PiSDCard(""), imagetest.PiNVMe(""), imagetest.PiUSB(""), {Name: "vda"}, {Name: "loop0"}} {
		for _, n := range []int{1, 5, 12} {
			if got, want := PartitionDevice("/dev/"+d.Name, n), "/dev/"+d.PartitionName(n); got != want {
				t.Errorf("PartitionDevice(/dev/%s, %d) = %s, want %s", d.Name, n, got, want)
			}
		}
	}
	dev := t.TempDir()
	sda, byID := filepath.Join(dev, "sda"), filepath.Join(dev, "usb-Generic_STORAGE_DEVICE-0:0")
	os.WriteFile(sda, nil, 0o644)
	os.Symlink("sda", byID)
	if got, err := BootDiskAt(byID); err != nil || got != (BootDisk{Disk: sda, BootConfig: sda + "1"}) {
		t.Errorf("BootDiskAt(a by-id link) = %+v, %v", got, err)
	}
	if _, err := BootDiskAt(filepath.Join(dev, "nvme9n1")); err == nil || !strings.Contains(err.Error(), "update_disk") {
		t.Errorf("BootDiskAt(a missing disk) = %v", err)
	}
}

// fixture is a built image on a recording device with a fake device tree.
type fixture struct {
	disk    *powercut.Disk
	dev     *powercut.Device
	plan    *layout.Plan
	dt      string
	reboots []string
	ctl     *Controller
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{Description: "bootctl test"})
	path, plan := img.Path, img.Plan
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fx := &fixture{disk: powercut.NewDisk(f, plan.Size), plan: plan, dt: t.TempDir()}
	fx.dev = powercut.NewDevice(fx.disk, powercut.Fault{})
	bc := plan.Part(layout.BootConfig)
	sec, err := fx.dev.Section(bc.Start, bc.Size)
	if err != nil {
		t.Fatal(err)
	}
	fx.ctl, err = New(Options{DeviceTree: fx.dt, BootConfig: sec, Reboot: reboot.Func(func(ctx context.Context, arg string) error {
		fx.reboots = append(fx.reboots, arg)
		return nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

func (fx *fixture) booted(t *testing.T, s bootctl.Slot, trial bool) {
	t.Helper()
	if err := WriteBootInfo(fx.dt, BootInfo{Tryboot: trial, Partition: s.BootPartition()}); err != nil {
		t.Fatal(err)
	}
}

func (fx *fixture) status(t *testing.T, want bootctl.Status) {
	t.Helper()
	got, err := fx.ctl.Status(context.Background())
	if err != nil || got != want {
		t.Fatalf("status %+v (%v), want %+v", got, err, want)
	}
}

// fsckBootConfig runs fsck.fat -n on the bootconfig partition of d.
func fsckBootConfig(t *testing.T, d *powercut.Disk, plan *layout.Plan) {
	t.Helper()
	fsck, err := exec.LookPath("fsck.fat")
	if err != nil {
		t.Log("fsck.fat not installed (Debian dosfstools): skipping the fsck check")
		return
	}
	bc := plan.Part(layout.BootConfig)
	p := filepath.Join(t.TempDir(), "bootconfig.img")
	img, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(img, io.NewSectionReader(d, bc.Start, bc.Size)); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if out, err := exec.Command(fsck, "-n", p).CombinedOutput(); err != nil {
		t.Fatalf("fsck.fat -n: %v\n%s", err, out)
	}
}

func TestControllerCommitIsOneSector(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.booted(t, bootctl.A, false)
	fx.status(t, bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.B})

	if err := fx.ctl.ArmTryboot(ctx, bootctl.A); !errors.Is(err, bootctl.ErrTrialOfDefault) {
		t.Fatalf("arm the default: %v", err)
	}
	if err := fx.ctl.ArmTryboot(ctx, bootctl.B); err != nil {
		t.Fatal(err)
	}
	if n := len(fx.dev.Writes()); n != 0 {
		t.Fatalf("arming a trial of b on a built image wrote %d times; the file already names b under [tryboot]", n)
	}
	if err := fx.ctl.Reboot(ctx, true); err != nil || len(fx.reboots) != 1 || fx.reboots[0] != "0 tryboot" {
		t.Fatalf("reboot: %v %q", err, fx.reboots)
	}

	fx.booted(t, bootctl.B, true)
	st := bootctl.Status{Booted: bootctl.B, Trial: true, Default: bootctl.A, TrialSlot: bootctl.B}
	fx.status(t, st)
	if !st.PendingCommit() {
		t.Fatal("a trial of b with default a is not pending commit")
	}
	if err := fx.ctl.Commit(ctx, bootctl.A); !errors.Is(err, bootctl.ErrCommitNotBooted) {
		t.Fatalf("commit of a while b runs: %v", err)
	}
	before := fx.dev.Current()
	if err := fx.ctl.Commit(ctx, bootctl.B); err != nil {
		t.Fatal(err)
	}
	after := fx.dev.Current()
	w := fx.dev.Writes()
	if len(w) != 1 || w[0].Len != 512 || w[0].Off%512 != 0 || fx.dev.Syncs() != 1 {
		t.Fatalf("commit wrote %+v with %d syncs, want one synced 512-byte sector", w, fx.dev.Syncs())
	}
	// Everything but that one sector — boot sector, both FATs, the root
	// directory with autoboot.txt's entry — is byte-identical.
	bc := fx.plan.Part(layout.BootConfig)
	sector := w[0].Off
	if sector < bc.Start || sector >= bc.End() {
		t.Fatalf("commit wrote at %d, outside bootconfig", sector)
	}
	for _, r := range [][2]int64{{bc.Start, sector - bc.Start}, {sector + 512, bc.End() - sector - 512}} {
		if eq, err := powercut.EqualRegion(before, after, r[0], r[1]); err != nil || !eq {
			t.Fatalf("bytes outside the autoboot.txt sector changed in %d+%d (%v)", r[0], r[1], err)
		}
	}
	got := make([]byte, 512)
	after.ReadAt(got, sector)
	if !bytes.Equal(got, render(t, bootctl.B)) {
		t.Fatalf("the written sector is not autoboot.txt for b:\n%s", got)
	}
	fsckBootConfig(t, after, fx.plan)
	fx.status(t, bootctl.Status{Booted: bootctl.B, Trial: true, Default: bootctl.B, TrialSlot: bootctl.A})

	// Committing again writes nothing; the next trial goes to a.
	if err := fx.ctl.Commit(ctx, bootctl.B); err != nil || len(fx.dev.Writes()) != 1 {
		t.Fatalf("second commit: %v, %d writes", err, len(fx.dev.Writes()))
	}
	fx.booted(t, bootctl.B, false)
	if err := fx.ctl.ArmTryboot(ctx, bootctl.A); err != nil || len(fx.dev.Writes()) != 1 {
		t.Fatalf("arm a: %v, %d writes", err, len(fx.dev.Writes()))
	}
	if err := fx.ctl.ArmTryboot(ctx, bootctl.B); !errors.Is(err, bootctl.ErrTrialOfDefault) {
		t.Fatalf("arm b while b is default: %v", err)
	}
}

// TestArmRepairsTrySection: a file whose [tryboot] names the default is
// fixed in place, the default untouched.
func TestArmRepairsTrySection(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.booted(t, bootctl.A, false)
	odd, err := layout.Pad([]byte("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"), layout.AutobootSize)
	if err != nil {
		t.Fatal(err)
	}
	// Put the odd file where autoboot.txt lives: find the sector by a commit.
	fx.booted(t, bootctl.B, true)
	if err := fx.ctl.Commit(ctx, bootctl.B); err != nil {
		t.Fatal(err)
	}
	off := fx.dev.Writes()[0].Off
	if _, err := fx.dev.WriteAt(odd, off); err != nil {
		t.Fatal(err)
	}
	fx.booted(t, bootctl.A, false)
	fx.status(t, bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.A})
	if err := fx.ctl.ArmTryboot(ctx, bootctl.B); err != nil {
		t.Fatal(err)
	}
	fx.status(t, bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.B})
	if n := len(fx.dev.Writes()); n != 3 {
		t.Fatalf("%d writes, want commit + odd file + repair", n)
	}
}
