package rpi

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/image/layout"
)

// Roots are the system directories FindBootConfig reads; empty fields mean
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

// FindBootConfig returns the block device of the bootconfig partition of
// the disk the running system booted from: partition 1 of the disk that
// holds the root filesystem named by root= in the kernel command line. It
// deliberately does not look the partition up by label: a second card or
// USB stick with the same layout (a flashing bench, a recovery stick) has
// the same label.
func FindBootConfig(r Roots) (string, error) {
	r = r.withDefaults()
	cmdline, err := os.ReadFile(filepath.Join(r.Proc, "cmdline"))
	if err != nil {
		return "", fmt.Errorf("find bootconfig: %w", err)
	}
	var rootDev string
	for _, arg := range strings.Fields(string(cmdline)) {
		v, ok := strings.CutPrefix(arg, "root=")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(v, "PARTUUID="):
			rootDev = filepath.Join(r.Dev, "disk/by-partuuid", strings.ToLower(strings.TrimPrefix(v, "PARTUUID=")))
		case strings.HasPrefix(v, "/dev/"):
			rootDev = filepath.Join(r.Dev, strings.TrimPrefix(v, "/dev/"))
		default:
			return "", fmt.Errorf("find bootconfig: root=%s in the kernel command line is neither PARTUUID= nor /dev/…", v)
		}
	}
	if rootDev == "" {
		return "", fmt.Errorf("find bootconfig: no root= in %s", filepath.Join(r.Proc, "cmdline"))
	}
	resolved, err := filepath.EvalSymlinks(rootDev)
	if err != nil {
		return "", fmt.Errorf("find bootconfig: root device %s: %w", rootDev, err)
	}
	part := filepath.Base(resolved)
	sysPart, err := filepath.EvalSymlinks(filepath.Join(r.Sys, "class/block", part))
	if err != nil {
		return "", fmt.Errorf("find bootconfig: %s in sysfs: %w", part, err)
	}
	diskDir := filepath.Dir(sysPart)
	entries, err := os.ReadDir(diskDir)
	if err != nil {
		return "", fmt.Errorf("find bootconfig: list partitions of %s: %w", filepath.Base(diskDir), err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(diskDir, e.Name(), "partition"))
		if err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(layout.BootConfig) {
			return filepath.Join(r.Dev, e.Name()), nil
		}
	}
	return "", fmt.Errorf("find bootconfig: disk %s (holding root %s) has no partition %d", filepath.Base(diskDir), part, layout.BootConfig)
}
