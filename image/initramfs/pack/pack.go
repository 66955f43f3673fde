// Package pack writes the provisioning initramfs laid out as
// image/initramfs describes: a gzip-compressed newc cpio archive (u-root's
// pkg/cpio, klauspost/compress gzip) holding the agent as /init, the
// kernel modules to load uncompressed, their firmware and the manifest.
//
// The archive is reproducible: the same inputs and epoch give the same
// bytes. Entries are sorted by path (directories before their contents),
// owned by root, stamped with the epoch, numbered in order; the gzip
// header carries no name and no time. Device nodes are cpio entries, so
// writing one needs no root.
package pack

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/lekiwi/heartbeat/image/initramfs"
	"github.com/lekiwi/heartbeat/image/kmod"
	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/image/tree"
)

// Spec is what goes into one initramfs.
type Spec struct {
	// Agent is the path of the static linux/arm64 agent.
	Agent string
	// Modules is the kernel's module tree and Load the modules to load,
	// in order (kmod.Tree.Resolve).
	Modules *kmod.Tree
	Load    []*kmod.Module
	// Firmware, if set, is a root file system whose lib/firmware holds
	// the firmware the modules name.
	Firmware fs.FS
	// Epoch stamps every entry and the manifest (SOURCE_DATE_EPOCH);
	// zero is 1970-01-01.
	Epoch time.Time
}

// Result describes a written initramfs.
type Result struct {
	Manifest initramfs.Manifest
	// Firmware lists the firmware files included; MissingFirmware those
	// a module names that the sources lack (drivers mostly run without,
	// or with reduced function).
	Firmware, MissingFirmware []string
	Entries                   int
	Uncompressed, Size        int64 // archive bytes before and after gzip
	SHA256                    string
}

// Build writes the initramfs for s to w.
func Build(w io.Writer, s Spec) (*Result, error) {
	t, res, err := Layout(s)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	raw, err := Write(cw, t, s.Epoch)
	if err != nil {
		return nil, err
	}
	res.Entries, res.Uncompressed, res.Size, res.SHA256 = t.Len()-1, raw, cw.n, hex.EncodeToString(h.Sum(nil))
	return res, nil
}

// Layout builds the initramfs's tree and manifest without writing them.
func Layout(s Spec) (*tree.Tree, *Result, error) {
	if s.Modules == nil {
		return nil, nil, errors.New("initramfs: no kernel module tree")
	}
	agent, err := readAgent(s.Agent)
	if err != nil {
		return nil, nil, err
	}
	epoch := s.Epoch.UTC().Truncate(time.Second)
	if s.Epoch.IsZero() {
		epoch = time.Unix(0, 0).UTC() // cpio times cannot go before 1970
	}
	t := tree.New()
	for _, d := range []string{"dev", "proc", "sys", "run", "etc/lekiwi", "usr/bin", initramfs.ModulesDir, initramfs.FirmwareDir} {
		if err := t.Add(tree.Entry{Path: d, Kind: tree.Dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, nil, err
		}
	}
	if err := t.Add(tree.Entry{Path: "tmp", Kind: tree.Dir, Mode: 0o777 | fs.ModeSticky, ModTime: epoch}); err != nil {
		return nil, nil, err
	}
	for _, dev := range []tree.Entry{
		{Path: initramfs.ConsolePath, Kind: tree.CharDevice, Mode: 0o600, Major: 5, Minor: 1, ModTime: epoch},
		{Path: initramfs.NullPath, Kind: tree.CharDevice, Mode: 0o666, Major: 1, Minor: 3, ModTime: epoch},
		{Path: initramfs.InitPath, Kind: tree.Symlink, Mode: 0o777, Link: "/" + initramfs.AgentPath, ModTime: epoch},
	} {
		if err := t.Add(dev); err != nil {
			return nil, nil, err
		}
	}
	if err := t.AddBytes(initramfs.AgentPath, agent, 0o755, epoch); err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(agent)
	res := &Result{Manifest: initramfs.Manifest{KernelRelease: s.Modules.Release, Built: epoch, AgentSHA256: hex.EncodeToString(sum[:]), Modules: []initramfs.Module{}}}
	wanted := map[string]bool{}
	var firmware []string
	for _, m := range s.Load {
		data, err := s.Modules.Read(m)
		if err != nil {
			return nil, nil, fmt.Errorf("initramfs: %w", err)
		}
		p := initramfs.ModulePath(s.Modules.Release, m.InstallPath())
		if err := t.AddBytes(strings.TrimPrefix(p, "/"), data, 0o644, epoch); err != nil {
			return nil, nil, err
		}
		res.Manifest.Modules = append(res.Manifest.Modules, initramfs.Module{Name: m.Name, Path: p})
		for _, fw := range m.Firmware {
			if !wanted[fw] {
				wanted[fw] = true
				firmware = append(firmware, fw)
			}
		}
	}
	for _, fw := range firmware {
		data, err := readFirmware(s.Firmware, fw)
		if errors.Is(err, fs.ErrNotExist) {
			res.MissingFirmware = append(res.MissingFirmware, fw)
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("initramfs: firmware %s: %w", fw, err)
		}
		if err := t.AddBytes(path.Join(initramfs.FirmwareDir, fw), data, 0o644, epoch); err != nil {
			return nil, nil, fmt.Errorf("initramfs: firmware %s: %w", fw, err)
		}
		res.Firmware = append(res.Firmware, fw)
	}
	manifest, err := res.Manifest.Marshal()
	if err != nil {
		return nil, nil, err
	}
	if err := t.AddBytes(initramfs.ManifestPath, manifest, 0o644, epoch); err != nil {
		return nil, nil, err
	}
	return t, res, nil
}

// readAgent reads the agent and checks it can be a Pi's /init: a static
// arm64 Linux executable (no interpreter: the initramfs has no libc).
func readAgent(p string) ([]byte, error) {
	if p == "" {
		return nil, errors.New("initramfs: no agent binary given (make build writes bin/agent-linux-arm64)")
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: agent: %w (make build writes bin/agent-linux-arm64)", err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("initramfs: agent %s is not an ELF executable: %w", p, err)
	}
	if f.Machine != elf.EM_AARCH64 {
		return nil, fmt.Errorf("initramfs: agent %s is a %v binary: the Pi runs arm64 (CGO_ENABLED=0 GOOS=linux GOARCH=arm64, as make build writes bin/agent-linux-arm64)", p, f.Machine)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("initramfs: agent %s is dynamically linked: the initramfs has no libc; build it with CGO_ENABLED=0", p)
		}
	}
	return data, nil
}

