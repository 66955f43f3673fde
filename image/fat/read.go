package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

// ErrCorrupt marks a structure that does not make sense.
var ErrCorrupt = errors.New("corrupt FAT filesystem")

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// maxFATBytes bounds the allocation table held in memory (FAT32's 2^28
// clusters need 1 GiB; a 2 TiB boot partition is not a boot partition).
const maxFATBytes = 64 << 20

// Reader walks a FAT12, FAT16 or FAT32 filesystem whose bytes are not
// trusted. Raspberry Pi boot partitions are FAT32 on Raspberry Pi OS but
// FAT16 on small images (the A/B bootconfig partition), so one reader serves
// both; go-diskfs's reader only opens FAT32.
type Reader struct {
	r            io.ReaderAt
	size         int64
	typ          Type
	clusterSize  int64
	dataStart    int64
	clusterCount uint32
	rootStart    int64 // FAT12/16 fixed root directory
	rootSize     int64
	rootCluster  uint32 // FAT32
	fat          []byte
	label        string
}

// NewReader reads the boot sector and allocation table of the filesystem in
// the first size bytes of r.
func NewReader(r io.ReaderAt, size int64) (*Reader, error) {
	bs := make([]byte, 512)
	if size < 512 {
		return nil, corrupt("only %d bytes", size)
	}
	if _, err := r.ReadAt(bs, 0); err != nil {
		return nil, fmt.Errorf("read FAT boot sector: %w", err)
	}
	if bs[bsSignature] != 0x55 || bs[bsSignature+1] != 0xAA {
		return nil, errors.New("no FAT boot sector (missing 55 AA signature)")
	}
	p := readBPB(bs)
	bps := int64(p.bytesPerSector)
	spc := int64(p.sectorsPerCluster)
	reserved := int64(p.reserved)
	nfats := int64(p.fats)
	rootEntries := int64(p.rootEntries)
	totSec := int64(p.totalSectors)
	fatSz := int64(p.fatSectors)
	if bps < 512 || bps > 4096 || bps&(bps-1) != 0 || spc == 0 || spc&(spc-1) != 0 || reserved == 0 || nfats == 0 || fatSz == 0 {
		return nil, fmt.Errorf("no FAT filesystem (bytes/sector %d, sectors/cluster %d, reserved %d, FATs %d, FAT size %d)", bps, spc, reserved, nfats, fatSz)
	}
	rootSectors := (rootEntries*dirEntrySize + bps - 1) / bps
	meta := reserved + nfats*fatSz + rootSectors
	if totSec <= meta {
		return nil, corrupt("%d sectors, %d of them metadata", totSec, meta)
	}
	if totSec*bps > size {
		return nil, corrupt("filesystem of %d bytes in a %d-byte partition (truncated image?)", totSec*bps, size)
	}
	clusters := (totSec - meta) / spc
	fs := &Reader{r: r, size: size, clusterSize: spc * bps, dataStart: meta * bps, clusterCount: uint32(clusters)}
	fs.typ = typeForClusters(uint32(clusters))
	ext := extBPB16
	if fs.typ == FAT32 {
		ext = extBPB32
		fs.rootCluster = p.rootCluster
	} else {
		fs.rootStart = (reserved + nfats*fatSz) * bps
		fs.rootSize = rootSectors * bps
	}
	if bs[ext+extBootSig] == extBootSigValue {
		fs.label = strings.TrimRight(string(bs[ext+extLabel:ext+extLabel+labelLen]), " ")
	}
	fatBytes := fatSz * bps
	if fatBytes > maxFATBytes {
		return nil, fmt.Errorf("FAT of %d bytes is too large for a boot partition", fatBytes)
	}
	need := int64(clusters+2) * 4
	switch fs.typ {
	case FAT12:
		need = (int64(clusters+2)*3+1)/2 + 1
	case FAT16:
		need = int64(clusters+2) * 2
	}
	if need > fatBytes {
		return nil, corrupt("FAT of %d bytes cannot map %d clusters", fatBytes, clusters)
	}
	fs.fat = make([]byte, fatBytes)
	if _, err := r.ReadAt(fs.fat, reserved*bps); err != nil {
		return nil, fmt.Errorf("read FAT: %w", err)
	}
	return fs, nil
}

