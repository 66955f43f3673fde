package piboot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Source is where the firmware booted from.
type Source string

const (
	Network Source = "network"
	Disk    Source = "disk"
)

// Boot modes the Pi bootloader reports in /chosen/bootloader/boot-mode
// (its BOOT_ORDER codes).
const (
	BootModeNetwork = 2
	BootModeNVMe    = 6
)

// DefaultUART is the kernel name the lab gives serial0: the VM's PL011.
const DefaultUART = "ttyAMA0"

// Boot is what the firmware chose and loaded.
type Boot struct {
	Source Source
	// Partition is the boot partition (disk boots).
	Partition int
	// Tryboot is whether the tryboot flag was set for this boot.
	Tryboot bool
	// ConfigFile is the configuration read: "config.txt", or
	// "tryboot.txt" for a tryboot without tryboot_a_b.
	ConfigFile string
	// Config is what it said.
	Config Config
	// KernelName and InitramfsNames are the files as named on the boot
	// medium.
	KernelName     string
	InitramfsNames []string
	// Kernel and Initramfs are the loaded bytes, written to files in the
	// caller's directory (the initramfs files concatenated, as the
	// firmware places them back to back); Initramfs is "" without one.
	Kernel, Initramfs string
	// Cmdline is the kernel command line as the firmware passes it.
	Cmdline string
}

// Bootloader is the /chosen/bootloader properties a Pi's bootloader sets
// for this boot (vmlab.DeviceTree.Bootloader).
func (b Boot) Bootloader() map[string]uint32 {
	p := map[string]uint32{"partition": uint32(b.Partition), "tryboot": 0, "boot-mode": BootModeNVMe}
	if b.Tryboot {
		p["tryboot"] = 1
	}
	if b.Source == Network {
		p["boot-mode"] = BootModeNetwork
	}
	return p
}

// defaultKernels are the names the firmware tries, in turn, without
// kernel=: 64-bit is the default on both generations, and the Pi 5 prefers
// its 16K-page kernel.
func defaultKernels(generation int) []string {
	if generation == 5 {
		return []string{"kernel_2712.img", "kernel8.img"}
	}
	return []string{"kernel8.img"}
}

// autoInitramfs is the firmware's auto_initramfs naming: kernelX.img →
// initramfsX, kernel_2712.img → initramfs_2712; other kernel names get
// none.
func autoInitramfs(kernel string) (string, bool) {
	base, ok := strings.CutPrefix(kernel, "kernel")
	if !ok {
		return "", false
	}
	base, ok = strings.CutSuffix(base, ".img")
	if !ok {
		return "", false
	}
	return "initramfs" + base, true
}

// kernelCmdline turns cmdline.txt into what the kernel gets: one line (a
// file with a second non-empty line is refused, it would not do what its
// author meant), and "console=serial0" rewritten to the UART's kernel name
// as the firmware rewrites it. The Pi firmware also prepends arguments of
// its own (coherent_pool=, 8250.nr_uarts=, smsc95xx.macaddr=, video=…);
// they describe Pi hardware the VM does not have, so the lab adds none.
func kernelCmdline(text, uart string) (string, error) {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > 1 {
		return "", fmt.Errorf("piboot: cmdline.txt has %d lines; the kernel command line is one", len(lines))
	}
	if len(lines) == 0 {
		return "", nil
	}
	args := strings.Fields(lines[0])
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "console=serial0"); ok {
			args[i] = "console=" + uart + v
		} else if strings.HasPrefix(a, "console=serial1") {
			return "", fmt.Errorf("piboot: %s: the VM has one UART, serial0", a)
		}
	}
	return strings.Join(args, " "), nil
}

// writeLoaded writes the kernel and the (concatenated) initramfs files
// into dir.
func writeLoaded(dir string, b *Boot, kernel []byte, initramfs [][]byte) error {
	b.Kernel = filepath.Join(dir, "kernel.img")
	if err := os.WriteFile(b.Kernel, kernel, 0o644); err != nil {
		return fmt.Errorf("piboot: %w", err)
	}
	if len(initramfs) == 0 {
		return nil
	}
	b.Initramfs = filepath.Join(dir, "initramfs.img")
	f, err := os.Create(b.Initramfs)
	if err != nil {
		return fmt.Errorf("piboot: %w", err)
	}
	for _, part := range initramfs {
		if _, err := f.Write(part); err != nil {
			f.Close()
			return fmt.Errorf("piboot: %w", err)
		}
	}
	return f.Close()
}
