// Package layout is the A/B disk plan of a Lekiwi image: six GPT
// partitions, every start and size 8 MiB aligned — bootconfig (FAT16,
// autoboot.txt), boot_a and boot_b (FAT32), system_a and
// system_b (ext4), persistent (ext4). It sizes the plan, derives the disk and
// partition GUIDs deterministically from a seed, renders autoboot.txt and
// cmdline.txt, writes the GPT (protective MBR, primary and backup) and reads
// it back from an image.
//
// The GPT is written here rather than with go-diskfs so the bytes depend on
// the plan alone and the same parser serves inspect and customize.
package layout

import (
	"crypto/sha256"
	"fmt"
	"strings"
)

// Align is the alignment of every partition start and size.
const Align = 8 << 20

// Partition numbers (1-based, as in /dev/mmcblk0pN) of the plan.
const (
	BootConfig = 1
	BootA      = 2
	BootB      = 3
	SystemA    = 4
	SystemB    = 5
	Persistent = 6
)

// Type GUIDs.
var (
	TypeBasicData  = MustParseGUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7") // FAT partitions the Pi firmware boots from
	TypeLinuxFS    = MustParseGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
	partitionNames = [...]string{"", "bootconfig", "boot_a", "boot_b", "system_a", "system_b", "persistent"}
)

// BootConfigSize is the bootconfig partition's size: below FAT32's minimum
// cluster count, so it is FAT16.
const BootConfigSize = 32 << 20

// Sizes are the requested partition sizes in bytes; zero picks a default
// (SystemSize has none: the caller sizes it for its content).
type Sizes struct {
	Boot       int64 // each boot slot, default 256 MiB
	System     int64 // each system slot
	Persistent int64 // default 64 MiB
	// Image, if set, is the whole image size; persistent grows to fill it.
	Image int64
}

// Partition is one GPT entry.
type Partition struct {
	Number int
	Name   string
	Type   GUID
	GUID   GUID
	Start  int64 // bytes
	Size   int64 // bytes
}

// End is the first byte after the partition.
func (p Partition) End() int64 { return p.Start + p.Size }

// Plan is the whole disk.
type Plan struct {
	DiskGUID   GUID
	Size       int64       // image size in bytes
	Partitions []Partition // in number order, Partitions[i].Number == i+1
}

// Part returns partition n (1-based).
func (p *Plan) Part(n int) Partition { return p.Partitions[n-1] }

// AlignUp rounds n up to Align.
func AlignUp(n int64) int64 { return (n + Align - 1) / Align * Align }

// New lays out the six partitions. seed makes the GUIDs: derive it from
// the build's inputs so two builds of the same inputs match.
func New(s Sizes, seed []byte) (*Plan, error) {
	if s.Boot == 0 {
		s.Boot = 256 << 20
	}
	if s.Persistent == 0 {
		s.Persistent = 64 << 20
	}
	for _, c := range []struct {
		name string
		v    int64
		min  int64
	}{{"boot", s.Boot, 64 << 20}, {"system", s.System, 64 << 20}, {"persistent", s.Persistent, 16 << 20}} {
		if c.v < c.min {
			return nil, fmt.Errorf("%s partition size %d MiB is below the %d MiB minimum", c.name, c.v>>20, c.min>>20)
		}
		if c.v%Align != 0 {
			return nil, fmt.Errorf("%s partition size %d bytes is not a multiple of 8 MiB", c.name, c.v)
		}
	}
	sizes := []int64{BootConfigSize, s.Boot, s.Boot, s.System, s.System, s.Persistent}
	p := &Plan{DiskGUID: DeriveGUID(seed, "disk")}
	start := int64(Align)
	for i, sz := range sizes {
		n := i + 1
		typ := TypeLinuxFS
		if n <= BootB {
			typ = TypeBasicData
		}
		p.Partitions = append(p.Partitions, Partition{Number: n, Name: partitionNames[n], Type: typ, GUID: DeriveGUID(seed, partitionNames[n]), Start: start, Size: sz})
		start += sz
	}
	// The backup GPT lives in the last 33 sectors: keep one aligned chunk.
	p.Size = start + Align
	if s.Image != 0 {
		if s.Image%Align != 0 {
			return nil, fmt.Errorf("image size %d bytes is not a multiple of 8 MiB", s.Image)
		}
		if s.Image < p.Size {
			return nil, fmt.Errorf("image size %d MiB is smaller than the %d MiB the partitions need", s.Image>>20, p.Size>>20)
		}
		p.Partitions[Persistent-1].Size += s.Image - p.Size
		p.Size = s.Image
	}
	return p, nil
}