// Type is FAT12, FAT16 or FAT32, decided by cluster count as the
// specification says.
func (fs *Reader) Type() Type { return fs.typ }

// Label is the volume label from the boot sector (e.g. "bootfs").
func (fs *Reader) Label() string { return fs.label }

// next returns the cluster after c and whether the chain goes on.
func (fs *Reader) next(c uint32) (uint32, bool) {
	le := binary.LittleEndian
	var n, eoc uint32
	switch fs.typ {
	case FAT12:
		v := le.Uint16(fs.fat[c+c/2:])
		if c&1 == 1 {
			n = uint32(v >> 4)
		} else {
			n = uint32(v & 0xFFF)
		}
		eoc = eocMin12
	case FAT16:
		n, eoc = uint32(le.Uint16(fs.fat[c*2:])), eocMin16
	default:
		n, eoc = le.Uint32(fs.fat[c*4:])&fat32Mask, eocMin32
	}
	return n, n < eoc
}

// chain lists the clusters of a file starting at first.
func (fs *Reader) chain(first uint32, limit int64) ([]uint32, error) {
	var out []uint32
	for c, ok := first, true; ok; c, ok = fs.next(c) {
		if c < 2 || c >= fs.clusterCount+2 {
			return nil, corrupt("cluster %d outside 2..%d", c, fs.clusterCount+1)
		}
		if uint32(len(out)) > fs.clusterCount || int64(len(out))*fs.clusterSize > limit {
			return nil, corrupt("cluster chain from %d is longer than its file or loops", first)
		}
		out = append(out, c)
	}
	return out, nil
}

// chainReader reads a chain of clusters as one stream.
type chainReader struct {
	fs       *Reader
	clusters []uint32
	size     int64
}

func (c *chainReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	done := 0
	for done < len(p) && off+int64(done) < c.size {
		pos := off + int64(done)
		idx := pos / c.fs.clusterSize
		in := pos % c.fs.clusterSize
		n := min(int64(len(p)-done), c.fs.clusterSize-in, c.size-pos)
		phys := c.fs.dataStart + int64(c.clusters[idx]-2)*c.fs.clusterSize + in
		if phys+n > c.fs.size {
			return done, corrupt("cluster %d past the end of the partition", c.clusters[idx])
		}
		m, err := c.fs.r.ReadAt(p[done:done+int(n)], phys)
		done += m
		if m < int(n) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return done, err
		}
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// Entry is a file or directory.
type Entry struct {
	Path    string // slash-separated, relative ("overlays/foo.dtbo")
	Dir     bool
	Size    int64
	ModTime time.Time // FAT keeps local time without a zone; read as UTC
	first   uint32
}

// Open returns a reader of a file's contents.
func (fs *Reader) Open(e Entry) (*io.SectionReader, error) {
	if e.Dir {
		return nil, fmt.Errorf("%s is a directory", e.Path)
	}
	if e.Size == 0 {
		return io.NewSectionReader(&chainReader{fs: fs}, 0, 0), nil
	}
	cl, err := fs.chain(e.first, e.Size+fs.clusterSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e.Path, err)
	}
	if int64(len(cl))*fs.clusterSize < e.Size {
		return nil, corrupt("%s: %d bytes in a chain of %d clusters", e.Path, e.Size, len(cl))
	}
	return io.NewSectionReader(&chainReader{fs: fs, clusters: cl, size: e.Size}, 0, e.Size), nil
}

// maxDirBytes bounds a directory read into memory (65536 entries is FAT's
// own limit).
const maxDirBytes = 65536 * dirEntrySize

// Walk calls fn for every file and directory, depth first with each
// directory's names in byte order (image/tree's path order).
func (fs *Reader) Walk(fn func(Entry) error) error {
	var root []byte
	if fs.typ == FAT32 {
		cl, err := fs.chain(fs.rootCluster, maxDirBytes)
		if err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
		cr := &chainReader{fs: fs, clusters: cl, size: int64(len(cl)) * fs.clusterSize}
		root = make([]byte, cr.size)
		if _, err := cr.ReadAt(root, 0); err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
	} else {
		root = make([]byte, fs.rootSize)
		if _, err := fs.r.ReadAt(root, fs.rootStart); err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
	}
	return fs.walk("", root, 0, map[uint32]bool{}, fn)
}

