package imagetest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lekiwi/heartbeat/image/layout"
)

// KernelDisk is one disk as a Linux kernel shows it in sysfs and /dev.
type KernelDisk struct {
	Name string // the kernel's name: mmcblk0, nvme0n1, sda
	// SysDir is the disk's directory under /sys/devices, as the kernel
	// places it below the device it hangs off (see PiSDCard, PiNVMe, PiUSB).
	SysDir       string
	Major, Minor int // the disk's device number; partition n is Major:Minor+n
	// Image is the disk image /dev/<Name> is (a hard link: a device node
	// is no symlink, so the image must be on the tree's filesystem); "":
	// an empty file.
	// Its GPT gives the partitions; without one the disk shows Partitions
	// partitions with empty devices.
	Image      string
	Partitions int
}

// PiSDCard is the SD card (or eMMC) of a Raspberry Pi 5.
func PiSDCard(image string) KernelDisk {
	return KernelDisk{Name: "mmcblk0", SysDir: "platform/axi/1000fff000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0", Major: 179, Image: image, Partitions: 6}
}

// PiNVMe is an NVMe disk on a Raspberry Pi 5's PCIe connector (a class
// device under its controller: no block/ directory between them).
func PiNVMe(image string) KernelDisk {
	return KernelDisk{Name: "nvme0n1", SysDir: "platform/axi/1000110000.pcie/pci0001:00/0001:00:00.0/0001:01:00.0/nvme/nvme0/nvme0n1", Major: 259, Image: image, Partitions: 6}
}

// PiUSB is a USB disk (or card reader) on a Raspberry Pi 5, behind its
// SCSI device.
func PiUSB(image string) KernelDisk {
	return KernelDisk{Name: "sda", SysDir: "platform/axi/1000120000.pcie/1f00200000.usb/xhci-hcd.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda", Major: 8, Image: image, Partitions: 6}
}

// PartitionName is the kernel's name of partition n of disk: a "p" after
// a name ending in a digit (mmcblk0p1, nvme0n1p1), none otherwise (sda1).
func (d KernelDisk) PartitionName(n int) string {
	if c := d.Name[len(d.Name)-1]; c >= '0' && c <= '9' {
		return d.Name + "p" + strconv.Itoa(n)
	}
	return d.Name + strconv.Itoa(n)
}

// WriteKernelTree writes under root the kernel's view of disks as a
// Linux system shows it, for the tests of code that finds disks:
//
//   - sys/devices/<SysDir> with the disk's dev (MAJ:MIN) and size, a
//     directory per partition (partition, dev, start, size), and what a
//     real disk directory holds beside them (queue/, holders/, power/, a
//     device link to its parent);
//   - sys/class/block/<name> and sys/dev/block/MAJ:MIN, links to those;
//   - dev/<disk>, the image, and dev/<partition>: for partition
//     1 (the bootconfig partition, which the agent opens by itself) a copy
//     of its bytes, for the others an empty file;
//   - proc/self/mountinfo, the mount table (see MountTable).
func WriteKernelTree(root, mountinfo string, disks ...KernelDisk) error {
	for _, d := range disks {
		if err := writeKernelDisk(root, d); err != nil {
			return fmt.Errorf("kernel view of %s: %w", d.Name, err)
		}
	}
	self := filepath.Join(root, "proc/self")
	if err := os.MkdirAll(self, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(self, "mountinfo"), []byte(mountinfo), 0o644)
}

// MountTable is /proc/self/mountinfo of a Raspberry Pi OS system whose /
// is rootLine ("22 1 179:4 / / rw,noatime shared:1 - ext4 /dev/root rw"),
// followed by what systemd mounts, the persistent partition, a USB stick
// whose mount point has a space, and extra.
func MountTable(rootLine string, extra ...string) string {
	return strings.Join(append([]string{
		rootLine,
		"23 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=3942656k,nr_inodes=985664,mode=755",
		"24 23 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000",
		"25 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
		"26 22 0:22 / /proc rw,relatime shared:12 - proc proc rw",
		"27 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=805392k,mode=755",
		"28 22 179:6 / /var/lib/lekiwi rw,noatime shared:14 - ext4 /dev/mmcblk0p6 rw",
		`29 22 8:1 / /media/my\040stick rw,relatime shared:15 - vfat /dev/sda1 rw`,
	}, extra...), "\n") + "\n"
}

