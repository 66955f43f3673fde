// Package firmware models what the Raspberry Pi 4/5 boot firmware does with
// a Lekiwi A/B disk, so tests can boot a disk image after every step (and
// every power cut) of an update and see which slot the real Pi would run:
//
//   - The tryboot flag is one-shot: set by `reboot "0 tryboot"`, cleared by
//     the firmware before it loads anything, lost on power loss. Any reset
//     after that — watchdog, crash, power cut — boots the default.
//   - autoboot.txt on partition 1 (FAT, at most 512 bytes, config.txt
//     syntax with [all], [tryboot] and [none] sections) selects the boot
//     partition: [all] boot_partition normally, the [tryboot] value on a
//     trial when tryboot_a_b=1 (without it the firmware would look for
//     tryboot.txt in the selected partition instead).
//   - The selected boot partition must be a readable FAT holding
//     cmdline.txt (and whatever Options.Required lists) whose
//     root=PARTUUID= names the slot's own system partition, which must
//     carry an ext4 superblock. A trial that fails falls back to the
//     default (the flag is already gone); a default that fails is a Pi
//     that does not boot.
//   - A hardware watchdog, once the booted system enables it, resets a
//     system that stops kicking it.
//
// The model is stricter than the firmware where strictness finds bugs: it
// refuses autoboot.txt lines it does not understand instead of ignoring
// them.
package firmware

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
)

// ErrNoBoot means the Pi would not boot the disk at all.
var ErrNoBoot = errors.New("the Pi does not boot")

// MaxAutobootSize is the firmware's limit for autoboot.txt.
const MaxAutobootSize = 512

// Boot is the firmware's choice.
type Boot struct {
	Slot      bootctl.Slot
	Partition int  // boot partition loaded
	Root      int  // system partition cmdline.txt names
	Trial     bool // booted on the tryboot flag
	// Reason says why this slot: "default" or "tryboot", plus any failed
	// attempt that led here.
	Reason string
	// ID is the kernel's boot id for this power-on or reset (what
	// /proc/sys/kernel/random/boot_id reads): new at every Pi.Boot.
	ID string
}

// Autoboot is the firmware's reading of autoboot.txt for one boot mode.
type Autoboot struct {
	BootPartition int
	TrybootAB     bool
}

// ParseAutoboot reads autoboot.txt as the firmware would in the given mode
// (trial or not): section filters decide which lines apply, later lines
// override earlier ones.
func ParseAutoboot(b []byte, trial bool) (Autoboot, error) {
	var a Autoboot
	if len(b) > MaxAutobootSize {
		return a, fmt.Errorf("autoboot.txt is %d bytes, the firmware reads at most %d", len(b), MaxAutobootSize)
	}
	active := true
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		for _, c := range []byte(line) {
			if c < 0x20 && c != '\t' || c >= 0x7f {
				return a, fmt.Errorf("autoboot.txt line %d holds byte %#x (a half-written file?)", i+1, c)
			}
		}
		switch {
		case line == "" || line[0] == '#':
			continue
		case line[0] == '[':
			switch line {
			case "[all]":
				active = true
			case "[tryboot]":
				active = trial
			case "[none]":
				active = false
			default:
				return a, fmt.Errorf("autoboot.txt line %d: filter %s is not modelled", i+1, line)
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return a, fmt.Errorf("autoboot.txt line %d: %q is not key=value", i+1, line)
		}
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err != nil || n < 0 || n > 127 {
			return a, fmt.Errorf("autoboot.txt line %d: %q is not a small number", i+1, line)
		}
		if !active {
			continue
		}
		switch strings.TrimSpace(key) {
		case "boot_partition":
			a.BootPartition = n
		case "tryboot_a_b":
			a.TrybootAB = n == 1
		default:
			return a, fmt.Errorf("autoboot.txt line %d: key %q is not modelled", i+1, key)
		}
	}
	if a.BootPartition == 0 {
		return a, errors.New("autoboot.txt selects no boot_partition")
	}
	return a, nil
}

// Options tune the model.
type Options struct {
	// Required are files every boot partition must hold besides
	// cmdline.txt (a real base has its kernel here, e.g. kernel_2712.img).
	Required []string
}

