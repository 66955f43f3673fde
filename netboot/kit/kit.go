// Package kit builds the netboot station's boot directory (netboot serve
// --boot-dir): the Raspberry Pi firmware, device trees and overlays, the
// provisioning kernel (vmlinuz, and pi5/vmlinuz when the source has a Pi 5
// kernel) and the provisioning initramfs generated for each kernel
// (initrd.img, pi5/initrd.img) with the agent as /init and the modules the
// factory flow needs, plus kit.json saying what is in it and where it came
// from.
//
// Sources are Debian packages (the arm64 linux-image and raspi-firmware,
// given as .deb files or fetched with a private apt) or a Raspberry Pi OS
// image, read without root. Debian bookworm's kernel has no Pi 5 device
// tree: such a kit boots Pi 4 boards and QEMU's virt machine; a Pi OS
// image gives both generations. The directory is written beside its final
// name and renamed into place: an error leaves nothing behind.
package kit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/image/initramfs/pack"
	"github.com/lekiwi/heartbeat/image/kmod"
	"github.com/lekiwi/heartbeat/image/tree"
)

// File names in the boot directory, as netboot serve's defaults name them.
const (
	Kernel    = "vmlinuz"
	Initramfs = "initrd.img"
	Manifest  = "kit.json"
	Pi5Dir    = "pi5" // per-generation files the station prefers for Pi 5 boards
)

// Pi5DeviceTree is the device tree the Pi 5 firmware looks for.
const Pi5DeviceTree = "bcm2712-rpi-5-b.dtb"

// Options say what to build from.
type Options struct {
	// Debs are Debian packages: one arm64 linux-image-<release> (not the
	// linux-image-arm64 metapackage), raspi-firmware, and optionally
	// firmware packages whose /lib/firmware the modules may use.
	Debs []string
	// PiOS is a Raspberry Pi OS image (.img, .img.xz, .img.zst); not
	// together with Debs.
	PiOS string
	// Agent is the static linux/arm64 agent (see FindAgent).
	Agent string
	// Out is the boot directory to write. It must not exist unless Force.
	Out   string
	Force bool
	// Modules are loaded in addition to DefaultModules; each must exist.
	Modules []string
	// Epoch stamps the initramfs, kit.json and the files' times; zero is
	// 1970-01-01.
	Epoch time.Time
	// TempDir holds unpacked sources while building (default os.TempDir()).
	TempDir string
	// Progress, if set, receives a line per slow step.
	Progress io.Writer
}

// Kit is kit.json: what a boot directory holds and where it came from.
type Kit struct {
	Format  int       `json:"format"`
	Built   time.Time `json:"built"`
	Sources []Source  `json:"sources"`
	Agent   FileSum   `json:"agent"`
	// Boots has one entry per kernel: the default one (vmlinuz,
	// initrd.img) and, when the source has one, the Pi 5's (pi5/…).
	Boots []Boot `json:"boots"`
	// Pi5 tells whether Pi 5 boards can boot this kit.
	Pi5      bool      `json:"pi5"`
	Notes    []string  `json:"notes,omitempty"`
	Warnings []string  `json:"warnings,omitempty"`
	Files    []FileSum `json:"files"`
}

// Source is one input of the build.
type Source struct {
	Kind    string `json:"kind"` // "deb" or "pios"
	File    string `json:"file"` // base name
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
}

// FileSum is a file with its size and sha256.
type FileSum struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Boot is one kernel and the initramfs made for it.
type Boot struct {
	// Boards names who boots it: "pi4", "pi5", "qemu-virt".
	Boards        []string `json:"boards"`
	Kernel        string   `json:"kernel"`
	Initramfs     string   `json:"initramfs"`
	KernelSource  string   `json:"kernel_source"` // the file it came from
	KernelRelease string   `json:"kernel_release"`
	// Modules are loaded in this order; Builtin are asked-for modules
	// the kernel has built in; Missing are default modules it lacks.
	Modules               []string `json:"modules"`
	Builtin               []string `json:"builtin,omitempty"`
	Missing               []string `json:"missing_default_modules,omitempty"`
	Firmware              []string `json:"firmware,omitempty"`
	MissingFirmware       []string `json:"missing_firmware,omitempty"`
	KernelSize            int64    `json:"kernel_size"`
	InitramfsSize         int64    `json:"initramfs_size"`
	InitramfsUncompressed int64    `json:"initramfs_uncompressed"`
}

// SizeBudget is the compressed initramfs size the kit aims under: the Pi
// fetches it over TFTP at a few MB/s and holds it in RAM with the kernel.
const SizeBudget = 20 << 20

// kernelSource is one kernel found in the sources.
type kernelSource struct {
	boards  []string
	dir     string // "" or Pi5Dir
	name    string // where it came from ("boot/vmlinuz-…", "kernel8.img")
	entry   *tree.Entry
	modules fs.FS // root holding lib/modules/<release> and lib/firmware
}

// sources is what the build reads, whatever the kind of input.
type sources struct {
	boot    *tree.Tree // files for the boot directory's root (firmware, device trees, overlays)
	kernels []kernelSource
	list    []Source
	notes   []string
	close   []func() error
}