func (fs *Reader) walk(dir string, data []byte, depth int, seen map[uint32]bool, fn func(Entry) error) error {
	if depth > 64 {
		return corrupt("directories nested deeper than 64 at %s", dir)
	}
	entries, err := parseDir(data)
	if err != nil {
		return fmt.Errorf("directory /%s: %w", dir, err)
	}
	for _, e := range entries {
		e.Path = path.Join(dir, e.Path)
		if err := fn(e); err != nil {
			return err
		}
		if !e.Dir {
			continue
		}
		if seen[e.first] {
			return corrupt("%s: directory cluster %d appears twice (a cycle)", e.Path, e.first)
		}
		seen[e.first] = true
		cl, err := fs.chain(e.first, maxDirBytes)
		if err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
		cr := &chainReader{fs: fs, clusters: cl, size: int64(len(cl)) * fs.clusterSize}
		sub := make([]byte, cr.size)
		if _, err := cr.ReadAt(sub, 0); err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
		if err := fs.walk(e.Path, sub, depth+1, seen, fn); err != nil {
			return err
		}
	}
	return nil
}

// parseDir decodes 32-byte directory records, joining long-name records
// onto the short entry they precede when their checksum matches.
func parseDir(data []byte) ([]Entry, error) {
	le := binary.LittleEndian
	var out []Entry
	var lfn []uint16
	var lfnSum byte
	lfnOK := false
	names := map[string]bool{}
	for off := 0; off+dirEntrySize <= len(data); off += dirEntrySize {
		r := data[off : off+dirEntrySize]
		if r[deName] == entryEnd {
			break
		}
		if r[deName] == entryFree {
			lfnOK = false
			continue
		}
		if r[deAttr]&0x3F == attrLFN {
			ord := r[0]
			part := make([]uint16, 0, lfnChars)
			for i := 0; i < lfnChars; i++ {
				part = append(part, le.Uint16(r[lfnCharOffset(i):]))
			}
			if ord&lfnLast != 0 {
				lfn, lfnSum, lfnOK = part, r[lfnChecksum], true
			} else if lfnOK && r[lfnChecksum] == lfnSum {
				lfn = append(part, lfn...)
			} else {
				lfnOK = false
			}
			continue
		}
		attr := r[deAttr]
		if attr&attrVolume != 0 {
			lfnOK = false
			continue
		}
		short := decodeShortName(r)
		name := short
		if lfnOK && checksum(r[deName:deName+11]) == lfnSum {
			for i, c := range lfn {
				if c == 0 {
					lfn = lfn[:i]
					break
				}
			}
			name = string(utf16.Decode(lfn))
		}
		lfnOK = false
		if name == "." || name == ".." {
			continue
		}
		if name == "" || strings.ContainsAny(name, "/\x00") {
			return nil, corrupt("invalid name %q", name)
		}
		if names[name] {
			return nil, corrupt("name %q appears twice", name)
		}
		names[name] = true
		first := uint32(le.Uint16(r[deClusterLo:])) | uint32(le.Uint16(r[deClusterHi:]))<<16
		e := Entry{Path: name, Dir: attr&attrDir != 0, Size: int64(le.Uint32(r[deSize:])), first: first,
			ModTime: fatTime(le.Uint16(r[deMDate:]), le.Uint16(r[deMTime:]))}
		if e.Dir {
			e.Size = 0
			if first == 0 {
				return nil, corrupt("directory %q without a cluster", name)
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// decodeShortName turns an 8.3 entry into "name.ext", honouring the
// lower-case flags Windows NT and Linux set for all-lower-case names.
func decodeShortName(r []byte) string {
	base := []byte(strings.TrimRight(string(r[deName:deName+8]), " "))
	ext := []byte(strings.TrimRight(string(r[deName+8:deName+11]), " "))
	if len(base) > 0 && base[0] == entryKanjiE5 {
		base[0] = entryFree
	}
	if r[deCase]&caseLowerBase != 0 {
		base = []byte(strings.ToLower(string(base)))
	}
	if r[deCase]&caseLowerExt != 0 {
		ext = []byte(strings.ToLower(string(ext)))
	}
	if len(ext) == 0 {
		return string(base)
	}
	return string(base) + "." + string(ext)
}
