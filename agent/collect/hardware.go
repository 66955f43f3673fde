package collect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
)

// isVirtualMachine reports whether a device tree's model or compatible
// string names a machine that is not a board. QEMU's arm "virt" machine
// (and kvmtool, crosvm) set both the root node's model and compatible to
// "linux,dummy-virt": shown as is, the fleet view would read an emulator's
// identifier as a board's name.
func isVirtualMachine(s string) bool { return s == "linux,dummy-virt" }

// ReadHardware identifies the board from the trees at r (Proc and Sys;
// empty roots mean /proc and /sys):
//
//   - the device tree, /proc/device-tree or else its home
//     /sys/firmware/devicetree/base: model, serial-number,
//     system/linux,revision (4 bytes, big-endian), compatible;
//   - /proc/cpuinfo's Serial, Revision and Model lines (a Raspberry Pi
//     kernel prints them).
//
// The model is the device tree's model ("Raspberry Pi 5 Model B Rev 1.0"),
// else cpuinfo's, else the name the revision code decodes to, else — a tree
// with no model at all — the first compatible string, labelled as such. A
// virtual machine's identifier is labelled too ("virtual machine
// (linux,dummy-virt)"). The revision code is decoded (DecodeRevision) for
// the memory size and maker. A field nobody provides stays empty: a laptop
// running the agent in a simulator has none of this. Only a file that
// exists and cannot be read is an error.
func ReadHardware(r Roots) (protocol.Hardware, error) {
	r = r.WithDefaults()
	var hw protocol.Hardware
	dt, err := deviceTree(r)
	if err != nil {
		return hw, err
	}
	prop := func(name string) ([]byte, error) {
		if dt == "" {
			return nil, nil
		}
		return readOptional(filepath.Join(dt, name))
	}

	serial, err := prop("serial-number")
	if err != nil {
		return hw, err
	}
	hw.Serial = dtString(serial)
	model, err := prop("model")
	if err != nil {
		return hw, err
	}
	hw.Model = dtString(model)

	cpuinfo, err := readOptional(filepath.Join(r.Proc, "cpuinfo"))
	if err != nil {
		return hw, err
	}
	ci := ParseCPUInfo(cpuinfo)
	if hw.Serial == "" {
		hw.Serial = ci.Serial
	}
	if hw.Model == "" {
		hw.Model = ci.Model
	}
	hw.Revision = ci.Revision
	if hw.Revision == "" {
		rev, err := prop(filepath.Join("system", "linux,revision"))
		if err != nil {
			return hw, err
		}
		if len(rev) == 4 {
			hw.Revision = fmt.Sprintf("%x", binary.BigEndian.Uint32(rev))
		}
	}
	hw = DecodeRevision(hw)
	if hw.Model == "" {
		compatible, err := prop("compatible")
		if err != nil {
			return hw, err
		}
		if first := dtString(compatible); first != "" && !isVirtualMachine(first) {
			hw.Model = first + " (device-tree compatible; the tree names no model)"
		} else {
			hw.Model = first
		}
	}
	if isVirtualMachine(hw.Model) {
		hw.Model = "virtual machine (" + hw.Model + ")"
	}
	return hw, nil
}

// DecodeRevision fills what a Raspberry Pi revision code says about the
// board — memory size, maker, and the model name when none is known — into
// hw. A code that does not parse changes nothing; a field the decoder
// does not know (a board newer than its table) is left empty. The code
// itself is still reported, and an unknown board is no reason to fail.
func DecodeRevision(hw protocol.Hardware) protocol.Hardware {
	if hw.Revision == "" {
		return hw
	}
	rev, err := raspberrypi.ParseRevision(hw.Revision)
	if err != nil {
		return hw
	}
	b, _ := rev.Decode() // on ErrUnknownRevision b still holds every known field
	hw.MemoryMB, hw.Manufacturer = b.MemoryMB, b.Manufacturer
	if hw.Model == "" && b.Model != "" {
		hw.Model = "Raspberry Pi " + b.Model
	}
	return hw
}

// deviceTree is the device tree's root directory: /proc/device-tree (a
// link into sysfs on every kernel that has one), else
// /sys/firmware/devicetree/base for a /proc without the link (some
// containers), "" on a machine without a device tree (x86, ACPI).
func deviceTree(r Roots) (string, error) {
	for _, d := range []string{filepath.Join(r.Proc, "device-tree"), filepath.Join(r.Sys, "firmware", "devicetree", "base")} {
		st, err := os.Stat(d)
		switch {
		case err == nil && st.IsDir():
			return d, nil
		case err == nil, errors.Is(err, fs.ErrNotExist):
		default:
			return "", fmt.Errorf("device tree: %w", err)
		}
	}
	return "", nil
}

// dtString turns a device-tree string property into text: the first of
// its NUL-terminated strings (compatible holds several).
func dtString(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\x00")
	return strings.TrimSpace(s)
}
