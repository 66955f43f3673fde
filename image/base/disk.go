package base

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/image/tree"
)

const sectorSize = 512

// mbrPartition is one primary entry of an MBR partition table.
type mbrPartition struct {
	Index       int // 1-based, as in /dev/mmcblk0p1
	Type        byte
	Start, Size uint64 // in sectors
}

func (p mbrPartition) offset() int64 { return int64(p.Start * sectorSize) }
func (p mbrPartition) bytes() int64  { return int64(p.Size * sectorSize) }

// readMBR parses the four primary entries of the partition table in the
// first sector, skipping empty ones.
func readMBR(sector []byte) ([]mbrPartition, error) {
	if len(sector) < sectorSize || sector[510] != 0x55 || sector[511] != 0xAA {
		return nil, errors.New("no MBR partition table (sector 0 lacks the 55 AA signature): not a Raspberry Pi OS image")
	}
	var parts []mbrPartition
	for i := 0; i < 4; i++ {
		e := sector[446+16*i:]
		p := mbrPartition{Index: i + 1, Type: e[4],
			Start: uint64(binary.LittleEndian.Uint32(e[8:])), Size: uint64(binary.LittleEndian.Uint32(e[12:]))}
		if p.Type == 0 || p.Size == 0 {
			continue
		}
		if p.Type == 0xEE {
			return nil, errors.New("GPT partition table (protective MBR): only MBR images like Raspberry Pi OS are supported as a base")
		}
		if p.Start == 0 {
			return nil, fmt.Errorf("partition %d starts at sector 0, over the partition table", p.Index)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil, errors.New("MBR partition table is empty")
	}
	return parts, nil
}

// isFATType reports MBR types used for FAT filesystems.
func isFATType(t byte) bool {
	switch t {
	case 0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e:
		return true
	}
	return false
}

func openDiskImage(ctx context.Context, source, compression string, o Options, c *cleaner) (*Base, error) {
	var img *os.File
	var err error
	switch compression {
	case "":
		img, err = os.Open(source)
		if err != nil {
			return nil, err
		}
		c.add(img.Close)
	case ".xz", ".zst":
		img, err = decompressToSparse(ctx, source, compression, o, c)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown compression %q", compression)
	}
	st, err := img.Stat()
	if err != nil {
		return nil, err
	}
	imgSize := st.Size()
	sector := make([]byte, sectorSize)
	if _, err := img.ReadAt(sector, 0); err != nil {
		return nil, fmt.Errorf("read partition table (image of %d bytes): %w", imgSize, err)
	}
	parts, err := readMBR(sector)
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		if end := p.offset() + p.bytes(); end > imgSize {
			return nil, fmt.Errorf("image ends at %d bytes but partition %d ends at %d: truncated download? fetch the image again", imgSize, p.Index, end)
		}
	}
	b := &Base{Kind: KindDiskImage}
	var bootPart, rootPart *mbrPartition
	var bootFS *fat.Reader
	var rootFS *ext4.FS
	var notes []string
	for i := range parts {
		p := &parts[i]
		sr := io.NewSectionReader(img, p.offset(), p.bytes())
		if bootFS == nil && isFATType(p.Type) {
			if bootFS, err = fat.NewReader(sr, p.bytes()); err != nil {
				notes = append(notes, fmt.Sprintf("partition %d (type %#02x): %v", p.Index, p.Type, err))
				bootFS = nil
				continue
			}
			bootPart = p
		} else if rootFS == nil && p.Type == 0x83 {
			if rootFS, err = ext4.Open(sr, p.bytes()); err != nil {
				notes = append(notes, fmt.Sprintf("partition %d (type %#02x): %v", p.Index, p.Type, err))
				rootFS = nil
				continue
			}
			rootPart = p
		}
	}
	detail := ""
	if len(notes) > 0 {
		detail = " (" + strings.Join(notes, "; ") + ")"
	}
	if bootFS == nil {
		return nil, fmt.Errorf("no FAT boot partition in the MBR (%s)%s: want a Raspberry Pi OS image with a bootfs partition", describeParts(parts), detail)
	}
	if rootFS == nil {
		return nil, fmt.Errorf("no ext4 root partition in the MBR (%s)%s: want a Raspberry Pi OS image with a rootfs partition (type 83)", describeParts(parts), detail)
	}
	if b.Boot, err = fatTree(bootFS); err != nil {
		return nil, fmt.Errorf("boot partition %d: %w", bootPart.Index, err)
	}
	if b.Root, err = ext4Tree(ctx, rootFS); err != nil {
		return nil, fmt.Errorf("root partition %d: %w", rootPart.Index, err)
	}
	b.Description = fmt.Sprintf("Raspberry Pi OS image %s (MBR: %s @%d %s %s, %s @%d ext4 %s)", filepath.Base(source),
		orDefault(bootFS.Label(), "boot"), bootPart.Start, bootFS.Type(), humanSize(bootPart.bytes()),
		orDefault(rootFS.Label(), "root"), rootPart.Start, humanSize(rootPart.bytes()))
	return b, nil
}

