package rpi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"

	"github.com/lekiwi/heartbeat/image/layout"
)

// Roots are the system directories FindBootDisk reads; empty fields mean
// /proc, /dev and /sys.
type Roots struct{ Proc, Dev, Sys string }

func (r Roots) withDefaults() Roots {
	if r.Proc == "" {
		r.Proc = "/proc"
	}
	if r.Dev == "" {
		r.Dev = "/dev"
	}
	if r.Sys == "" {
		r.Sys = "/sys"
	}
	return r
}

// BootDisk is the disk the running system booted from, as device paths.
type BootDisk struct {
	Disk       string // the whole disk: /dev/mmcblk0, /dev/nvme0n1, /dev/sda
	BootConfig string // its bootconfig partition (1): /dev/mmcblk0p1, /dev/nvme0n1p1, /dev/sda1
}

// setUpdateDisk is what to do when the boot disk cannot be found.
const setUpdateDisk = "set update_disk to the whole boot disk (like /dev/mmcblk0) if this robot runs from one"

// FindBootDisk finds the disk holding the root filesystem: the device
// number of / in the mount table (Proc/self/mountinfo), its sysfs entry
// (Sys/dev/block/MAJ:MIN, a partition: …/block/mmcblk0/mmcblk0p4), the
// disk that is the partition's parent, and that disk's partition 1.
//
// It reads the mount table, not root= in the kernel command line, because
// a fleet's disks share partition GUIDs by design: with a second card or
// USB stick of the same image plugged in, root=PARTUUID= (and udev's
// /dev/disk/by-partuuid link) may name either disk, while the mount table
// names the one in use. For the same reason it never looks a partition up
// by label. It needs no udev link and no rule for how the kernel names
// partitions (mmcblk0p1, nvme0n1p1, sda1): sysfs nests them in their disk.
// / must be system_a or system_b of the A/B layout.
func FindBootDisk(r Roots) (BootDisk, error) {
	r = r.withDefaults()
	mi := filepath.Join(r.Proc, "self/mountinfo")
	f, err := os.Open(mi)
	if err != nil {
		return BootDisk{}, fmt.Errorf("find the boot disk: read the mount table: %w", err)
	}
	mounts, err := mountinfo.GetMountsFromReader(f, func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != "/", false })
	f.Close()
	if err != nil {
		return BootDisk{}, fmt.Errorf("find the boot disk: %s: %w", mi, err)
	}
	if len(mounts) == 0 {
		return BootDisk{}, fmt.Errorf("find the boot disk: %s has no mount on /", mi)
	}
	root := mounts[len(mounts)-1] // a mount stacked on / hides the ones before it
	if root.Major == 0 {
		// Filesystems without a block device get anonymous device numbers
		// of major 0: NFS, overlay, tmpfs, the initramfs's rootfs.
		return BootDisk{}, fmt.Errorf("find the boot disk: / is %s from %s, not a partition of a disk: no boot disk to find; %s", root.FSType, root.Source, setUpdateDisk)
	}
	num := fmt.Sprintf("%d:%d", root.Major, root.Minor)
	sysRoot, err := filepath.EvalSymlinks(filepath.Join(r.Sys, "dev/block", num))
	if err != nil {
		return BootDisk{}, fmt.Errorf("find the boot disk: / (%s from %s) is on block device %s, which sysfs does not show (%w): is sysfs mounted on %s? %s", root.FSType, root.Source, num, err, r.Sys, setUpdateDisk)
	}
	rootName := filepath.Base(sysRoot)
	rootNumber, err := partitionNumber(sysRoot)
	if err != nil {
		return BootDisk{}, fmt.Errorf("find the boot disk: / is on %s (%s), which is not a partition of a disk (a whole disk, device-mapper, RAM disk?): %w; %s", rootName, num, err, setUpdateDisk)
	}
	diskDir := filepath.Dir(sysRoot)
	disk := filepath.Base(diskDir)
	if rootNumber != layout.SystemA && rootNumber != layout.SystemB {
		return BootDisk{}, fmt.Errorf("find the boot disk: / is on %s, partition %d of %s, but the Lekiwi A/B layout runs from partition %d or %d (system_a, system_b): %s is not an A/B disk", rootName, rootNumber, disk, layout.SystemA, layout.SystemB, disk)
	}
	entries, err := os.ReadDir(diskDir)
	if err != nil {
		return BootDisk{}, fmt.Errorf("find the boot disk: list the partitions of %s: %w", disk, err)
	}
	for _, e := range entries {
		// A disk's directory also holds queue/, holders/, power/ and links
		// such as device and bdi; only partitions have a partition file.
		if n, err := partitionNumber(filepath.Join(diskDir, e.Name())); err == nil && n == layout.BootConfig {
			return BootDisk{Disk: filepath.Join(r.Dev, disk), BootConfig: filepath.Join(r.Dev, e.Name())}, nil
		}
	}
	return BootDisk{}, fmt.Errorf("find the boot disk: %s (holding / on %s) has no partition %d, the bootconfig partition of the A/B layout", disk, rootName, layout.BootConfig)
}

// BootDiskAt is the boot disk the operator named (update_disk), for systems
// FindBootDisk cannot read it from. A link (/dev/disk/by-id/…) is followed;
// the bootconfig partition is named as the kernel names partitions (see
// PartitionDevice).
func BootDiskAt(disk string) (BootDisk, error) {
	real, err := filepath.EvalSymlinks(disk)
	if err != nil {
		return BootDisk{}, fmt.Errorf("boot disk %s (update_disk): %w", disk, err)
	}
	return BootDisk{Disk: real, BootConfig: PartitionDevice(real, layout.BootConfig)}, nil
}

// PartitionDevice is the device of partition n of disk as the kernel names
// it: a "p" between a disk name that ends in a digit and the number
// (mmcblk0p1, nvme0n1p1, loop0p1), none otherwise (sda1, vda1).
func PartitionDevice(disk string, n int) string {
	if disk != "" && disk[len(disk)-1] >= '0' && disk[len(disk)-1] <= '9' {
		return disk + "p" + strconv.Itoa(n)
	}
	return disk + strconv.Itoa(n)
}

// partitionNumber reads the partition file of a sysfs block device
// directory: an error for a whole disk.
func partitionNumber(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "partition"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%s has no partition number", filepath.Base(dir))
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: partition number %q: %w", filepath.Base(dir), b, err)
	}
	return n, nil
}
