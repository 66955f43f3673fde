package kit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/image/aptfetch"
	"github.com/lekiwi/heartbeat/image/base"
	"github.com/lekiwi/heartbeat/image/tree"
)

// Where Debian's packages keep what the boot directory needs.
const (
	debFirmwareDir = "usr/lib/raspi-firmware" // raspi-firmware: start4.elf, fixup4.dat, bootcode.bin…
	debKernelGlob  = "boot/vmlinuz-*"
)

// debDeviceTreeDir is where linux-image-<release> keeps the Broadcom
// (Raspberry Pi) device trees.
func debDeviceTreeDir(release string) string {
	return path.Join("usr/lib/linux-image-"+release, "broadcom")
}

func fileSource(kind, p string) (Source, error) {
	s, err := sum(p)
	if err != nil {
		return Source{}, err
	}
	return Source{Kind: kind, File: filepath.Base(p), SHA256: s.SHA256, Size: s.Size}, nil
}

// openDebs reads Debian packages: exactly one kernel package, the
// Raspberry Pi firmware, and any others for their /lib/firmware.
func openDebs(ctx context.Context, o Options) (*sources, error) {
	src := &sources{boot: tree.New()}
	// merged is one root for the initramfs: the kernel package's modules
	// and every package's firmware.
	merged := tree.New()
	var kernel *base.Base
	var kernelName, release string
	haveFirmware := false
	for _, p := range o.Debs {
		s, err := fileSource("deb", p)
		if err != nil {
			return src, fmt.Errorf("kit: --deb %s: %w", p, err)
		}
		o.progressf("reading %s (%.1f MiB)", filepath.Base(p), float64(s.Size)/(1<<20))
		b, err := base.Open(ctx, p, base.Options{TempDir: o.TempDir, Progress: o.Progress})
		if err != nil {
			return src, fmt.Errorf("kit: --deb %s: %w", p, err)
		}
		src.close = append(src.close, b.Close)
		if b.Kind != base.KindDeb {
			return src, fmt.Errorf("kit: --deb %s is a %s, not a Debian package", p, b.Kind)
		}
		s.Package, s.Version = b.Deb.Package, b.Deb.Version
		src.list = append(src.list, s)
		fsys := b.Root.FS()
		kernels, err := fs.Glob(fsys, debKernelGlob)
		if err != nil {
			return src, err
		}
		switch {
		case len(kernels) > 1:
			return src, fmt.Errorf("kit: --deb %s holds several kernels %v", p, kernels)
		case len(kernels) == 1 && kernel != nil:
			return src, fmt.Errorf("kit: two kernel packages (%s and %s): give one", kernel.Deb.Package, b.Deb.Package)
		case len(kernels) == 1:
			if b.Arch != "arm64" {
				return src, fmt.Errorf("kit: --deb %s is a %s kernel: the Pi needs arm64 (linux-image-<release>-arm64)", p, b.Arch)
			}
			kernel, kernelName, release = b, kernels[0], strings.TrimPrefix(path.Base(kernels[0]), "vmlinuz-")
		}
		if entries, err := fs.ReadDir(fsys, debFirmwareDir); err == nil {
			for _, e := range entries {
				if err := addFile(src.boot, b.Root, path.Join(debFirmwareDir, e.Name()), e.Name()); err != nil {
					return src, fmt.Errorf("kit: --deb %s: %w", p, err)
				}
			}
			haveFirmware = len(entries) > 0
		}
		for _, dir := range []string{"lib/firmware", "usr/lib/firmware"} {
			if err := copyTree(merged, b.Root, dir, "lib/firmware"); err != nil {
				return src, fmt.Errorf("kit: --deb %s: %w", p, err)
			}
		}
	}
	if kernel == nil {
		return src, fmt.Errorf("kit: none of the packages holds a kernel (%s): give the versioned kernel package, e.g. --deb linux-image-6.1.0-57-arm64_6.1.192-3_arm64.deb — not the linux-image-arm64 metapackage, which only depends on it — or use --fetch", debKernelGlob)
	}
	if !haveFirmware {
		return src, fmt.Errorf("kit: no Raspberry Pi boot firmware (/%s/start4.elf) in the packages: add --deb raspi-firmware_….deb (Debian's non-free-firmware), or use --fetch", debFirmwareDir)
	}
	if _, ok := src.boot.Get("start4.elf"); !ok {
		return src, fmt.Errorf("kit: the firmware package has no start4.elf in /%s: the Pi 4 cannot boot without it", debFirmwareDir)
	}
	kfs := kernel.Root.FS()
	dtbs, err := fs.Glob(kfs, path.Join(debDeviceTreeDir(release), "*.dtb"))
	if err != nil {
		return src, err
	}
	if len(dtbs) == 0 {
		return src, fmt.Errorf("kit: kernel package %s has no Raspberry Pi device trees in /%s", kernel.Deb.Package, debDeviceTreeDir(release))
	}
	for _, d := range dtbs {
		if err := addFile(src.boot, kernel.Root, d, path.Base(d)); err != nil {
			return src, err
		}
	}
	entry, err := kernel.Root.Resolve(kernelName)
	if err != nil {
		return src, err
	}
	// The kernel's own root serves its modules; firmware from every
	// package is merged beside them.
	if err := copyTree(merged, kernel.Root, "lib/modules", "lib/modules"); err != nil {
		return src, err
	}
	if err := copyTree(merged, kernel.Root, "usr/lib/modules", "lib/modules"); err != nil {
		return src, err
	}
	src.kernels = []kernelSource{{boards: []string{"pi4", "qemu-virt"}, name: kernelName, entry: entry, modules: merged.FS()}}
	if _, ok := src.boot.Get(Pi5DeviceTree); !ok {
		src.notes = append(src.notes, fmt.Sprintf("This kit boots Raspberry Pi 4 boards (and QEMU's virt machine), not the Pi 5: Debian's kernel %s has no Pi 5 device tree (%s). For Pi 5 boards build the kit from a Raspberry Pi OS image: netboot kit build --pios 2024-11-19-raspios-bookworm-arm64-lite.img.xz", release, Pi5DeviceTree))
	}
	return src, nil
}

