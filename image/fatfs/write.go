// Package fatfs writes a tree.Tree as a fresh FAT16 or FAT32 filesystem into
// a partition-sized region of an image, and reads and rewrites files of such
// a filesystem in place (same length: no FAT or directory change).
//
// Why our own and not go-diskfs: go-diskfs stamps directory entries with
// time.Now (no reproducible builds) and its FAT16 output leaves a cluster
// marked used that fsck.fat reclaims. FAT is small enough to lay out in one
// planned pass: boot sector (+ FSInfo and backup boot sector on FAT32), two
// FATs, root directory, then directories and files in the tree's sorted path
// order on contiguous clusters. Names that are not plain upper-case 8.3 get
// VFAT long-name entries with a deterministic NAME~N.EXT alias.
//
// Write assumes the region reads as zeros (a fresh sparse image file).
package fatfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/lekiwi/heartbeat/image/tree"
)

// Type is the FAT variant.
type Type int

const (
	FAT16 Type = 16
	FAT32 Type = 32
)

const sectorSize = 512

// ErrNoSpace reports that the tree does not fit.
var ErrNoSpace = errors.New("fat: not enough space")

// Params are the choices Write leaves to its caller.
type Params struct {
	Type     Type
	Label    string // at most 11 characters, stored upper-case
	VolumeID uint32 // derive from the build's inputs
	// Time stamps entries without a modification time.
	Time time.Time
	// HiddenSectors is the partition's first LBA, recorded in the BPB.
	HiddenSectors uint32
}

type geometry struct {
	typ           Type
	totalSectors  uint32
	spc           uint32 // sectors per cluster
	reserved      uint32
	fatSectors    uint32
	rootEntries   uint32 // FAT16 only
	clusters      uint32 // data clusters (numbered 2..clusters+1)
	dataStart     uint32 // first data sector
	rootDirSector uint32 // FAT16 root directory sector
}

func (g geometry) clusterBytes() int64 { return int64(g.spc) * sectorSize }

func (g geometry) clusterOffset(c uint32) int64 {
	return (int64(g.dataStart) + int64(c-2)*int64(g.spc)) * sectorSize
}

func planGeometry(size int64, typ Type) (geometry, error) {
	if size/sectorSize > 1<<32-1 {
		return geometry{}, fmt.Errorf("fat: a %d-byte region is too large", size)
	}
	g := geometry{typ: typ, totalSectors: uint32(size / sectorSize)}
	var minC, maxC uint32
	switch typ {
	case FAT16:
		g.reserved, g.rootEntries, minC, maxC = 4, 512, 4085, 65524
	case FAT32:
		g.reserved, minC, maxC = 32, 65525, 0x0FFFFFF5
	default:
		return geometry{}, fmt.Errorf("fat: unknown type %d (16 or 32)", typ)
	}
	rootSectors := g.rootEntries * 32 / sectorSize
	// Largest cluster (up to 32 KiB) that still gives a legal cluster count
	// for the type: fewer, bigger clusters keep the FAT small.
	for spc := uint32(64); spc >= 1; spc /= 2 {
		g.spc = spc
		entry := int64(2)
		if typ == FAT32 {
			entry = 4
		}
		// Grow the FAT until it covers every cluster the rest leaves.
		g.fatSectors, g.clusters = 1, 0
		for {
			data := int64(g.totalSectors) - int64(g.reserved) - int64(rootSectors) - 2*int64(g.fatSectors)
			if data <= 0 {
				g.clusters = 0
				break
			}
			g.clusters = uint32(data / int64(spc))
			if int64(g.fatSectors)*sectorSize/entry >= int64(g.clusters)+2 {
				break
			}
			g.fatSectors = uint32(((int64(g.clusters)+2)*entry + sectorSize - 1) / sectorSize)
		}
		if g.clusters >= minC && g.clusters <= maxC {
			g.rootDirSector = g.reserved + 2*g.fatSectors
			g.dataStart = g.rootDirSector + rootSectors
			return g, nil
		}
	}
	return geometry{}, fmt.Errorf("%w: a %d MiB region cannot hold a valid FAT%d (it needs %d–%d clusters)", ErrNoSpace, size>>20, typ, minC, maxC)
}

type fnode struct {
	e        *tree.Entry
	name     string // base name
	children []*fnode
	first    uint32 // first cluster, 0 for empty files and the FAT16 root
	nclus    uint32
	dirData  []byte
}

