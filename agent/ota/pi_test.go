package ota

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

// piSystem writes a Pi running from disks (a fake /proc, /sys, /dev: see
// imagetest.WriteKernelTree) with the mount table mountinfo, and the
// image metadata and update key the agent reads; it returns OpenPi's
// options for it.
func piSystem(t *testing.T, mountinfo string, disks ...imagetest.KernelDisk) PiOptions {
	t.Helper()
	root := t.TempDir()
	if err := imagetest.WriteKernelTree(root, mountinfo, disks...); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(root, "keys")
	os.Mkdir(keys, 0o755)
	if _, err := release.GenerateKey(filepath.Join(keys, "fleet")); err != nil {
		t.Fatal(err)
	}
	info := filepath.Join(root, "image.json")
	if err := os.WriteFile(info, []byte(`{"version":"1","profile":"lekiwi","seed":"00"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return PiOptions{KeysDir: keys, StateDir: filepath.Join(root, "state"), CacheDir: filepath.Join(root, "cache"), ImageInfo: info,
		Roots:  rpi.Roots{Proc: filepath.Join(root, "proc"), Dev: filepath.Join(root, "dev"), Sys: filepath.Join(root, "sys")},
		Reboot: reboot.Func(func(context.Context, string) error { return nil })}
}

// wantError checks that err says every one of want.
func wantError(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one saying %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func TestOpenPiFindsTheBootDisk(t *testing.T) {
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{})
	st, err := os.Stat(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	// Each system has a second disk with the same image (the same
	// partition GUIDs) plugged in: only the mount table tells them apart.
	for _, c := range []struct {
		name, root       string
		disks            []imagetest.KernelDisk
		disk, bootConfig string
	}{
		{"sd card", "22 1 179:4 / / rw,noatime shared:1 - ext4 /dev/root rw",
			[]imagetest.KernelDisk{imagetest.PiSDCard(img.Path), imagetest.PiUSB(img.Path)}, "mmcblk0", "mmcblk0p1"},
		{"nvme", "22 1 259:5 / / rw,noatime shared:1 - ext4 /dev/nvme0n1p5 rw",
			[]imagetest.KernelDisk{imagetest.PiSDCard(img.Path), imagetest.PiNVMe(img.Path)}, "nvme0n1", "nvme0n1p1"},
		{"usb", "22 1 8:4 / / rw,noatime shared:1 - ext4 /dev/sda4 rw",
			[]imagetest.KernelDisk{imagetest.PiSDCard(img.Path), imagetest.PiUSB(img.Path)}, "sda", "sda1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := piSystem(t, imagetest.MountTable(c.root), c.disks...)
			p, err := openPiParts(o)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			want := rpi.BootDisk{Disk: filepath.Join(o.Roots.Dev, c.disk), BootConfig: filepath.Join(o.Roots.Dev, c.bootConfig)}
			if p.found != want || p.size != st.Size() || p.bootConfig.Size() != img.Plan.Part(layout.BootConfig).Size {
				t.Fatalf("found %+v (%d bytes, bootconfig %d), want %+v (%d, %d)", p.found, p.size, p.bootConfig.Size(), want, st.Size(), img.Plan.Part(layout.BootConfig).Size)
			}
			if a, err := p.ctl.Autoboot(); err != nil || a.Default != layout.BootA || a.Trial != layout.BootB {
				t.Fatalf("autoboot.txt of the image read as %+v, %v", a, err)
			}
			u, closeFn, err := OpenPi(o)
			if err != nil || u == nil {
				t.Fatalf("OpenPi: %v", err)
			}
			if err := closeFn(); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("update_disk when / is an overlay", func(t *testing.T) {
		o := piSystem(t, imagetest.MountTable("22 1 179:4 / / ro,noatime shared:1 - ext4 /dev/mmcblk0p4 ro",
			"40 22 0:30 / / rw,relatime shared:20 - overlay overlay rw,lowerdir=/media/root-ro,upperdir=/media/root-rw/overlay"),
			imagetest.PiSDCard(img.Path))
		_, _, err := OpenPi(o)
		wantError(t, err, "/ is overlay", "set update_disk")
		byID := filepath.Join(o.Roots.Dev, "disk/by-id/mmc-SD64G_0x1234abcd")
		os.MkdirAll(filepath.Dir(byID), 0o755)
		os.Symlink("../../mmcblk0", byID)
		o.Disk = byID
		p, err := openPiParts(o)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if want := filepath.Join(o.Roots.Dev, "mmcblk0p1"); p.found.BootConfig != want {
			t.Fatalf("update_disk %s gave bootconfig %s, want %s", byID, p.found.BootConfig, want)
		}
	})
}

func TestOpenPiRefuses(t *testing.T) {
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{})
	dir := t.TempDir()
	noGPT := filepath.Join(dir, "pi-os.img") // a disk written by rpi-imager: MBR, no GPT
	if err := os.WriteFile(noGPT, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	twoParts := filepath.Join(dir, "two.img")
	plan := &layout.Plan{Size: 64 << 20, Partitions: []layout.Partition{
		{Number: 1, Name: "boot", Type: layout.TypeBasicData, GUID: layout.MustParseGUID("11111111-2222-3333-4444-555555555501"), Start: 8 << 20, Size: 16 << 20},
		{Number: 2, Name: "root", Type: layout.TypeLinuxFS, GUID: layout.MustParseGUID("11111111-2222-3333-4444-555555555502"), Start: 24 << 20, Size: 32 << 20}}}
	f, err := os.Create(twoParts)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(plan.Size)
	if err := layout.WriteGPT(f, plan); err != nil {
		t.Fatal(err)
	}
	f.Close()

	sdRoot := imagetest.MountTable("22 1 179:4 / / rw,noatime shared:1 - ext4 /dev/root rw")
	sd := imagetest.PiSDCard(img.Path)
	for _, c := range []struct {
		name       string
		mountinfo  string
		disk       imagetest.KernelDisk
		change     func(o PiOptions)
		updateDisk string // under the fixture's /dev
		want       []string
	}{
		{name: "no bootconfig partition in sysfs", mountinfo: sdRoot, disk: sd,
			change: func(o PiOptions) { os.RemoveAll(filepath.Join(o.Roots.Sys, "devices", sd.SysDir, "mmcblk0p1")) },
			want:   []string{"mmcblk0 (holding / on mmcblk0p4) has no partition 1"}},
		{name: "no bootconfig device", mountinfo: sdRoot, disk: sd,
			change: func(o PiOptions) { os.Remove(filepath.Join(o.Roots.Dev, "mmcblk0p1")) },
			want:   []string{"mmcblk0p1 for boot control"}},
		{name: "bootconfig device of another disk", mountinfo: sdRoot, disk: sd,
			change: func(o PiOptions) {
				os.WriteFile(filepath.Join(o.Roots.Dev, "mmcblk0p1"), make([]byte, layout.BootConfigSize), 0o644)
			},
			want: []string{"mmcblk0p1 is not partition 1 of the boot disk", "first 4 KiB differ"}},
		{name: "disk without a GPT", mountinfo: sdRoot, disk: imagetest.PiSDCard(noGPT),
			want: []string{"mmcblk0 is not a disk with the Lekiwi A/B layout", "GPT"}},
		{name: "GPT of another layout", mountinfo: sdRoot, disk: imagetest.PiSDCard(twoParts), updateDisk: "mmcblk0",
			want: []string{"mmcblk0 is not a disk with the Lekiwi A/B layout", "2 partitions, not the 6"}},
		{name: "root on a partition of no slot", mountinfo: imagetest.MountTable("22 1 179:2 / / rw - ext4 /dev/mmcblk0p2 rw"), disk: sd,
			want: []string{"partition 2 of mmcblk0", "not an A/B disk"}},
		{name: "no link in sysfs", mountinfo: sdRoot, disk: sd,
			change: func(o PiOptions) { os.Remove(filepath.Join(o.Roots.Sys, "dev/block/179:4")) },
			want:   []string{"block device 179:4, which sysfs does not show", "set update_disk"}},
		{name: "nfs root", mountinfo: imagetest.MountTable("22 1 0:20 / / rw,relatime shared:1 - nfs 10.0.0.1:/srv/robots/r1 rw,vers=3"), disk: sd,
			want: []string{"/ is nfs from 10.0.0.1:/srv/robots/r1", "set update_disk"}},
		{name: "update_disk names no disk", mountinfo: sdRoot, disk: sd, updateDisk: "nvme0n1",
			want: []string{"nvme0n1 (update_disk)", "no such file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := piSystem(t, c.mountinfo, c.disk)
			if c.change != nil {
				c.change(o)
			}
			if c.updateDisk != "" {
				o.Disk = filepath.Join(o.Roots.Dev, c.updateDisk)
			}
			u, _, err := OpenPi(o)
			if u != nil {
				t.Fatal("OpenPi gave an updater")
			}
			wantError(t, err, append([]string{"updates: "}, c.want...)...)
		})
	}
}