// DeriveGUID makes a version-4-shaped GUID from seed and a purpose.
func DeriveGUID(seed []byte, purpose string) GUID {
	h := sha256.New()
	h.Write([]byte("lekiwi-image-guid\x00"))
	h.Write([]byte(purpose))
	h.Write([]byte{0})
	h.Write(seed)
	var g GUID
	copy(g[:], h.Sum(nil))
	g[6] = g[6]&0x0F | 0x40
	g[8] = g[8]&0x3F | 0x80
	return g
}

// DeriveID makes a 4-byte identifier (FAT volume id) from seed and purpose.
func DeriveID(seed []byte, purpose string) uint32 {
	g := DeriveGUID(seed, "id:"+purpose)
	return uint32(g[0]) | uint32(g[1])<<8 | uint32(g[2])<<16 | uint32(g[3])<<24
}

// AutobootSize is the padded length of autoboot.txt: one sector, so the
// agent commits a slot with a single in-place sector write.
const AutobootSize = 512

// Autoboot renders autoboot.txt booting slot "a" or "b" normally and the
// other slot on a try boot, padded to AutobootSize.
func Autoboot(slot string) ([]byte, error) {
	normal, try := BootA, BootB
	switch slot {
	case "a":
	case "b":
		normal, try = BootB, BootA
	default:
		return nil, fmt.Errorf("slot %q: want a or b", slot)
	}
	return Pad([]byte(fmt.Sprintf("[all]\ntryboot_a_b=1\nboot_partition=%d\n[tryboot]\nboot_partition=%d\n", normal, try)), AutobootSize)
}

// ParseAutoboot returns the boot_partition of [all] and of [tryboot].
func ParseAutoboot(b []byte) (normal, try int, err error) {
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case strings.HasPrefix(line, "boot_partition="):
			var n int
			if _, err := fmt.Sscanf(line, "boot_partition=%d", &n); err != nil {
				return 0, 0, fmt.Errorf("autoboot.txt: bad line %q", line)
			}
			if section == "tryboot" {
				try = n
			} else {
				normal = n
			}
		}
	}
	if normal == 0 {
		return 0, 0, fmt.Errorf("autoboot.txt has no boot_partition under [all]")
	}
	return normal, try, nil
}

// Pad extends text to exactly size bytes with a comment line and blank
// lines (harmless to config.txt-style and YAML readers), so a file can later
// be rewritten in place without changing its length.
func Pad(text []byte, size int) ([]byte, error) {
	const note = "# padded to a fixed length so it can be rewritten in place\n"
	if len(text) > 0 && text[len(text)-1] != '\n' {
		text = append(append([]byte(nil), text...), '\n')
	}
	if len(text) > size {
		return nil, fmt.Errorf("content is %d bytes, more than the %d reserved for it", len(text), size)
	}
	out := make([]byte, 0, size)
	out = append(out, text...)
	if size-len(out) >= len(note) {
		out = append(out, note...)
	}
	for len(out) < size {
		out = append(out, '\n')
	}
	return out, nil
}

// Cmdline turns the base's cmdline.txt into the slot's: root= points at
// rootPARTUUID, Raspberry Pi OS's first-boot resizing (init=…init_resize,
// firstboot) is dropped because it would repartition the disk, the other
// arguments are kept in order, and extra (the cloud-init datasource) is
// appended.
func Cmdline(base, rootPARTUUID string, extra ...string) string {
	var out []string
	for _, a := range strings.Fields(base) {
		switch {
		case strings.HasPrefix(a, "root="), strings.HasPrefix(a, "rootfstype="):
			continue
		case strings.HasPrefix(a, "init=") && (strings.Contains(a, "init_resize") || strings.Contains(a, "firstboot")):
			continue
		case strings.Contains(a, "firstboot"), strings.HasPrefix(a, "ds="):
			continue
		}
		out = append(out, a)
	}
	out = append(out, "root=PARTUUID="+rootPARTUUID, "rootfstype=ext4")
	if !contains(out, "rootwait") {
		out = append(out, "rootwait")
	}
	out = append(out, extra...)
	return strings.Join(out, " ") + "\n"
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
