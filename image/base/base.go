// Package base imports what an image is built from — a Raspberry Pi OS disk
// image, a root filesystem tarball, an OCI image or a Debian package's
// files — into image/tree trees,
// without root, mounts or loop devices. File contents stay where they are
// (in the image, the tarball's spool, a decompressed temporary file) and are
// read only when a writer opens an entry, so a whole root filesystem is
// never held in memory.
package base

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/lekiwi/heartbeat/image/tree"
)

// Kind is what sort of base a source is.
type Kind int

const (
	KindDiskImage Kind = iota + 1 // Raspberry Pi OS style MBR image: bootfs FAT + rootfs ext4
	KindTarball                   // root filesystem tarball (debootstrap, mmdebstrap, docker export)
	KindOCI                       // OCI image reference, layers flattened
	KindDeb                       // Debian binary package (.deb): its data.tar as the root
)

func (k Kind) String() string {
	switch k {
	case KindDiskImage:
		return "disk image"
	case KindTarball:
		return "root filesystem tarball"
	case KindOCI:
		return "OCI image"
	case KindDeb:
		return "Debian package"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Base is an opened base. Its trees' file entries read from the source or
// from temporary files until Close.
type Base struct {
	Kind   Kind
	Source string     // what the user gave
	Boot   *tree.Tree // nil when the base has no boot partition (tarball, OCI)
	Root   *tree.Tree
	// Arch is the Debian name of the root filesystem's architecture
	// ("arm64", "amd64"), from the OCI config or the ELF header of its
	// shell; "" if it could not be told.
	Arch        string
	Description string
	// Deb names the package when Kind is KindDeb.
	Deb *DebControl

	cleanup func() error
}

// Options tune Open.
type Options struct {
	// TempDir holds decompressed images and spooled tarball contents
	// (default os.TempDir()). They are removed by Close, or by Open when
	// it fails.
	TempDir string
	// Platform is the OCI platform to pull (default "linux/arm64").
	Platform string
	// Insecure allows a plain-HTTP registry.
	Insecure bool
	// Progress, if set, receives one line per slow step.
	Progress io.Writer
}

func (o Options) tempDir() string {
	if o.TempDir == "" {
		return os.TempDir()
	}
	return o.TempDir
}

func (o Options) progressf(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// Extensions Open recognises, longest first where one ends another.
func diskSuffixes() []string    { return []string{".img.xz", ".img.zst", ".img"} }
func tarballSuffixes() []string { return []string{".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar"} }

// Open imports source: a file whose name ends in .img, .img.xz, .img.zst,
// .tar, .tar.gz, .tgz, .tar.xz, .tar.zst or .deb; "oci-layout:DIR" for an OCI
// image layout on disk; or an OCI image reference
// (registry:5000/debian:bookworm). On error nothing is left behind.
func Open(ctx context.Context, source string, o Options) (*Base, error) {
	if o.Platform == "" {
		o.Platform = "linux/arm64"
	}
	c := &cleaner{}
	b, err := open(ctx, source, o, c)
	if err != nil {
		if cerr := c.run(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("base %s: %w", source, err)
	}
	b.Source = source
	b.cleanup = sync.OnceValue(c.run)
	if b.Arch == "" {
		b.Arch = DetectArch(b.Root)
	}
	return b, nil
}

func open(ctx context.Context, source string, o Options, c *cleaner) (*Base, error) {
	if dir, ok := strings.CutPrefix(source, "oci-layout:"); ok {
		return openOCILayout(ctx, dir, o, c)
	}
	lower := strings.ToLower(source)
	st, statErr := os.Stat(source)
	if statErr == nil && st.IsDir() {
		return nil, errors.New("is a directory: give a disk image, a tarball or an OCI reference (use oci-layout:DIR for an OCI layout)")
	}
	if isDeb(source) {
		if statErr != nil {
			return nil, fmt.Errorf("Debian package: %w", statErr)
		}
		return openDeb(ctx, source, o, c)
	}
	for _, s := range diskSuffixes() {
		if strings.HasSuffix(lower, s) {
			if statErr != nil {
				return nil, fmt.Errorf("disk image: %w", statErr)
			}
			return openDiskImage(ctx, source, strings.TrimPrefix(s, ".img"), o, c)
		}
	}
	for _, s := range tarballSuffixes() {
		if strings.HasSuffix(lower, s) {
			if statErr != nil {
				return nil, fmt.Errorf("tarball: %w", statErr)
			}
			return openTarballFile(ctx, source, o, c)
		}
	}
	if statErr == nil {
		return nil, fmt.Errorf("unknown kind of base (extension %q): name it .img, .img.xz, .img.zst, .tar, .tar.gz, .tar.xz, .tar.zst or .deb", filepath.Ext(source))
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		return nil, statErr
	}
	if looksLikePath(source) {
		return nil, fmt.Errorf("no such file (and not an OCI reference): %w", statErr)
	}
	return openOCIRemote(ctx, source, o, c)
}

// looksLikePath tells a missing file from an OCI reference: references have
// no leading "/" or ".", and end neither in a file extension we know nor
// in a path separator.
func looksLikePath(s string) bool {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || strings.HasSuffix(s, "/") || strings.Contains(s, string(filepath.Separator)+".") {
		return true
	}
	last := s[strings.LastIndex(s, "/")+1:]
	return !strings.Contains(s, "/") && !strings.Contains(last, ":") && strings.Contains(last, ".")
}

// Close removes the temporary files. Entries' Open funcs fail afterwards.
func (b *Base) Close() error {
	if b == nil || b.cleanup == nil {
		return nil
	}
	return b.cleanup()
}

// cleaner collects undo steps in order of creation and runs them in
// reverse.
type cleaner struct {
	steps []func() error
}

func (c *cleaner) add(f func() error) { c.steps = append(c.steps, f) }

func (c *cleaner) run() error {
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		if err := c.steps[i](); err != nil {
			errs = append(errs, err)
		}
	}
	c.steps = nil
	return errors.Join(errs...)
}

// tempFile creates a temporary file that the cleaner closes and removes.
func (c *cleaner) tempFile(o Options, pattern string) (*os.File, error) {
	f, err := os.CreateTemp(o.tempDir(), pattern)
	if err != nil {
		return nil, fmt.Errorf("temporary file (set the temp dir to a writable place with room): %w", err)
	}
	c.add(func() error {
		f.Close()
		if err := os.Remove(f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	return f, nil
}