func (s *sources) Close() error {
	var errs []error
	for _, c := range s.close {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

func (o Options) progressf(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// Build writes the kit into o.Out and returns its description.
func Build(ctx context.Context, o Options) (*Kit, error) {
	start := time.Now()
	if o.Out == "" {
		return nil, errors.New("kit: no output directory given")
	}
	if _, err := os.Stat(o.Out); err == nil && !o.Force {
		return nil, fmt.Errorf("kit: %s exists: choose another directory, or replace it with --force", o.Out)
	}
	if len(o.Debs) > 0 && o.PiOS != "" {
		return nil, errors.New("kit: give Debian packages or a Raspberry Pi OS image, not both: the kernel, its modules and the firmware must come from one build")
	}
	if len(o.Debs) == 0 && o.PiOS == "" {
		return nil, errors.New("kit: nothing to build from: give --deb files (linux-image-<release>-arm64 and raspi-firmware), --fetch, or --pios IMAGE")
	}
	agent, err := sum(o.Agent)
	if err != nil {
		return nil, fmt.Errorf("kit: agent: %w (make build writes bin/agent-linux-arm64)", err)
	}
	epoch := o.Epoch.UTC().Truncate(time.Second)
	if o.Epoch.IsZero() {
		epoch = time.Unix(0, 0).UTC()
	}
	var src *sources
	if o.PiOS != "" {
		src, err = openPiOS(ctx, o)
	} else {
		src, err = openDebs(ctx, o)
	}
	if src != nil {
		defer src.Close()
	}
	if err != nil {
		return nil, err
	}
	k := &Kit{Format: 1, Built: epoch, Sources: src.list, Agent: agent, Notes: src.notes}
	k.Agent.Path = filepath.Base(o.Agent)

	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(o.Out)), filepath.Base(filepath.Clean(o.Out))+".partial-")
	if err != nil {
		return nil, fmt.Errorf("kit: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	w := &writer{dir: tmp, epoch: epoch}
	for _, e := range src.boot.Entries() {
		if e.Kind == tree.File {
			if err := w.copyEntry(e.Path, e); err != nil {
				return nil, err
			}
		}
	}
	for _, ks := range src.kernels {
		b, warnings, err := buildBoot(ctx, o, w, ks, epoch)
		if err != nil {
			return nil, err
		}
		k.Boots = append(k.Boots, *b)
		k.Warnings = append(k.Warnings, warnings...)
		if slices.Contains(b.Boards, "pi5") {
			k.Pi5 = true
		}
	}
	if _, ok := src.boot.Get(Pi5DeviceTree); !ok && k.Pi5 {
		return nil, fmt.Errorf("kit: the sources have a Pi 5 kernel but no %s", Pi5DeviceTree)
	}
	if err := w.writeJSON(k); err != nil {
		return nil, err
	}
	if err := w.finish(); err != nil {
		return nil, err
	}
	if err := replace(tmp, o.Out, o.Force); err != nil {
		return nil, err
	}
	done = true
	o.progressf("kit %s written in %s", o.Out, time.Since(start).Round(100*time.Millisecond))
	return k, nil
}

// buildBoot copies one kernel and writes its initramfs.
func buildBoot(ctx context.Context, o Options, w *writer, ks kernelSource, epoch time.Time) (*Boot, []string, error) {
	release, err := entryRelease(ks.entry)
	if err != nil {
		return nil, nil, fmt.Errorf("kit: %s: %w", ks.name, err)
	}
	mods, err := kmod.Open(ks.modules, release)
	if err != nil {
		return nil, nil, fmt.Errorf("kit: kernel %s is release %s: %w", ks.name, release, err)
	}
	b := &Boot{Boards: ks.boards, Kernel: path.Join(ks.dir, Kernel), Initramfs: path.Join(ks.dir, Initramfs), KernelSource: ks.name, KernelRelease: release}
	var warnings, load []string
	for _, m := range DefaultModules() {
		switch {
		case mods.Builtin(m):
			b.Builtin = append(b.Builtin, kmod.Normalize(m))
		case mods.Has(m):
			load = append(load, m)
		default:
			b.Missing = append(b.Missing, kmod.Normalize(m))
		}
	}
	if len(b.Missing) > 0 {
		warnings = append(warnings, fmt.Sprintf("kernel %s lacks default modules %s (neither a module nor built in): boards needing them will not find that hardware", release, strings.Join(b.Missing, ", ")))
	}
	for _, m := range o.Modules {
		if !mods.Has(m) {
			return nil, nil, fmt.Errorf("kit: --modules %s: kernel %s (%s) has no module %s, not even built in", m, release, ks.name, kmod.Normalize(m))
		}
		if mods.Builtin(m) {
			b.Builtin = append(b.Builtin, kmod.Normalize(m))
			continue
		}
		load = append(load, m)
	}
	o.progressf("resolving %d modules for kernel %s (%d modules in its tree)", len(load), release, mods.Len())
	resolved, err := mods.Resolve(load...)
	if err != nil {
		return nil, nil, fmt.Errorf("kit: kernel %s: %w", release, err)
	}
	if err := w.copyEntry(b.Kernel, ks.entry); err != nil {
		return nil, nil, err
	}
	b.KernelSize = ks.entry.Size
	o.progressf("writing %s: agent, %d modules", b.Initramfs, len(resolved))
	f, err := w.create(b.Initramfs)
	if err != nil {
		return nil, nil, err
	}
	res, err := pack.Build(f, pack.Spec{Agent: o.Agent, Modules: mods, Load: resolved, Firmware: ks.modules, Epoch: epoch})
	if cerr := f.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kit: %s: %w", b.Initramfs, err)
	}
	for _, m := range res.Manifest.Modules {
		b.Modules = append(b.Modules, m.Name)
	}
	b.Firmware, b.MissingFirmware = res.Firmware, res.MissingFirmware
	b.InitramfsSize, b.InitramfsUncompressed = res.Size, res.Uncompressed
	if len(res.MissingFirmware) > 0 {
		warnings = append(warnings, fmt.Sprintf("kernel %s: firmware the modules may ask for is not in the sources: %s (add a --deb with it, e.g. firmware-realtek, if those adapters are used)", release, strings.Join(res.MissingFirmware, ", ")))
	}
	if res.Size > SizeBudget {
		warnings = append(warnings, fmt.Sprintf("%s is %.1f MiB, over the %d MiB budget: the Pi fetches it over TFTP", b.Initramfs, float64(res.Size)/(1<<20), SizeBudget>>20))
	}
	return b, warnings, nil
}

func entryRelease(e *tree.Entry) (string, error) {
	rc, err := e.Open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return kmod.KernelRelease(rc)
}

// writer writes the kit's files into its temporary directory, hashing
// each, with the epoch as every file's time.
type writer struct {
	dir   string
	epoch time.Time
	files []FileSum
	paths []string
}

type hashedFile struct {
	w    *writer
	f    *os.File
	rel  string
	hash io.Writer
	sum  func() []byte
	n    int64
}

func (h *hashedFile) Write(p []byte) (int, error) {
	n, err := h.f.Write(p)
	h.hash.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashedFile) close() error {
	if err := h.f.Close(); err != nil {
		return fmt.Errorf("kit: %s: %w", h.rel, err)
	}
	h.w.files = append(h.w.files, FileSum{Path: h.rel, Size: h.n, SHA256: hex.EncodeToString(h.sum())})
	return nil
}

func (w *writer) create(rel string) (*hashedFile, error) {
	full := filepath.Join(w.dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return nil, fmt.Errorf("kit: %w", err)
	}
	f, err := os.OpenFile(full, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kit: %w", err)
	}
	h := sha256.New()
	w.paths = append(w.paths, full)
	return &hashedFile{w: w, f: f, rel: rel, hash: h, sum: func() []byte { return h.Sum(nil) }}, nil
}

func (w *writer) copyEntry(rel string, e *tree.Entry) error {
	rc, err := e.Open()
	if err != nil {
		return fmt.Errorf("kit: %s: %w", rel, err)
	}
	defer rc.Close()
	f, err := w.create(rel)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.close()
		return fmt.Errorf("kit: %s: %w", rel, err)
	}
	return f.close()
}

func (w *writer) writeJSON(k *Kit) error {
	sort.Slice(w.files, func(i, j int) bool { return w.files[i].Path < w.files[j].Path })
	k.Files = w.files
	data, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	f, err := w.create(Manifest)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("kit: %w", err)
	}
	return f.f.Close()
}