// Select is the firmware's decision for one power-on or reset, given
// whether the tryboot flag was set.
func Select(disk io.ReaderAt, size int64, tryboot bool, o Options) (Boot, error) {
	plan, err := layout.ReadGPT(disk, size)
	if err != nil {
		return Boot{}, fmt.Errorf("%w: partition table: %v", ErrNoBoot, err)
	}
	if len(plan.Partitions) < layout.BootConfig {
		return Boot{}, fmt.Errorf("%w: no partition 1", ErrNoBoot)
	}
	bc := plan.Part(layout.BootConfig)
	fsys, err := fat.Open(io.NewSectionReader(disk, bc.Start, bc.Size), bc.Size)
	if err != nil {
		return Boot{}, fmt.Errorf("%w: partition 1: %v", ErrNoBoot, err)
	}
	raw, err := fsys.ReadFile("autoboot.txt")
	if err != nil {
		return Boot{}, fmt.Errorf("%w: partition 1 has no readable autoboot.txt (%v), and holds no kernel", ErrNoBoot, err)
	}
	var failed string
	if tryboot {
		a, err := ParseAutoboot(raw, true)
		if err == nil {
			var b Boot
			b, err = bootSlot(disk, plan, a.BootPartition, !a.TrybootAB, o)
			if err == nil {
				b.Trial, b.Reason = true, "tryboot"
				return b, nil
			}
		}
		// The flag is already cleared: whatever resets the Pi now boots
		// the default.
		failed = fmt.Sprintf("tryboot failed (%v), reset boots the default", err)
	}
	a, err := ParseAutoboot(raw, false)
	if err != nil {
		return Boot{}, fmt.Errorf("%w: %v", ErrNoBoot, err)
	}
	b, err := bootSlot(disk, plan, a.BootPartition, false, o)
	if err != nil {
		return Boot{}, fmt.Errorf("%w: default boot partition %d: %v", ErrNoBoot, a.BootPartition, err)
	}
	b.Reason = "default"
	if failed != "" {
		b.Reason += " after " + failed
	}
	return b, nil
}

// bootSlot checks that boot partition n can start its system.
func bootSlot(disk io.ReaderAt, plan *layout.Plan, n int, needTrybootTxt bool, o Options) (Boot, error) {
	slot, err := bootctl.SlotOfBootPartition(n)
	if err != nil {
		return Boot{}, err
	}
	if n > len(plan.Partitions) {
		return Boot{}, fmt.Errorf("the disk has no partition %d", n)
	}
	bp := plan.Part(n)
	fsys, err := fat.Open(io.NewSectionReader(disk, bp.Start, bp.Size), bp.Size)
	if err != nil {
		return Boot{}, fmt.Errorf("boot partition %d: %w", n, err)
	}
	required := append([]string{"cmdline.txt"}, o.Required...)
	if needTrybootTxt {
		required = append(required, "tryboot.txt")
	}
	files := map[string][]byte{}
	for _, name := range required {
		b, err := fsys.ReadFile(name)
		if err != nil {
			return Boot{}, fmt.Errorf("boot partition %d: %w", n, err)
		}
		files[name] = b
	}
	var root string
	for _, arg := range strings.Fields(string(files["cmdline.txt"])) {
		if v, ok := strings.CutPrefix(arg, "root=PARTUUID="); ok {
			root = strings.ToLower(v)
		}
	}
	if root == "" {
		return Boot{}, fmt.Errorf("boot partition %d: cmdline.txt has no root=PARTUUID=", n)
	}
	sys := slot.SystemPartition()
	if sys > len(plan.Partitions) || plan.Part(sys).GUID.String() != root {
		return Boot{}, fmt.Errorf("boot partition %d: cmdline.txt root=PARTUUID=%s is not the slot's system partition %d", n, root, sys)
	}
	sp := plan.Part(sys)
	ok, err := ext4.HasSuperblock(io.NewSectionReader(disk, sp.Start, sp.Size))
	if err != nil {
		return Boot{}, fmt.Errorf("system partition %d: %w", sys, err)
	}
	if !ok {
		return Boot{}, fmt.Errorf("system partition %d has no ext4 superblock", sys)
	}
	return Boot{Slot: slot, Partition: n, Root: sys}, nil
}