// Write lays t down as a FAT filesystem of size bytes at offset 0 of w.
// Only regular files and directories can be stored; anything else is
// refused. Nothing is written when the tree does not fit.
func Write(w io.WriterAt, size int64, t *tree.Tree, p Params) error {
	g, err := planGeometry(size, p.Type)
	if err != nil {
		return err
	}
	label := strings.ToUpper(p.Label)
	if len(label) > 11 || strings.ContainsAny(label, `*?/\|.,;:+=<>[]"`) {
		return fmt.Errorf("fat: label %q must be at most 11 characters without punctuation", p.Label)
	}
	nodes := map[string]*fnode{}
	var order []*fnode
	for _, e := range t.Entries() {
		n := &fnode{e: e, name: path.Base(e.Path)}
		switch e.Kind {
		case tree.File, tree.Dir:
		default:
			return fmt.Errorf("fat: %s is a %s; a FAT filesystem holds only files and directories", e.Path, e.Kind)
		}
		if e.Path != "." {
			parent := nodes[path.Dir(e.Path)]
			if parent == nil || parent.e.Kind != tree.Dir {
				return fmt.Errorf("fat: %s has no parent directory in the tree", e.Path)
			}
			parent.children = append(parent.children, n)
		}
		nodes[e.Path] = n
		order = append(order, n)
	}
	root := nodes["."]
	cb := g.clusterBytes()
	next := uint32(2)
	alloc := func(n *fnode, bytes int64) error {
		c := uint32((bytes + cb - 1) / cb)
		if c == 0 {
			return nil
		}
		if int64(next)-2+int64(c) > int64(g.clusters) {
			return fmt.Errorf("%w: %s does not fit in the %d MiB FAT partition; give it more space", ErrNoSpace, n.e.Path, size>>20)
		}
		n.first, n.nclus = next, c
		next += c
		return nil
	}
	// Directory sizes are known from their children's names alone, so
	// clusters can be handed out in path order before rendering.
	for _, n := range order {
		switch {
		case n.e.Kind == tree.Dir:
			entries := 0
			if n != root {
				entries = 2
			} else if label != "" {
				entries = 1
			}
			for _, c := range n.children {
				entries += 1 + lfnCount(c.name)
			}
			if n == root && g.typ == FAT16 {
				if uint32(entries) > g.rootEntries {
					return fmt.Errorf("%w: the root directory needs %d entries, FAT16 holds %d", ErrNoSpace, entries, g.rootEntries)
				}
				continue
			}
			if err := alloc(n, max(int64(entries)*32, 1)); err != nil {
				return err
			}
		default:
			if err := alloc(n, n.e.Size); err != nil {
				return err
			}
		}
	}
	for _, n := range order {
		if n.e.Kind != tree.Dir {
			continue
		}
		var parent uint32
		if n != root {
			if pn := nodes[path.Dir(n.e.Path)]; pn != root {
				parent = pn.first
			}
		}
		if n.dirData, err = renderDir(n, n == root, parent, label, p.Time); err != nil {
			return err
		}
	}

	fw := &failWriter{w: w}
	boot := bootSector(g, p, label)
	fw.at(boot, 0)
	if g.typ == FAT32 {
		fsinfo := make([]byte, sectorSize)
		le := binary.LittleEndian
		le.PutUint32(fsinfo[0:], 0x41615252)
		le.PutUint32(fsinfo[484:], 0x61417272)
		le.PutUint32(fsinfo[488:], g.clusters-(next-2))
		le.PutUint32(fsinfo[492:], next)
		le.PutUint32(fsinfo[508:], 0xAA550000)
		fw.at(fsinfo, sectorSize)
		fw.at(boot, 6*sectorSize)
		fw.at(fsinfo, 7*sectorSize)
	}
	fat := renderFAT(g, order)
	fw.at(fat, int64(g.reserved)*sectorSize)
	fw.at(fat, int64(g.reserved+g.fatSectors)*sectorSize)
	buf := make([]byte, 1<<20)
	for _, n := range order {
		switch {
		case n.e.Kind == tree.Dir && n.first == 0:
			fw.at(n.dirData, int64(g.rootDirSector)*sectorSize)
		case n.e.Kind == tree.Dir:
			fw.at(n.dirData, g.clusterOffset(n.first))
		case n.nclus > 0:
			if err := writeFile(fw, n, g.clusterOffset(n.first), buf); err != nil {
				return err
			}
		}
		if fw.err != nil {
			return fw.err
		}
	}
	return fw.err
}

type failWriter struct {
	w   io.WriterAt
	err error
}

func (f *failWriter) at(b []byte, off int64) {
	if f.err != nil {
		return
	}
	if _, err := f.w.WriteAt(b, off); err != nil {
		f.err = fmt.Errorf("write FAT at byte %d: %w", off, err)
	}
}

