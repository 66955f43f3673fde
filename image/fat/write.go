package fat

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
		g.reserved, g.rootEntries, minC, maxC = 4, 512, minClusters16, minClusters32-1
	case FAT32:
		g.reserved, minC, maxC = 32, minClusters32, 0x0FFFFFF5
	default:
		return geometry{}, fmt.Errorf("fat: unknown type %d (16 or 32)", typ)
	}
	rootSectors := g.rootEntries * dirEntrySize / sectorSize
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

// Write lays t down as a FAT filesystem of size bytes at offset 0 of w,
// which must read as zeros. Only regular files and directories can be
// stored; anything else is refused. Nothing is written when the tree does
// not fit.
//
// Why our own writer and not go-diskfs: go-diskfs stamps directory entries
// with time.Now (no reproducible builds) and its FAT16 output leaves a
// cluster marked used that fsck.fat reclaims. FAT is small enough to lay out
// in one planned pass: boot sector (+ FSInfo and backup boot sector on
// FAT32), two FATs, root directory, then directories and files in the tree's
// sorted path order on contiguous clusters. Names that are not plain
// upper-case 8.3 get VFAT long-name entries with a deterministic NAME~N.EXT
// alias.
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
			if err := alloc(n, max(int64(entries)*dirEntrySize, 1)); err != nil {
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
		le.PutUint32(fsinfo[fsiLeadSig:], fsiLeadValue)
		le.PutUint32(fsinfo[fsiStructSig:], fsiStructValue)
		le.PutUint32(fsinfo[fsiFree:], g.clusters-(next-2))
		le.PutUint32(fsinfo[fsiNextFree:], next)
		le.PutUint32(fsinfo[fsiTrailSig:], fsiTrailValue)
		fw.at(fsinfo, fsInfoSector*sectorSize)
		fw.at(boot, backupBootSector*sectorSize)
		fw.at(fsinfo, (backupBootSector+fsInfoSector)*sectorSize)
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
	// Entry 0 holds the media byte (0xF8) padded with ones, entry 1 an
	// end-of-chain mark.
	eoc := uint32(0xFFFF)
	if g.typ == FAT32 {
		eoc = fat32Mask
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

// The FAT32 boot sector points at these reserved sectors.
const (
	fsInfoSector     = 1
	backupBootSector = 6
)

func bootSector(g geometry, p Params, label string) []byte {
	b := make([]byte, sectorSize)
	le := binary.LittleEndian
	copy(b[bsJump:], []byte{0xEB, 0x3C, 0x90})
	copy(b[bsOEMName:], "LEKIWI  ")
	le.PutUint16(b[bsBytesPerSector:], sectorSize)
	b[bsSectorsPerClus] = byte(g.spc)
	le.PutUint16(b[bsReservedSectors:], uint16(g.reserved))
	b[bsFATCount] = 2
	le.PutUint16(b[bsRootEntries:], uint16(g.rootEntries))
	if g.totalSectors < 65536 {
		le.PutUint16(b[bsTotalSectors16:], uint16(g.totalSectors))
	} else {
		le.PutUint32(b[bsTotalSectors32:], g.totalSectors)
	}
	b[bsMedia] = 0xF8
	le.PutUint16(b[bsSectorsPerTrack:], 63)
	le.PutUint16(b[bsHeads:], 255)
	le.PutUint32(b[bsHiddenSectors:], p.HiddenSectors)
	if label == "" {
		label = "NO NAME"
	}
	ext := b[extBPB16:]
	if g.typ == FAT16 {
		le.PutUint16(b[bsFATSectors16:], uint16(g.fatSectors))
	} else {
		b[bsJump+1] = 0x58 // jump over the longer FAT32 BPB
		le.PutUint32(b[bsFATSectors32:], g.fatSectors)
		le.PutUint32(b[bsRootCluster:], 2)
		le.PutUint16(b[bsFSInfoSector:], fsInfoSector)
		le.PutUint16(b[bsBackupBoot:], backupBootSector)
		ext = b[extBPB32:]
	}
	ext[extDrive] = 0x80
	ext[extBootSig] = extBootSigValue
	le.PutUint32(ext[extVolumeID:], p.VolumeID)
	copy(ext[extLabel:extLabel+labelLen], fmt.Sprintf("%-11s", label))
	copy(ext[extFSType:extFSType+8], fmt.Sprintf("FAT%-5d", g.typ))
	b[bsSignature], b[bsSignature+1] = 0x55, 0xAA
	return b
}

func shortEntry(name [11]byte, attr byte, cluster uint32, size uint32, mtime time.Time) []byte {
	e := make([]byte, dirEntrySize)
	copy(e[deName:], name[:])
	e[deAttr] = attr
	d, tm := dosTime(mtime)
	le := binary.LittleEndian
	le.PutUint16(e[deCTime:], tm)
	le.PutUint16(e[deCDate:], d)
	le.PutUint16(e[deADate:], d)
	le.PutUint16(e[deClusterHi:], uint16(cluster>>16))
	le.PutUint16(e[deMTime:], tm)
	le.PutUint16(e[deMDate:], d)
	le.PutUint16(e[deClusterLo:], uint16(cluster))
	le.PutUint32(e[deSize:], size)
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
		out = append(out, shortEntry(v, attrVolume, 0, 0, mt(n.e))...)
	}
	if !isRoot {
		out = append(out, shortEntry(dotName("."), attrDir, n.first, 0, mt(n.e))...)
		out = append(out, shortEntry(dotName(".."), attrDir, parent, 0, mt(n.e))...)
	}
	used := map[[11]byte]bool{}
	for _, c := range n.children {
		short, exact, err := shortName(c.name, used)
		if err != nil {
			return nil, fmt.Errorf("fat: %s: %w", c.e.Path, err)
		}
		used[short] = true
		if !exact {
			out = append(out, lfnEntries(c.name, checksum(short[:]))...)
		}
		attr, size := byte(attrArchive), uint32(c.e.Size)
		if c.e.Kind == tree.Dir {
			attr, size = attrDir, 0
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

func lfnCount(name string) int {
	var dummy map[[11]byte]bool
	if _, exact, err := shortName(name, dummy); err == nil && exact {
		return 0
	}
	return (len(utf16.Encode([]rune(name))) + lfnChars - 1) / lfnChars
}

func lfnEntries(name string, sum byte) []byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + lfnChars - 1) / lfnChars
	padded := make([]uint16, n*lfnChars)
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
	out := make([]byte, 0, n*dirEntrySize)
	for seq := n; seq >= 1; seq-- {
		e := make([]byte, dirEntrySize)
		e[0] = byte(seq)
		if seq == n {
			e[0] |= lfnLast
		}
		e[deAttr] = attrLFN
		e[lfnChecksum] = sum
		chunk := padded[(seq-1)*lfnChars : seq*lfnChars]
		for i, c := range chunk {
			binary.LittleEndian.PutUint16(e[lfnCharOffset(i):], c)
		}
		out = append(out, e...)
	}
	return out
}
