package vmlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// DeviceTree is what a Pi's firmware adds to the device tree it hands the
// kernel and the lab adds to QEMU's: the board's identity as the agent's
// probe reads it under /proc/device-tree.
type DeviceTree struct {
	// Model is /model, e.g. "Raspberry Pi 5 Model B Rev 1.0".
	Model string
	// Serial is /serial-number: the board serial as 16 hex digits (a
	// Pi's /proc/cpuinfo form; the low 8 are its TFTP prefix).
	Serial string
	// Revision, when not 0, is /system/linux,revision: the board revision
	// code (e.g. 0xd04170 for a Pi 5 8GB).
	Revision uint32
	// Bootloader are u32 properties under /chosen/bootloader, as the Pi
	// bootloader sets them: "partition", "tryboot", "boot-mode"...
	Bootloader map[string]uint32
}

var (
	// dtPrintable keeps strings to what a dts literal holds without
	// escapes beyond \" and \\.
	dtPrintable = regexp.MustCompile(`^[\x20-\x7e]*$`)
	dtPropName  = regexp.MustCompile(`^[a-z0-9,._+-]{1,31}$`)
)

// overlay renders the properties as a dts fragment for the root node; dtc
// merges a node defined twice, the later properties winning, so appending
// it to QEMU's decompiled tree adds or replaces exactly these.
func (d DeviceTree) overlay() (string, error) {
	quote := func(what, s string) (string, error) {
		if !dtPrintable.MatchString(s) {
			return "", fmt.Errorf("vmlab: device tree %s %q: only printable ASCII", what, s)
		}
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`, nil
	}
	var b strings.Builder
	b.WriteString("\n/ {\n")
	if d.Model != "" {
		q, err := quote("model", d.Model)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\tmodel = %s;\n", q)
	}
	if d.Serial != "" {
		q, err := quote("serial-number", d.Serial)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\tserial-number = %s;\n", q)
	}
	if d.Revision != 0 {
		fmt.Fprintf(&b, "\tsystem {\n\t\tlinux,revision = <0x%x>;\n\t};\n", d.Revision)
	}
	if len(d.Bootloader) > 0 {
		b.WriteString("\tchosen {\n\t\tbootloader {\n")
		names := make([]string, 0, len(d.Bootloader))
		for n := range d.Bootloader {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if !dtPropName.MatchString(n) {
				return "", fmt.Errorf("vmlab: /chosen/bootloader property name %q is not a device tree property name", n)
			}
			fmt.Fprintf(&b, "\t\t\t%s = <0x%x>;\n", n, d.Bootloader[n])
		}
		b.WriteString("\t\t};\n\t};\n")
	}
	b.WriteString("};\n")
	return b.String(), nil
}

// buildDTB writes to out QEMU's own device tree for machineArgs (dumped
// with -machine dumpdtb: memory, CPUs and the virt platform's devices
// depend on them) with d's properties added, compiled with dtc.
func buildDTB(ctx context.Context, qemu string, machineArgs []string, d DeviceTree, dir, out string) error {
	if _, err := exec.LookPath("dtc"); err != nil {
		return fmt.Errorf("vmlab: a Pi-like device tree needs dtc (apt-get install device-tree-compiler)")
	}
	overlay, err := d.overlay()
	if err != nil {
		return err
	}
	dumped := filepath.Join(dir, "qemu-virt.dtb")
	args := slices.Clone(machineArgs)
	for i, a := range args {
		if a == "-M" || a == "-machine" {
			args[i+1] += ",dumpdtb=" + dumped
		}
	}
	if b, err := exec.CommandContext(ctx, qemu, append(args, "-nographic", "-nic", "none")...).CombinedOutput(); err != nil {
		return fmt.Errorf("vmlab: dumping QEMU's device tree (%s %s): %w\n%s", qemu, strings.Join(args, " "), err, b)
	}
	dts, err := exec.CommandContext(ctx, "dtc", "-q", "-I", "dtb", "-O", "dts", dumped).Output()
	if err != nil {
		return fmt.Errorf("vmlab: decompiling QEMU's device tree %s: %w", dumped, err)
	}
	src := filepath.Join(dir, "pi.dts")
	if err := os.WriteFile(src, append(dts, overlay...), 0o644); err != nil {
		return err
	}
	if b, err := exec.CommandContext(ctx, "dtc", "-q", "-I", "dts", "-O", "dtb", "-o", out, src).CombinedOutput(); err != nil {
		return fmt.Errorf("vmlab: compiling the Pi-like device tree %s: %w\n%s", src, err, b)
	}
	return nil
}