func writeFile(fw *failWriter, n *fnode, off int64, buf []byte) error {
	rc, err := n.e.Open()
	if err != nil {
		return fmt.Errorf("open %s for the FAT image: %w", n.e.Path, err)
	}
	defer rc.Close()
	var total int64
	for {
		k, err := rc.Read(buf)
		if k > 0 {
			if total+int64(k) > n.e.Size {
				return fmt.Errorf("%s: content is longer than the %d bytes the tree said (did it change while building?)", n.e.Path, n.e.Size)
			}
			fw.at(buf[:k], off+total)
			total += int64(k)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", n.e.Path, err)
		}
	}
	if total != n.e.Size {
		return fmt.Errorf("%s: content is %d bytes, the tree said %d (did it change while building?)", n.e.Path, total, n.e.Size)
	}
	return fw.err
}

func renderFAT(g geometry, order []*fnode) []byte {
	fat := make([]byte, g.fatSectors*sectorSize)
	le := binary.LittleEndian
	put := func(c, v uint32) {
		if g.typ == FAT16 {
			le.PutUint16(fat[2*c:], uint16(v))
		} else {
			le.PutUint32(fat[4*c:], v)
		}
	}
	eoc := uint32(0xFFFF)
	if g.typ == FAT32 {
		eoc = 0x0FFFFFFF
		put(0, 0x0FFFFFF8)
	} else {
		put(0, 0xFFF8)
	}
	put(1, eoc)
	for _, n := range order {
		for i := uint32(0); i < n.nclus; i++ {
			c := n.first + i
			if i == n.nclus-1 {
				put(c, eoc)
			} else {
				put(c, c+1)
			}
		}
	}
	return fat
}

func bootSector(g geometry, p Params, label string) []byte {
	b := make([]byte, sectorSize)
	le := binary.LittleEndian
	copy(b[0:], []byte{0xEB, 0x3C, 0x90})
	copy(b[3:], "LEKIWI  ")
	le.PutUint16(b[11:], sectorSize)
	b[13] = byte(g.spc)
	le.PutUint16(b[14:], uint16(g.reserved))
	b[16] = 2
	le.PutUint16(b[17:], uint16(g.rootEntries))
	if g.totalSectors < 65536 {
		le.PutUint16(b[19:], uint16(g.totalSectors))
	} else {
		le.PutUint32(b[32:], g.totalSectors)
	}
	b[21] = 0xF8
	le.PutUint16(b[24:], 63)
	le.PutUint16(b[26:], 255)
	le.PutUint32(b[28:], p.HiddenSectors)
	if label == "" {
		label = "NO NAME"
	}
	ext := b[36:]
	if g.typ == FAT16 {
		le.PutUint16(b[22:], uint16(g.fatSectors))
	} else {
		b[1] = 0x58
		le.PutUint32(b[36:], g.fatSectors)
		le.PutUint32(b[44:], 2) // root cluster
		le.PutUint16(b[48:], 1) // FSInfo sector
		le.PutUint16(b[50:], 6) // backup boot sector
		ext = b[64:]
	}
	ext[0] = 0x80
	ext[2] = 0x29
	le.PutUint32(ext[3:], p.VolumeID)
	copy(ext[7:18], fmt.Sprintf("%-11s", label))
	copy(ext[18:26], fmt.Sprintf("FAT%-5d", g.typ))
	b[510], b[511] = 0x55, 0xAA
	return b
}

// dosTime encodes t (UTC) for a directory entry, clamped to FAT's
// 1980–2107 range.
func dosTime(t time.Time) (date, tm uint16) {
	t = t.UTC()
	if t.Year() < 1980 {
		return 1<<5 | 1, 0
	}
	if t.Year() > 2107 {
		return 127<<9 | 12<<5 | 31, 23<<11 | 59<<5 | 29
	}
	return uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day()), uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
}

func shortEntry(name [11]byte, attr byte, cluster uint32, size uint32, mtime time.Time) []byte {
	e := make([]byte, 32)
	copy(e, name[:])
	e[11] = attr
	d, tm := dosTime(mtime)
	le := binary.LittleEndian
	le.PutUint16(e[14:], tm)
	le.PutUint16(e[16:], d)
	le.PutUint16(e[18:], d)
	le.PutUint16(e[20:], uint16(cluster>>16))
	le.PutUint16(e[22:], tm)
	le.PutUint16(e[24:], d)
	le.PutUint16(e[26:], uint16(cluster))
	le.PutUint32(e[28:], size)
	return e
}

