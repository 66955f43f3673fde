package rpi

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/image/layout"
)

// AutobootPath is autoboot.txt's path on the bootconfig partition.
const AutobootPath = "autoboot.txt"

// Autoboot is what the controller reads from autoboot.txt.
type Autoboot struct {
	TrybootAB bool // [all] tryboot_a_b=1: a trial switches partitions, not files
	Default   int  // [all] boot_partition
	Trial     int  // [tryboot] boot_partition
}

// ParseAutoboot reads autoboot.txt the way this package writes it:
// config.txt syntax, one key per line, sections [all] and [tryboot].
// Anything it cannot place (other sections, repeated or malformed keys,
// control bytes) is an error rather than a guess, because the controller
// must never rewrite a file it does not understand.
func ParseAutoboot(b []byte) (Autoboot, error) {
	var a Autoboot
	section := "all"
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if strings.IndexFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f || r == 0xfffd }) >= 0 {
			return a, fmt.Errorf("autoboot.txt line %d holds control or invalid bytes (a damaged file?)", i+1)
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "["):
			section = strings.TrimSuffix(strings.TrimPrefix(line, "["), "]")
			if section != "all" && section != "tryboot" {
				return a, fmt.Errorf("autoboot.txt line %d: section [%s] is not one this agent writes ([all], [tryboot])", i+1, section)
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return a, fmt.Errorf("autoboot.txt line %d: %q is not key=value", i+1, line)
		}
		id := section + "." + key
		if seen[id] {
			return a, fmt.Errorf("autoboot.txt line %d: %s repeated in [%s]", i+1, key, section)
		}
		seen[id] = true
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 127 {
			return a, fmt.Errorf("autoboot.txt line %d: %s=%q is not a small number", i+1, key, val)
		}
		switch id {
		case "all.tryboot_a_b":
			a.TrybootAB = n == 1
		case "all.boot_partition":
			a.Default = n
		case "tryboot.boot_partition":
			a.Trial = n
		default:
			return a, fmt.Errorf("autoboot.txt line %d: %s in [%s] is not a key this agent writes", i+1, key, section)
		}
	}
	if a.Default == 0 {
		return a, fmt.Errorf("autoboot.txt has no boot_partition in [all]")
	}
	return a, nil
}

// Slots maps the partitions to slots, refusing a file that cannot run A/B
// trials.
func (a Autoboot) Slots() (def, trial bootctl.Slot, err error) {
	if !a.TrybootAB {
		return "", "", fmt.Errorf("autoboot.txt lacks tryboot_a_b=1, so a trial would look for tryboot.txt instead of switching slots: rewrite the bootconfig partition from a current image")
	}
	if def, err = bootctl.SlotOfBootPartition(a.Default); err != nil {
		return "", "", fmt.Errorf("autoboot.txt [all] boot_partition: %w", err)
	}
	if trial, err = bootctl.SlotOfBootPartition(a.Trial); err != nil {
		return "", "", fmt.Errorf("autoboot.txt [tryboot] boot_partition: %w", err)
	}
	return def, trial, nil
}

// RenderAutoboot is the file that makes def the default and its other slot
// the trial, padded to layout.AutobootSize. The two possible files differ
// only in the two partition digits, so any mix of their bytes (a torn
// write) still names one slot as default — never a third state.
func RenderAutoboot(def bootctl.Slot) ([]byte, error) {
	return layout.Autoboot(string(def))
}