func describeParts(parts []mbrPartition) string {
	var s []string
	for _, p := range parts {
		s = append(s, fmt.Sprintf("%d: type %#02x @%d, %s", p.Index, p.Type, p.Start, humanSize(p.bytes())))
	}
	return strings.Join(s, "; ")
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// decompressToSparse expands an .xz or .zst image into a temporary file,
// leaving all-zero blocks as holes so a mostly empty 4 GiB image costs
// only its data on disk.
func decompressToSparse(ctx context.Context, source, compression string, o Options, c *cleaner) (*os.File, error) {
	in, err := os.Open(source)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	r, closeDec, err := sparse.Decompress(in, compression)
	if err != nil {
		return nil, err
	}
	defer closeDec()
	out, err := c.tempFile(o, "base-*"+strings.TrimSuffix(filepath.Base(source), compression))
	if err != nil {
		return nil, err
	}
	o.progressf("decompressing %s to %s", filepath.Base(source), out.Name())
	n, err := sparse.Copy(ctx, out, r)
	if err != nil {
		return nil, fmt.Errorf("decompress %s after %d bytes (corrupt or incomplete download?): %w", compression, n, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("decompressed %s is empty", compression)
	}
	o.progressf("decompressed %s: %s", filepath.Base(source), humanSize(n))
	return out, nil
}

// fatTree turns a FAT filesystem into a tree: directories 0755, files 0644,
// owned by root, FAT's modification times.
func fatTree(fsys *fat.Reader) (*tree.Tree, error) {
	t := tree.New()
	err := fsys.Walk(func(e fat.Entry) error {
		if e.Dir {
			return t.Add(tree.Entry{Path: e.Path, Kind: tree.Dir, Mode: 0o755, ModTime: e.ModTime})
		}
		return t.Add(tree.Entry{Path: e.Path, Kind: tree.File, Mode: 0o644, ModTime: e.ModTime, Size: e.Size,
			Open: func() (io.ReadCloser, error) {
				r, err := fsys.Open(e)
				if err != nil {
					return nil, err
				}
				return io.NopCloser(r), nil
			}})
	})
	return t, err
}

// ext4Tree turns an ext4 filesystem into a tree with every inode's
// metadata. The root's lost+found is left out: it is filesystem
// bookkeeping that the writer makes anew, not content.
func ext4Tree(ctx context.Context, fsys *ext4.FS) (*tree.Tree, error) {
	t := tree.New()
	firstPath := map[uint32]string{} // inode -> first path, for hard links
	err := fsys.Walk(func(p string, in *ext4.Inode) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "lost+found" || strings.HasPrefix(p, "lost+found/") {
			return nil
		}
		e := tree.Entry{Path: p, Mode: modeBits(uint32(in.Mode)), UID: in.UID, GID: in.GID, ModTime: in.ModTime}
		x, err := fsys.Xattrs(in)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		e.Xattrs = x
		switch in.Type() {
		case ext4.TypeDir:
			e.Kind = tree.Dir
		case ext4.TypeRegular:
			if first, ok := firstPath[in.Num]; ok {
				e.Kind, e.Link = tree.Hardlink, first
				break
			}
			if in.Links > 1 {
				firstPath[in.Num] = p
			}

			e.Kind, e.Size = tree.File, int64(in.Size)
			e.Open = func() (io.ReadCloser, error) {
				r, err := fsys.Reader(in)
				if err != nil {
					return nil, err
				}
				return io.NopCloser(r), nil
			}
		case ext4.TypeSymlink:
			e.Kind = tree.Symlink
			if e.Link, err = fsys.Readlink(in); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		case ext4.TypeChar, ext4.TypeBlock:
			e.Kind = tree.CharDevice
			if in.Type() == ext4.TypeBlock {
				e.Kind = tree.BlockDevice
			}
			e.Major, e.Minor = in.Device()
		case ext4.TypeFIFO:
			e.Kind = tree.FIFO
		case ext4.TypeSocket:
			e.Kind = tree.Socket
		default:
			return fmt.Errorf("%s: inode %d has unknown file type %#o", p, in.Num, in.Mode)
		}
		return t.Add(e)
	})
	return t, err
}

// modeBits keeps the permission, setuid, setgid and sticky bits of a Unix
// mode in io/fs form.
func modeBits(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
