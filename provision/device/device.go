// Package device describes block devices a technician is about to flash
// and refuses the dangerous ones: a device (or any of its partitions) that
// is mounted, the disk holding the running system, and — unless forced —
// a non-removable disk or one larger than the bench's maximum card size.
// Everything is read from injectable roots (/sys, /proc/self/mountinfo)
// so the rules are tested on fake trees.
package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// Info is what the technician sees before confirming.
type Info struct {
	Path      string // /dev/sdb
	Name      string // sdb
	Model     string
	Serial    string
	Size      int64 // bytes
	Removable bool
	// ReadOnly is the kernel's view (sysfs "ro"): an SD card with its lock
	// switch on, or a write-protected drive.
	ReadOnly bool
	// Partitions are the kernel names of its partitions (sdb1, sdb2).
	Partitions []string
}

func (i Info) String() string {
	rem := "fixed"
	if i.Removable {
		rem = "removable"
	}
	if i.ReadOnly {
		rem += ", read-only"
	}
	return fmt.Sprintf("%s: %s, %.1f GB, serial %s, %s", i.Path, orUnknown(i.Model), float64(i.Size)/1e9, orUnknown(i.Serial), rem)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Roots are where the kernel's views are read from.
type Roots struct {
	Sys       string // default /sys
	MountInfo string // default /proc/self/mountinfo
	// Dev is where device nodes are (default /dev): Inspect resolves
	// symlinks there, Watch names devices there and opens empty card-reader
	// slots so the kernel looks for newly inserted media.
	Dev string
}

func (r Roots) withDefaults() Roots {
	if r.Sys == "" {
		r.Sys = "/sys"
	}
	if r.MountInfo == "" {
		r.MountInfo = "/proc/self/mountinfo"
	}
	if r.Dev == "" {
		r.Dev = "/dev"
	}
	return r
}

// Describe reads what sysfs says about the disk at devPath (/dev/sdX,
// /dev/mmcblkN, /dev/nvmeXnY). Partitions are refused: flash whole disks.
func Describe(devPath string, roots Roots) (Info, error) {
	roots = roots.withDefaults()
	name := filepath.Base(devPath)
	dir := filepath.Join(roots.Sys, "class", "block", name)
	if _, err := os.Stat(dir); err != nil {
		return Info{}, fmt.Errorf("%s is not a block device known to the kernel (%s missing): give a whole disk like /dev/sdb", devPath, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return Info{}, fmt.Errorf("%s is a partition: give the whole disk (the image holds its own partition table)", devPath)
	}
	info := Info{Path: devPath, Name: name}
	sectors, err := readInt(filepath.Join(dir, "size"))
	if err != nil {
		return Info{}, fmt.Errorf("size of %s: %w", devPath, err)
	}
	info.Size = sectors * 512 // sysfs counts 512-byte sectors whatever the device's
	info.Removable = readString(filepath.Join(dir, "removable")) == "1"
	info.ReadOnly = readString(filepath.Join(dir, "ro")) == "1"
	// SD cards behind USB readers report removable media; MMC slots do
	// not, but an mmcblk device with an SD card type is one.
	if t := readString(filepath.Join(dir, "device", "type")); t == "SD" {
		info.Removable = true
	}
	info.Model = firstOf(readString(filepath.Join(dir, "device", "model")), readString(filepath.Join(dir, "device", "name")))
	info.Serial = firstOf(readString(filepath.Join(dir, "device", "serial")), readString(filepath.Join(dir, "device", "vpd_pg80")))
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name) {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
				info.Partitions = append(info.Partitions, e.Name())
			}
		}
	}
	return info, nil
}

// Policy holds what may be overridden.
type Policy struct {
	Force   bool  // allow non-removable and oversized disks
	MaxSize int64 // largest disk accepted without Force; 0 = no limit
}

// ErrRefused marks a refusal (errors.Is).
var ErrRefused = errors.New("refused")

// Check refuses info when flashing it would be dangerous. Mounted devices
// and the system disk are refused even with Force.
func Check(info Info, p Policy, roots Roots) error {
	roots = roots.withDefaults()
	mounts, err := readMounts(roots.MountInfo)
	if err != nil {
		return err
	}
	names := append([]string{info.Name}, info.Partitions...)
	for _, m := range mounts {
		for _, n := range names {
			if m.Major == 0 {
				continue
			}
			if devNumber(roots.Sys, n) == fmt.Sprintf("%d:%d", m.Major, m.Minor) {
				if m.Mountpoint == "/" || m.Mountpoint == "/boot" || m.Mountpoint == "/boot/firmware" || m.Mountpoint == "/usr" {
					return fmt.Errorf("%s holds the running system (%s is mounted on %s): %w", info.Path, n, m.Mountpoint, ErrRefused)
				}
				return fmt.Errorf("%s is in use: %s is mounted on %s; unmount it first (umount %s): %w", info.Path, n, m.Mountpoint, m.Mountpoint, ErrRefused)
			}
		}
	}
	if info.ReadOnly {
		return fmt.Errorf("%s is write-protected: slide the lock switch on the SD card (or its adapter) away from LOCK and reinsert it: %w", info.Path, ErrRefused)
	}
	if !p.Force && !info.Removable {
		return fmt.Errorf("%s is not removable (%s): it looks like an internal disk; pass --force if it really is a card or drive to flash: %w", info.Path, info, ErrRefused)
	}
	if !p.Force && p.MaxSize > 0 && info.Size > p.MaxSize {
		return fmt.Errorf("%s is %.1f GB, larger than --max-size %.1f GB: not an SD card? pass --force or raise --max-size: %w", info.Path, float64(info.Size)/1e9, float64(p.MaxSize)/1e9, ErrRefused)
	}
	return nil
}

// Inspect is what `provision flash` runs on each target before asking for
// confirmation: it resolves a symlink such as /dev/disk/by-id/usb-… to the
// kernel's device, describes it, and applies Check. The Info is returned with
// a refusal too, so that it can be shown.
func Inspect(devPath string, roots Roots, p Policy) (Info, error) {
	if real, err := filepath.EvalSymlinks(devPath); err == nil {
		devPath = real
	}
	info, err := Describe(devPath, roots)
	if err != nil {
		return Info{}, err
	}
	return info, Check(info, p, roots)
}

// readMounts reads the mount table (/proc/self/mountinfo's format).
func readMounts(path string) ([]*mountinfo.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read the mount table %s: %w", path, err)
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return nil, fmt.Errorf("read the mount table %s: %w", path, err)
	}
	return mounts, nil
}

func devNumber(sys, name string) string {
	return readString(filepath.Join(sys, "class", "block", name, "dev"))
}

func readString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readInt(p string) (int64, error) {
	s := readString(p)
	if s == "" {
		return 0, fmt.Errorf("%s missing or empty", p)
	}
	return strconv.ParseInt(s, 10, 64)
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