func writeKernelDisk(root string, d KernelDisk) error {
	sys, dev := filepath.Join(root, "sys"), filepath.Join(root, "dev")
	var parts []layout.Partition
	var size int64
	if d.Image != "" {
		f, err := os.Open(d.Image)
		if err != nil {
			return err
		}
		defer f.Close()
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
		plan, err := layout.ReadGPT(f, size)
		if err != nil && !errors.Is(err, layout.ErrNotGPT) {
			return err
		}
		if plan != nil {
			parts = plan.Partitions
		}
	}
	if parts == nil {
		for n := 1; n <= d.Partitions; n++ {
			parts = append(parts, layout.Partition{Number: n})
		}
	}
	diskDir := filepath.Join(sys, "devices", d.SysDir)
	files := map[string]string{
		filepath.Join(diskDir, "dev"):  fmt.Sprintf("%d:%d", d.Major, d.Minor),
		filepath.Join(diskDir, "size"): fmt.Sprint(size / 512),
	}
	links := map[string]string{
		filepath.Join(sys, "class/block", d.Name):                               filepath.Join(diskDir),
		filepath.Join(sys, "dev/block", fmt.Sprintf("%d:%d", d.Major, d.Minor)): filepath.Join(diskDir),
		filepath.Join(diskDir, "device"):                                        parentDevice(diskDir),
	}
	for _, sub := range []string{"queue", "holders", "power"} {
		if err := os.MkdirAll(filepath.Join(diskDir, sub), 0o755); err != nil {
			return err
		}
	}
	for _, p := range parts {
		name := d.PartitionName(p.Number)
		num := fmt.Sprintf("%d:%d", d.Major, d.Minor+p.Number)
		pdir := filepath.Join(diskDir, name)
		files[filepath.Join(pdir, "partition")] = strconv.Itoa(p.Number)
		files[filepath.Join(pdir, "dev")] = num
		files[filepath.Join(pdir, "start")] = fmt.Sprint(p.Start / 512)
		files[filepath.Join(pdir, "size")] = fmt.Sprint(p.Size / 512)
		links[filepath.Join(sys, "class/block", name)] = pdir
		links[filepath.Join(sys, "dev/block", num)] = pdir
		node := filepath.Join(dev, name)
		if err := os.MkdirAll(dev, 0o755); err != nil {
			return err
		}
		if p.Number == layout.BootConfig && d.Image != "" {
			if err := copyRange(node, d.Image, p.Start, p.Size); err != nil {
				return err
			}
		} else if err := os.WriteFile(node, nil, 0o644); err != nil {
			return err
		}
	}
	for p, content := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
			return err
		}
	}
	// sysfs links are relative (../../devices/…), so the tree can move.
	for link, target := range links {
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		rel, err := filepath.Rel(filepath.Dir(link), target)
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, link); err != nil {
			return err
		}
	}
	node := filepath.Join(dev, d.Name)
	if d.Image == "" {
		return os.WriteFile(node, nil, 0o644)
	}
	return os.Link(d.Image, node)
}

// parentDevice is the device a disk hangs off: the directory above it, or
// above the "block" directory the kernel puts between a disk and a parent
// of no device class (an MMC card, a SCSI device).
func parentDevice(diskDir string) string {
	p := filepath.Dir(diskDir)
	if filepath.Base(p) == "block" {
		return filepath.Dir(p)
	}
	return p
}

// copyRange writes n bytes of src from off into a new file dst.
func copyRange(dst, src string, off, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.NewSectionReader(in, off, n)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