// readFirmware reads lib/firmware/<name>, or its .xz/.zst form
// decompressed (Debian trixie and Pi OS compress some firmware).
func readFirmware(root fs.FS, name string) ([]byte, error) {
	if root == nil {
		return nil, fs.ErrNotExist
	}
	base := path.Join(initramfs.FirmwareDir, name)
	if data, err := fs.ReadFile(root, base); !errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	for _, ext := range []string{".xz", ".zst"} {
		f, err := root.Open(base + ext)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r, closeDec, err := sparse.Decompress(f, ext)
		if err != nil {
			return nil, err
		}
		defer closeDec()
		return io.ReadAll(r)
	}
	return nil, fs.ErrNotExist
}

// Write writes t as a gzip-compressed newc archive, every entry owned by
// root and stamped with epoch, and returns the archive's uncompressed size.
func Write(w io.Writer, t *tree.Tree, epoch time.Time) (int64, error) {
	gz, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return 0, err
	}
	raw := &countWriter{w: gz}
	cw := cpio.Newc.Writer(raw)
	mtime := uint64(max(epoch.Unix(), 0))
	ino := uint64(0)
	for _, e := range t.Entries() {
		if e.Path == "." {
			continue
		}
		ino++
		info := cpio.Info{Ino: ino, Mode: uint64(e.Mode.Perm()), NLink: 1, MTime: mtime, Name: e.Path}
		if e.Mode&fs.ModeSetuid != 0 {
			info.Mode |= cpio.S_ISUID
		}
		if e.Mode&fs.ModeSetgid != 0 {
			info.Mode |= cpio.S_ISGID
		}
		if e.Mode&fs.ModeSticky != 0 {
			info.Mode |= cpio.S_ISVTX
		}
		var rec cpio.Record
		switch e.Kind {
		case tree.Dir:
			info.Mode |= cpio.S_IFDIR
			info.NLink = 2
			rec = cpio.Record{Info: info}
		case tree.File:
			data, err := readAll(e)
			if err != nil {
				return 0, fmt.Errorf("initramfs: %s: %w", e.Path, err)
			}
			info.Mode |= cpio.S_IFREG
			rec = cpio.StaticRecord(data, info)
		case tree.Symlink:
			info.Mode |= cpio.S_IFLNK
			rec = cpio.StaticRecord([]byte(e.Link), info)
		case tree.CharDevice, tree.BlockDevice:
			info.Mode |= cpio.S_IFCHR
			if e.Kind == tree.BlockDevice {
				info.Mode = info.Mode&^cpio.S_IFCHR | cpio.S_IFBLK
			}
			info.Rmajor, info.Rminor = uint64(e.Major), uint64(e.Minor)
			rec = cpio.Record{Info: info}
		case tree.FIFO:
			info.Mode |= cpio.S_IFIFO
			rec = cpio.Record{Info: info}
		default:
			return 0, fmt.Errorf("initramfs: %s: a %s is not written into an initramfs", e.Path, e.Kind)
		}
		if err := cw.WriteRecord(rec); err != nil {
			return 0, fmt.Errorf("initramfs: %s: %w", e.Path, err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	if err := gz.Close(); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	return raw.n, nil
}

func readAll(e *tree.Entry) ([]byte, error) {
	rc, err := e.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
