package base

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/image/tree"
)

func openTarballFile(ctx context.Context, source string, o Options, c *cleaner) (*Base, error) {
	f, err := os.Open(source)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, closeDecomp, err := decompressor(bufio.NewReaderSize(f, 1<<20), strings.ToLower(source))
	if err != nil {
		return nil, err
	}
	defer closeDecomp()
	root, n, err := importTar(ctx, r, o, c)
	if err != nil {
		return nil, err
	}
	return &Base{Kind: KindTarball, Root: root,
		Description: fmt.Sprintf("root filesystem tarball %s (%d entries, %s of files)", filepath.Base(source), n, humanSize(root.ContentSize()))}, nil
}

// decompressor picks the decompressor from the file name; an
// uncompressed tarball is read as it is.
func decompressor(r io.Reader, name string) (io.Reader, func(), error) {
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		if strings.HasSuffix(name, ext) {
			return sparse.Decompress(r, ext)
		}
	}
	if strings.HasSuffix(name, ".tgz") {
		return sparse.Decompress(r, ".gz")
	}
	return r, func() {}, nil
}

// importTar reads a root filesystem tar stream into a tree. File contents
// are spooled into one temporary file in o.TempDir (a compressed stream
// cannot be re-read at random), and entries read their slice of it.
// It returns the tree and the number of tar entries read.
func importTar(ctx context.Context, r io.Reader, o Options, c *cleaner) (*tree.Tree, int, error) {
	spool, err := c.tempFile(o, "base-tar-*.spool")
	if err != nil {
		return nil, 0, err
	}
	t := tree.New()
	tr := tar.NewReader(r)
	var spoolEnd int64
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, n, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, n, fmt.Errorf("read tar after %d entries (corrupt or incomplete download?): %w", n, err)
		}
		n++
		p, err := tree.Clean(hdr.Name)
		if err != nil {
			return nil, n, fmt.Errorf("tar entry %d: %w: refusing a tarball that writes outside its root", n, err)
		}
		e := tree.Entry{Path: p, Mode: modeBits(uint32(hdr.Mode)), UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), ModTime: hdr.ModTime.UTC()}
		if e.Xattrs, err = tarXattrs(p, hdr.PAXRecords); err != nil {
			return nil, n, fmt.Errorf("tar entry %d: %w", n, err)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
			off := spoolEnd
			size, err := io.Copy(io.NewOffsetWriter(spool, off), tr)
			if err != nil {
				return nil, n, fmt.Errorf("%s: spool contents to %s: %w", p, spool.Name(), err)
			}
			spoolEnd += size
			e.Kind, e.Size = tree.File, size
			e.Open = func() (io.ReadCloser, error) {
				return io.NopCloser(io.NewSectionReader(spool, off, size)), nil
			}
		case tar.TypeDir:
			e.Kind = tree.Dir
		case tar.TypeSymlink:
			e.Kind, e.Link = tree.Symlink, hdr.Linkname
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return nil, n, fmt.Errorf("%s: symlink with invalid target %q", p, hdr.Linkname)
			}
		case tar.TypeLink:
			target, err := tree.Clean(hdr.Linkname)
			if err != nil {
				return nil, n, fmt.Errorf("%s: hard link: %w: refusing a tarball that links outside its root", p, err)
			}
			e.Kind, e.Link = tree.Hardlink, target
		case tar.TypeChar:
			e.Kind, e.Major, e.Minor = tree.CharDevice, uint32(hdr.Devmajor), uint32(hdr.Devminor)
		case tar.TypeBlock:
			e.Kind, e.Major, e.Minor = tree.BlockDevice, uint32(hdr.Devmajor), uint32(hdr.Devminor)
		case tar.TypeFifo:
			e.Kind = tree.FIFO
		default:
			return nil, n, fmt.Errorf("%s: unsupported tar entry type %q", p, hdr.Typeflag)
		}
		if e.Kind != tree.Dir && p == "." {
			return nil, n, fmt.Errorf("tar entry %d: the root is a %s, not a directory", n, e.Kind)
		}
		if err := t.Add(e); err != nil {
			return nil, n, fmt.Errorf("tar entry %d: %w", n, err)
		}
	}
	if err := resolveHardlinks(t); err != nil {
		return nil, n, err
	}
	return t, n, nil
}

// resolveHardlinks makes every hard link name a File that precedes it in
// path order, as image/tree requires: tar only promises the target came
// earlier in the archive, which may be later in path order, and a target
// may itself be a link.
func resolveHardlinks(t *tree.Tree) error {
	groups := map[string][]string{} // File path -> link paths
	for _, e := range t.Entries() {
		if e.Kind != tree.Hardlink {
			continue
		}
		target := e.Link
		for hops := 0; ; hops++ {
			te, ok := t.Get(target)
			if !ok {
				return fmt.Errorf("%s: hard link to %s, which is not in the tarball", e.Path, e.Link)
			}
			if te.Kind == tree.File {
				break
			}
			if te.Kind != tree.Hardlink || hops > 64 {
				return fmt.Errorf("%s: hard link to %s, which is a %s, not a file", e.Path, e.Link, te.Kind)
			}
			target = te.Link
		}
		groups[target] = append(groups[target], e.Path)
	}
	for file, links := range groups {
		all := append([]string{file}, links...)
		sort.Slice(all, func(i, j int) bool { return pathLess(all[i], all[j]) })
		fe, _ := t.Get(file)
		first := *fe
		first.Path = all[0]
		for _, p := range all {
			var e tree.Entry
			if p == all[0] {
				e = first
			} else {
				// A link keeps its own name but shares the inode, so it
				// takes the file's metadata.
				e = *fe
				e.Path, e.Kind, e.Link, e.Open, e.Size = p, tree.Hardlink, all[0], nil, 0
			}
			if err := t.Add(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// pathLess is image/tree's path order: component by component.
func pathLess(a, b string) bool {
	pa, pb := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

// DetectArch tells the architecture of a root filesystem from the ELF
// header of its shell or another always-present binary, following
// symlinks inside the tree (usrmerge's bin -> usr/bin included). It
// returns "" when no candidate is an ELF file of a known machine.
func DetectArch(root *tree.Tree) string {
	if root == nil {
		return ""
	}
	for _, p := range []string{"bin/sh", "usr/bin/env", "bin/busybox", "usr/bin/dpkg", "bin/ls", "usr/bin/ls", "sbin/init"} {
		e, err := root.Resolve(p)
		if err != nil {
			continue
		}
		if arch := elfArch(e); arch != "" {
			return arch
		}
	}
	return ""
}

func elfArch(e *tree.Entry) string {
	if e.Kind != tree.File || e.Open == nil {
		return ""
	}
	rc, err := e.Open()
	if err != nil {
		return ""
	}
	defer rc.Close()
	h := make([]byte, 20)
	if _, err := io.ReadFull(rc, h); err != nil || string(h[:4]) != "\x7fELF" {
		return ""
	}
	machine := uint16(h[18]) | uint16(h[19])<<8
	if h[5] == 2 { // big-endian
		machine = uint16(h[18])<<8 | uint16(h[19])
	}
	switch machine {
	case 0xB7:
		return "arm64"
	case 0x3E:
		return "amd64"
	case 0x28:
		return "armhf"
	case 0x03:
		return "i386"
	case 0xF3:
		return "riscv64"
	}
	return ""
}