// addFile adds the file at from in root (symlinks followed) to t as to.
func addFile(t *tree.Tree, root *tree.Tree, from, to string) error {
	e, err := root.Resolve(from)
	if err != nil {
		return err
	}
	if e.Kind == tree.Dir {
		return nil
	}
	if e.Kind != tree.File {
		return fmt.Errorf("%s is a %s, not a file", from, e.Kind)
	}
	c := *e
	c.Path, c.Mode, c.UID, c.GID = to, 0o644, 0, 0
	return t.Add(c)
}

// copyTree adds every file below from in root to t, below to, symlinks
// resolved (firmware trees are full of them).
func copyTree(t *tree.Tree, root *tree.Tree, from, to string) error {
	fsys := root.FS()
	if _, err := fs.Stat(fsys, from); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fs.WalkDir(fsys, from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		dest := path.Join(to, strings.TrimPrefix(p, from+"/"))
		e, err := root.Resolve(p)
		if err != nil || e.Kind != tree.File {
			return nil // a dangling or special entry is no firmware
		}
		c := *e
		c.Path = dest
		return t.Add(c)
	})
}

// Raspberry Pi OS's boot partition: its kernels by the generation they
// serve, and the files the station generates itself (left out).
const (
	piosKernel4 = "kernel8.img"     // 64-bit, Pi 3/4 (and Pi 5 when no kernel_2712.img)
	piosKernel5 = "kernel_2712.img" // 64-bit with 16K pages, Pi 5
)

func generatedByStation(name string) bool {
	lower := strings.ToLower(name)
	return lower == "config.txt" || lower == "cmdline.txt" || strings.HasPrefix(lower, "kernel") && strings.HasSuffix(lower, ".img") ||
		strings.HasPrefix(lower, "initramfs") || strings.HasPrefix(lower, "initrd") || lower == Manifest
}