// finish makes the directory readable by the station and stamps every
// file and directory with the epoch, so two builds compare equal by time
// as well as content.
func (w *writer) finish() error {
	var dirs []string
	err := filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
			return os.Chmod(p, 0o755)
		}
		return os.Chtimes(p, w.epoch, w.epoch)
	})
	for i := len(dirs) - 1; i >= 0 && err == nil; i-- {
		err = os.Chtimes(dirs[i], w.epoch, w.epoch)
	}
	if err != nil {
		return fmt.Errorf("kit: %w", err)
	}
	return nil
}

// replace renames the finished directory into place; an existing kit
// (force) is moved aside first and removed once the new one is there.
func replace(tmp, out string, force bool) error {
	old := ""
	if _, err := os.Stat(out); err == nil {
		if !force {
			return fmt.Errorf("kit: %s appeared while building: not replaced (the new kit is discarded)", out)
		}
		old = tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return fmt.Errorf("kit: move the old kit aside: %w", err)
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		if old != "" {
			os.Rename(old, out)
		}
		return fmt.Errorf("kit: %w", err)
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("kit: remove the old kit %s: %w", old, err)
		}
	}
	return nil
}

func sum(p string) (FileSum, error) {
	if p == "" {
		return FileSum{}, errors.New("no agent binary given")
	}
	f, err := os.Open(p)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return FileSum{}, err
	}
	return FileSum{Path: p, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