func renderDir(n *fnode, isRoot bool, parent uint32, label string, now time.Time) ([]byte, error) {
	var out []byte
	mt := func(e *tree.Entry) time.Time {
		if e.ModTime.IsZero() {
			return now
		}
		return e.ModTime
	}
	if isRoot && label != "" {
		var v [11]byte
		copy(v[:], fmt.Sprintf("%-11s", label))
		out = append(out, shortEntry(v, 0x08, 0, 0, mt(n.e))...)
	}
	if !isRoot {
		out = append(out, shortEntry(dotName("."), 0x10, n.first, 0, mt(n.e))...)
		out = append(out, shortEntry(dotName(".."), 0x10, parent, 0, mt(n.e))...)
	}
	used := map[[11]byte]bool{}
	for _, c := range n.children {
		short, exact, err := shortName(c.name, used)
		if err != nil {
			return nil, fmt.Errorf("fat: %s: %w", c.e.Path, err)
		}
		used[short] = true
		if !exact {
			out = append(out, lfnEntries(c.name, checksum(short))...)
		}
		attr, size := byte(0x20), uint32(c.e.Size)
		if c.e.Kind == tree.Dir {
			attr, size = 0x10, 0
		} else if c.e.Size > 1<<32-1 {
			return nil, fmt.Errorf("fat: %s is %d bytes, more than FAT's 4 GiB file limit", c.e.Path, c.e.Size)
		}
		out = append(out, shortEntry(short, attr, c.first, size, mt(c.e))...)
	}
	return out, nil
}

func dotName(s string) [11]byte {
	var v [11]byte
	copy(v[:], fmt.Sprintf("%-11s", s))
	return v
}

const shortChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~"

// shortName returns the 8.3 name for name, and whether it is name itself
// (no long-name entries needed).
func shortName(name string, used map[[11]byte]bool) ([11]byte, bool, error) {
	var v [11]byte
	if name == "" || name == "." || name == ".." || len(name) > 255 || strings.ContainsAny(name, `"*/:<>?\|`) {
		return v, false, fmt.Errorf("name %q cannot be stored on FAT", name)
	}
	for _, r := range name {
		if r < 0x20 {
			return v, false, fmt.Errorf("name %q has a control character", name)
		}
	}
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	clean := func(s string) string {
		var b strings.Builder
		for _, r := range strings.ToUpper(s) {
			if strings.ContainsRune(shortChars, r) {
				b.WriteRune(r)
			} else if r != ' ' && r != '.' {
				b.WriteByte('_')
			}
		}
		return b.String()
	}
	cb, ce := clean(base), clean(ext)
	exact := cb == base && ce == ext && len(cb) <= 8 && len(ce) <= 3 && len(cb) > 0
	if exact {
		copy(v[:], fmt.Sprintf("%-8s%-3s", cb, ce))
		if !used[v] {
			return v, true, nil
		}
	}
	if len(ce) > 3 {
		ce = ce[:3]
	}
	if cb == "" {
		cb = "_"
	}
	for i := 1; i < 1000000; i++ {
		tail := fmt.Sprintf("~%d", i)
		b := cb
		if len(b) > 8-len(tail) {
			b = b[:8-len(tail)]
		}
		copy(v[:], fmt.Sprintf("%-8s%-3s", b+tail, ce))
		if !used[v] {
			return v, false, nil
		}
	}
	return v, false, fmt.Errorf("no free short name for %q", name)
}

func checksum(short [11]byte) byte {
	var s byte
	for _, c := range short {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

func lfnCount(name string) int {
	var dummy map[[11]byte]bool
	if _, exact, err := shortName(name, dummy); err == nil && exact {
		return 0
	}
	return (len(utf16.Encode([]rune(name))) + 12) / 13
}

func lfnEntries(name string, sum byte) []byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + 12) / 13
	padded := make([]uint16, n*13)
	for i := range padded {
		switch {
		case i < len(u):
			padded[i] = u[i]
		case i == len(u):
			padded[i] = 0
		default:
			padded[i] = 0xFFFF
		}
	}
	out := make([]byte, 0, n*32)
	for seq := n; seq >= 1; seq-- {
		e := make([]byte, 32)
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40
		}
		e[11] = 0x0F
		e[13] = sum
		chunk := padded[(seq-1)*13 : seq*13]
		for i, c := range chunk {
			var off int
			switch {
			case i < 5:
				off = 1 + 2*i
			case i < 11:
				off = 14 + 2*(i-5)
			default:
				off = 28 + 2*(i-11)
			}
			binary.LittleEndian.PutUint16(e[off:], c)
		}
		out = append(out, e...)
	}
	return out
}