// openPiOS reads a Raspberry Pi OS image: the boot partition's firmware,
// device trees and overlays, its 64-bit kernels, and the root partition's
// module trees and firmware.
func openPiOS(ctx context.Context, o Options) (*sources, error) {
	src := &sources{boot: tree.New()}
	s, err := fileSource("pios", o.PiOS)
	if err != nil {
		return src, fmt.Errorf("kit: --pios %s: %w", o.PiOS, err)
	}
	src.list = []Source{s}
	o.progressf("reading Raspberry Pi OS image %s (%.1f MiB)", filepath.Base(o.PiOS), float64(s.Size)/(1<<20))
	b, err := base.Open(ctx, o.PiOS, base.Options{TempDir: o.TempDir, Progress: o.Progress})
	if err != nil {
		return src, fmt.Errorf("kit: --pios %s: %w", o.PiOS, err)
	}
	src.close = append(src.close, b.Close)
	if b.Kind != base.KindDiskImage || b.Boot == nil {
		return src, fmt.Errorf("kit: --pios %s is a %s, not a Raspberry Pi OS disk image", o.PiOS, b.Kind)
	}
	for _, e := range b.Boot.Entries() {
		if e.Kind != tree.File || generatedByStation(path.Base(e.Path)) {
			continue
		}
		c := *e
		c.Mode = 0o644
		if err := src.boot.Add(c); err != nil {
			return src, err
		}
	}
	if _, ok := src.boot.Get("start4.elf"); !ok {
		return src, fmt.Errorf("kit: --pios %s: the boot partition has no start4.elf: not a Raspberry Pi OS image for the Pi 4/5", o.PiOS)
	}
	rootFS := b.Root.FS()
	k4, ok := b.Boot.Get(piosKernel4)
	if !ok {
		return src, fmt.Errorf("kit: --pios %s: the boot partition has no %s: a 64-bit (arm64) Raspberry Pi OS image is needed", o.PiOS, piosKernel4)
	}
	src.kernels = []kernelSource{{boards: []string{"pi4"}, name: piosKernel4, entry: k4, modules: rootFS}}
	if k5, ok := b.Boot.Get(piosKernel5); ok {
		src.kernels = append(src.kernels, kernelSource{boards: []string{"pi5"}, dir: Pi5Dir, name: piosKernel5, entry: k5, modules: rootFS})
	} else {
		src.kernels[0].boards = append(src.kernels[0].boards, "pi5")
	}
	if _, ok := src.boot.Get(Pi5DeviceTree); !ok {
		src.notes = append(src.notes, fmt.Sprintf("This Raspberry Pi OS image has no %s: the kit boots Pi 4 boards, not the Pi 5", Pi5DeviceTree))
		src.kernels = src.kernels[:1]
		src.kernels[0].boards = []string{"pi4"}
	}
	return src, nil
}

// FindAgent returns the agent binary to put into the initramfs: flag when
// given, else agent-linux-arm64 next to the running netboot binary.
func FindAgent(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	exe, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(exe), "agent-linux-arm64")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no agent: give --agent PATH, the static arm64 agent (`make build` writes bin/agent-linux-arm64, next to bin/netboot where it is found by itself)")
}

// FetchDebs downloads the current bookworm arm64 kernel (the package the
// linux-image-arm64 metapackage points at) and raspi-firmware into dir
// with a private apt, and returns their paths.
func FetchDebs(ctx context.Context, dir string, progress io.Writer) ([]string, error) {
	f := &aptfetch.Fetcher{Dir: dir, Progress: progress}
	deps, err := f.Depends(ctx, "linux-image-arm64")
	if err != nil {
		return nil, fmt.Errorf("kit: --fetch: %w", err)
	}
	kernel := ""
	for _, d := range deps {
		if strings.HasPrefix(d, "linux-image-") {
			kernel = d
			break
		}
	}
	if kernel == "" {
		return nil, fmt.Errorf("kit: --fetch: linux-image-arm64 depends on no linux-image-* package (%v)", deps)
	}
	var out []string
	for _, name := range []string{kernel, "raspi-firmware"} {
		p, err := f.Download(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("kit: --fetch: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}
