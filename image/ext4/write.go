package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"

	"github.com/lekiwi/heartbeat/image/tree"
)

// BlockSize is the block size Write uses.
const BlockSize = 4096

// The rest of the geometry Write lays down.
const (
	blocksPerGroup = 32768
	inodeSize      = 256
	extraIsize     = 32
	inodeRatio     = 16384
	extentsPerLeaf = (BlockSize - extentEntrySize) / extentEntrySize
	descSize       = 32
)

// ErrNoSpace reports that the tree does not fit in the region.
var ErrNoSpace = errors.New("ext4: not enough space")

// Params are the choices Write leaves to its caller; all of them end up in
// the filesystem, so derive them from the build's inputs.
type Params struct {
	Label    string   // volume label, at most 16 bytes
	UUID     [16]byte // filesystem UUID
	HashSeed [16]byte // directory hash seed (unused by linear directories, kept deterministic)
	// Time stamps the superblock and any entry without a modification time.
	Time            time.Time
	ReservedPercent int  // blocks reserved for root, 0–50
	Journal         bool // write an internal journal (inode 8)
	// ZeroMetadata zeroes the inode tables so the region need not read as
	// zeros beforehand (rewriting a filesystem in place).
	ZeroMetadata bool
}

type dirent struct {
	name  string
	ino   uint32
	ftype uint8
}

type extent struct {
	logical uint32
	start   uint32
	length  uint32
}

type node struct {
	e        *tree.Entry
	ino      uint32
	links    int
	children []dirent // directories, "." and ".." first
	dirData  []byte   // directories: the rendered blocks
	nblocks  uint32   // data blocks
	extents  []extent
	leaves   []uint32 // extent leaf blocks when the extents do not fit the inode
	xattrs   []byte   // rendered in-inode xattr area (after the magic), or nil
	// xattrBlock names the attribute block laid out for the attributes
	// that do not fit the inode, or is nil; sharedBlock is where it went.
	xattrBlock  *xattrBlockKey
	sharedBlock *sharedXattrBlock
}

type geometry struct {
	blocks     uint32
	groups     uint32
	ipg        uint32
	gdtBlocks  uint32
	itBlocks   uint32
	inodeCount uint32
}

func hasSuper(g uint32) bool {
	if g <= 1 {
		return true
	}
	for _, b := range []uint32{3, 5, 7} {
		n := b
		for n < g {
			n *= b
		}
		if n == g {
			return true
		}
	}
	return false
}

// groupLayout returns the first block of group g's block bitmap, inode
// bitmap, inode table and data.
func (g geometry) groupLayout(grp uint32) (bb, ib, it, data uint32) {
	start := grp * blocksPerGroup
	if hasSuper(grp) {
		start += 1 + g.gdtBlocks
	}
	return start, start + 1, start + 2, start + 2 + g.itBlocks
}

func (g geometry) groupEnd(grp uint32) uint32 {
	end := (grp + 1) * blocksPerGroup
	if end > g.blocks {
		end = g.blocks
	}
	return end
}

func planGeometry(size int64, inodesNeeded uint32) (geometry, error) {
	blocks64 := size / BlockSize
	if blocks64 < 256 {
		return geometry{}, fmt.Errorf("%w: a %d-byte region is too small for ext4 (at least 1 MiB)", ErrNoSpace, size)
	}
	if blocks64 > 1<<32-1 {
		return geometry{}, fmt.Errorf("ext4: a %d-byte region is larger than 16 TiB, which this writer does not support", size)
	}
	var g geometry
	g.blocks = uint32(blocks64)
	for {
		g.groups = (g.blocks + blocksPerGroup - 1) / blocksPerGroup
		total := uint64(g.blocks) * BlockSize / inodeRatio
		if want := uint64(inodesNeeded) + uint64(inodesNeeded)/4 + 16; want > total {
			total = want
		}
		ipg := (total + uint64(g.groups) - 1) / uint64(g.groups)
		ipg = (ipg + 15) / 16 * 16
		if ipg > BlockSize*8 {
			return geometry{}, fmt.Errorf("%w: %d files need more inodes than a %d-byte ext4 can hold; give the partition more space", ErrNoSpace, inodesNeeded, size)
		}
		g.ipg = uint32(ipg)
		g.itBlocks = g.ipg * inodeSize / BlockSize
		g.gdtBlocks = (g.groups*descSize + BlockSize - 1) / BlockSize
		_, _, _, data := g.groupLayout(g.groups - 1)
		if data+16 <= g.blocks {
			break
		}
		if g.groups == 1 {
			return geometry{}, fmt.Errorf("%w: a %d-byte region cannot hold ext4 metadata for %d inodes", ErrNoSpace, size, inodesNeeded)
		}
		// The last group is too short for its own metadata: leave it out.
		g.blocks = (g.groups - 1) * blocksPerGroup
	}
	g.inodeCount = g.ipg * g.groups
	return g, nil
}

// allocator hands out data blocks in order, skipping group metadata.
type allocator struct {
	g    geometry
	next uint32
	used []byte // block bitmap of the whole filesystem
}

func newAllocator(g geometry) *allocator {
	a := &allocator{g: g, used: make([]byte, (g.blocks+7)/8)}
	for grp := uint32(0); grp < g.groups; grp++ {
		_, _, _, data := g.groupLayout(grp)
		for b := grp * blocksPerGroup; b < data; b++ {
			a.mark(b)
		}
	}
	a.next = 0
	return a
}

func (a *allocator) mark(b uint32) { a.used[b/8] |= 1 << (b % 8) }

func (a *allocator) isUsed(b uint32) bool { return a.used[b/8]&(1<<(b%8)) != 0 }

// alloc returns n blocks as extents starting at logical block 0.
func (a *allocator) alloc(n uint32) ([]extent, error) {
	var out []extent
	var logical uint32
	for n > 0 {
		for a.next < a.g.blocks && a.isUsed(a.next) {
			a.next++
		}
		if a.next >= a.g.blocks {
			return nil, ErrNoSpace
		}
		start := a.next
		var l uint32
		for l < n && l < maxInitExtent && a.next < a.g.blocks && !a.isUsed(a.next) {
			a.mark(a.next)
			a.next++
			l++
		}
		if k := len(out); k > 0 && out[k-1].start+out[k-1].length == start && out[k-1].length+l <= maxInitExtent {
			out[k-1].length += l
		} else {
			out = append(out, extent{logical: logical, start: start, length: l})
		}
		logical += l
		n -= l
	}
	return out, nil
}

func (a *allocator) usedCount(from, to uint32) uint32 {
	var n uint32
	for b := from; b < to; b++ {
		if a.isUsed(b) {
			n++
		}
	}
	return n
}

func journalBlocks(blocks uint32) uint32 {
	switch {
	case blocks < 2048:
		return 0
	case blocks < 32768:
		return 1024
	case blocks < 256*1024:
		return 4096
	case blocks < 512*1024:
		return 8192
	case blocks < 4096*1024:
		return 16384
	default:
		return 32768
	}
}

func ftypeOf(k tree.Kind) uint8 {
	switch k {
	case tree.File, tree.Hardlink:
		return dirTypeRegular
	case tree.Dir:
		return dirTypeDir
	case tree.CharDevice:
		return dirTypeChar
	case tree.BlockDevice:
		return dirTypeBlock
	case tree.FIFO:
		return dirTypeFIFO
	case tree.Socket:
		return dirTypeSocket
	case tree.Symlink:
		return dirTypeSymlink
	}
	return 0
}

// Estimate returns the data blocks (files, directories, symlinks,
// attribute blocks) and the inodes the tree needs, before filesystem
// metadata and journal: the basis for sizing a partition. Directories are
// counted as Write fills them, lost+found included; extent tree leaves of
// files split into more than four extents are not.
func Estimate(t *tree.Tree) (dataBytes int64, inodes int) {
	var shared xattrBlocks
	dirs := map[string]*dirFill{".": newDirFill(), "lost+found": newDirFill()}
	dirs["."].add("lost+found") // Write makes it, and lists it first
	for _, e := range t.Entries() {
		if e.Kind != tree.Hardlink && len(e.Xattrs) > 0 {
			// An attribute set Write refuses is not counted: the build
			// stops there with the reason.
			if _, block, err := layoutXattrs(e.Xattrs); err == nil && block != nil {
				if _, isNew := shared.use(blockKey(block), e.Xattrs); isNew {
					dataBytes += BlockSize
				}
			}
		}
		switch e.Kind {
		case tree.File:
			dataBytes += (e.Size + BlockSize - 1) / BlockSize * BlockSize
			inodes++
		case tree.Dir:
			inodes++
		case tree.Symlink:
			if len(e.Link) >= 60 {
				dataBytes += BlockSize
			}
			inodes++
		case tree.Hardlink:
		default:
			inodes++
		}
		if e.Path == "." || e.Path == "lost+found" {
			continue
		}
		if e.Kind == tree.Dir {
			dirs[e.Path] = newDirFill()
		}
		if d := dirs[path.Dir(e.Path)]; d != nil {
			d.add(path.Base(e.Path))
		}
	}
	for _, d := range dirs {
		dataBytes += d.blocks * BlockSize
	}
	return dataBytes, inodes + firstInode
}

// dirFill follows how renderDir fills a directory's blocks, for Estimate.
type dirFill struct{ blocks, used int64 }

func newDirFill() *dirFill {
	d := &dirFill{}
	d.add(".")
	d.add("..")
	return d
}

func (d *dirFill) add(name string) {
	rec := int64(direntLen(name))
	if d.blocks == 0 || d.used+rec > BlockSize {
		d.blocks, d.used = d.blocks+1, 0
	}
	d.used += rec
}

// direntLen is the size of a directory entry for name: header and name,
// padded to 4 bytes.
func direntLen(name string) int { return (deName + len(name) + 3) &^ 3 }

// Overhead returns the bytes of metadata (inode tables, bitmaps,
// descriptors, journal) an ext4 of the given size carries for the given
// number of inodes, so callers can size a partition for its content.
func Overhead(size int64, inodes int, journal bool) int64 {
	g, err := planGeometry(size, uint32(inodes))
	if err != nil {
		return 0
	}
	var n int64
	for grp := uint32(0); grp < g.groups; grp++ {
		_, _, _, data := g.groupLayout(grp)
		n += int64(data - grp*blocksPerGroup)
	}
	if journal {
		n += int64(journalBlocks(g.blocks))
	}
	return n * BlockSize
}

// Write lays t down as an ext4 filesystem of size bytes (rounded down to
// whole blocks) at offset 0 of w. Nothing is written when the tree does not
// fit or is malformed.
//
// Why our own writer and not go-diskfs: go-diskfs v1.9.4 ext4 cannot write
// hard links or device nodes (Mknod and Link return ErrNotImplemented), has
// no way to write extended attributes (security.capability), stamps new
// entries with time.Now (no reproducible output), and rewrites a directory
// for every file it adds. A root filesystem needs all of that, so this
// writer lays the filesystem out in one planned pass instead.
func Write(w io.WriterAt, size int64, t *tree.Tree, p Params) error {
	if len(p.Label) > 16 {
		return fmt.Errorf("ext4 label %q is longer than 16 bytes", p.Label)
	}
	if p.ReservedPercent < 0 || p.ReservedPercent > 50 {
		return fmt.Errorf("ext4 reserved blocks %d%% outside 0–50", p.ReservedPercent)
	}
	nodes, byPath, err := collect(t, p.Time)
	if err != nil {
		return err
	}
	var maxIno uint32
	for _, n := range nodes {
		maxIno = max(maxIno, n.ino)
	}
	g, err := planGeometry(size, maxIno)
	if err != nil {
		return err
	}
	if maxIno > g.inodeCount {
		return fmt.Errorf("%w: %d inodes needed, %d available", ErrNoSpace, maxIno, g.inodeCount)
	}
	a := newAllocator(g)
	noSpace := func() error {
		need, inodes := Estimate(t)
		return fmt.Errorf("%w: the tree (%d MiB of data and directories in %d inodes) does not fit in %d MiB of ext4; give the partition more space", ErrNoSpace, need>>20, inodes, size>>20)
	}
	var journal *node
	if p.Journal {
		jb := journalBlocks(g.blocks)
		if jb == 0 {
			return fmt.Errorf("%w: a %d-byte ext4 is too small for a journal", ErrNoSpace, size)
		}
		journal = &node{e: &tree.Entry{Kind: tree.File, Mode: 0o600, ModTime: p.Time, Size: int64(jb) * BlockSize}, ino: journalInode, links: 1, nblocks: jb}
		if journal.extents, err = a.alloc(jb); err != nil {
			return noSpace()
		}
		if err := allocLeaves(a, journal); err != nil {
			return err
		}
	}
	var xattrBlocks xattrBlocks
	for _, n := range nodes {
		if n.e.Kind == tree.Hardlink {
			continue
		}
		if n.xattrBlock != nil {
			b, isNew := xattrBlocks.use(*n.xattrBlock, n.e.Xattrs)
			if isNew {
				ex, err := a.alloc(1)
				if err != nil {
					return noSpace()
				}
				b.at = ex[0].start
			}
			n.sharedBlock, n.xattrBlock = b, nil
		}
		if n.e.Kind == tree.Dir {
			n.dirData, err = renderDir(n.children, n.e.Path)
			if err != nil {
				return err
			}
			n.nblocks = uint32(len(n.dirData) / BlockSize)
		}
		if n.nblocks == 0 {
			continue
		}
		if n.extents, err = a.alloc(n.nblocks); err != nil {
			return noSpace()
		}
		if err := allocLeaves(a, n); err != nil {
			if errors.Is(err, ErrNoSpace) {
				return noSpace()
			}
			return err
		}
	}
	_ = byPath

	// Everything is planned: write.
	fw := &failWriter{w: w}
	reserved := uint64(g.blocks) * uint64(p.ReservedPercent) / 100
	usedBlocks := a.usedCount(0, g.blocks)
	sb := superblock(g, p, uint32(reserved), g.blocks-usedBlocks, g.inodeCount-maxIno, journal)
	gdt := make([]byte, g.gdtBlocks*BlockSize)
	for grp := uint32(0); grp < g.groups; grp++ {
		bb, ib, it, _ := g.groupLayout(grp)
		first, end := grp*blocksPerGroup, g.groupEnd(grp)
		free := (end - first) - a.usedCount(first, end)
		lo, hi := grp*g.ipg+1, (grp+1)*g.ipg
		var usedInodes, dirs uint32
		for ino := lo; ino <= hi && ino <= maxIno; ino++ {
			usedInodes++
		}
		for _, n := range nodes {
			if n.e.Kind == tree.Dir && n.ino >= lo && n.ino <= hi {
				dirs++
			}
		}
		d := gdt[grp*descSize:]
		le := binary.LittleEndian
		le.PutUint32(d[gdBlockBitmap:], bb)
		le.PutUint32(d[gdInodeBitmap:], ib)
		le.PutUint32(d[gdInodeTable:], it)
		le.PutUint16(d[gdFreeBlocks:], uint16(free))
		le.PutUint16(d[gdFreeInodes:], uint16(g.ipg-usedInodes))
		le.PutUint16(d[gdUsedDirs:], uint16(dirs))

		// Block bitmap, padded with ones past the end of the filesystem.
		bm := make([]byte, BlockSize)
		for b := first; b < first+blocksPerGroup; b++ {
			if b >= end || a.isUsed(b) {
				i := b - first
				bm[i/8] |= 1 << (i % 8)
			}
		}
		fw.at(bm, int64(bb)*BlockSize)
		im := make([]byte, BlockSize)
		for i := uint32(0); i < BlockSize*8; i++ {
			if i >= g.ipg || i < usedInodes {
				im[i/8] |= 1 << (i % 8)
			}
		}
		fw.at(im, int64(ib)*BlockSize)
		if p.ZeroMetadata {
			fw.at(make([]byte, g.itBlocks*BlockSize), int64(it)*BlockSize)
		}
	}
	for grp := uint32(0); grp < g.groups; grp++ {
		if !hasSuper(grp) {
			continue
		}
		base := int64(grp) * blocksPerGroup * BlockSize
		s := append([]byte(nil), sb...)
		binary.LittleEndian.PutUint16(s[sBlockGroupNr:], uint16(grp))
		if grp == 0 {
			fw.at(s, superblockOffset)
		} else {
			fw.at(s, base)
		}
		fw.at(gdt, base+BlockSize)
	}
	if fw.err != nil {
		return fw.err
	}

	inodes := map[uint32][]byte{}
	if journal != nil {
		inodes[journalInode] = inodeBytes(journal, p.Time)
		js := make([]byte, BlockSize)
		be := binary.BigEndian
		be.PutUint32(js[0:], 0xC03B3998)
		be.PutUint32(js[4:], 4)
		be.PutUint32(js[12:], BlockSize)
		be.PutUint32(js[16:], journal.nblocks)
		be.PutUint32(js[20:], 1)
		be.PutUint32(js[24:], 1)
		copy(js[48:], p.UUID[:])
		be.PutUint32(js[64:], 1)
		fw.at(js, int64(journal.extents[0].start)*BlockSize)
		if p.ZeroMetadata {
			// An old journal's later blocks are never replayed: s_start is 0.
			fw.at(make([]byte, BlockSize), int64(journal.extents[0].start+1)*BlockSize)
		}
	}
	buf := make([]byte, 1<<20)
	for _, n := range nodes {
		if n.e.Kind == tree.Hardlink {
			continue
		}
		inodes[n.ino] = inodeBytes(n, p.Time)
		writeLeaves(fw, n)
		switch {
		case n.e.Kind == tree.Dir:
			writeExtents(fw, n, n.dirData)
		case n.e.Kind == tree.Symlink && n.nblocks > 0:
			blk := make([]byte, BlockSize)
			copy(blk, n.e.Link)
			writeExtents(fw, n, blk)
		case n.e.Kind == tree.File && n.nblocks > 0:
			if err := writeFile(fw, n, buf); err != nil {
				return err
			}
		}
		if fw.err != nil {
			return fw.err
		}
	}
	for _, b := range xattrBlocks.all {
		blk, err := b.render()
		if err != nil {
			return err
		}
		fw.at(blk, int64(b.at)*BlockSize)
	}
	// Inode tables: one write per group for the used run of inodes.
	for grp := uint32(0); grp < g.groups; grp++ {
		lo := grp*g.ipg + 1
		if lo > maxIno {
			break
		}
		hi := min((grp+1)*g.ipg, maxIno)
		tbl := make([]byte, (hi-lo+1)*inodeSize)
		for ino := lo; ino <= hi; ino++ {
			if b, ok := inodes[ino]; ok {
				copy(tbl[(ino-lo)*inodeSize:], b)
			}
		}
		_, _, it, _ := g.groupLayout(grp)
		fw.at(tbl, int64(it)*BlockSize)
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
		f.err = fmt.Errorf("write ext4 at byte %d: %w", off, err)
	}
}

func allocLeaves(a *allocator, n *node) error {
	if len(n.extents) <= 4 {
		return nil
	}
	nl := (len(n.extents) + extentsPerLeaf - 1) / extentsPerLeaf
	if nl > 4 {
		return fmt.Errorf("ext4: %s is split into %d extents, more than this writer's two-level extent tree holds", n.e.Path, len(n.extents))
	}
	ex, err := a.alloc(uint32(nl))
	if err != nil {
		return err
	}
	for _, e := range ex {
		for i := uint32(0); i < e.length; i++ {
			n.leaves = append(n.leaves, e.start+i)
		}
	}
	return nil
}

func writeLeaves(fw *failWriter, n *node) {
	for i, blk := range n.leaves {
		chunk := n.extents[i*extentsPerLeaf : min((i+1)*extentsPerLeaf, len(n.extents))]
		b := make([]byte, BlockSize)
		putExtentHeader(b, len(chunk), extentsPerLeaf, 0)
		for j, e := range chunk {
			putExtent(b[extentEntrySize*(j+1):], e)
		}
		fw.at(b, int64(blk)*BlockSize)
	}
}

// writeExtents writes data (whole blocks) across n's extents.
func writeExtents(fw *failWriter, n *node, data []byte) {
	for _, e := range n.extents {
		lo := int64(e.logical) * BlockSize
		fw.at(data[lo:lo+int64(e.length)*BlockSize], int64(e.start)*BlockSize)
	}
}

func writeFile(fw *failWriter, n *node, buf []byte) error {
	rc, err := n.e.Open()
	if err != nil {
		return fmt.Errorf("open %s for the ext4 image: %w", n.e.Path, err)
	}
	defer rc.Close()
	var total int64
	for _, e := range n.extents {
		off := int64(e.start) * BlockSize
		remaining := int64(e.length) * BlockSize
		for remaining > 0 {
			chunk := buf[:min(int64(len(buf)), remaining)]
			k, err := io.ReadFull(rc, chunk)
			total += int64(k)
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s: %w", n.e.Path, err)
			}
			if k < len(chunk) {
				// The last, partial block: zero its tail so no stale bytes remain.
				clear(chunk[k:])
				k = (k + BlockSize - 1) / BlockSize * BlockSize
				if k == 0 {
					return fmt.Errorf("%s: content is %d bytes, the tree said %d (did it change while building?)", n.e.Path, total, n.e.Size)
				}
				fw.at(chunk[:k], off)
				remaining = 0
				break
			}
			fw.at(chunk, off)
			off += int64(len(chunk))
			remaining -= int64(len(chunk))
		}
	}
	var one [1]byte
	if k, _ := rc.Read(one[:]); k > 0 || total != n.e.Size {
		return fmt.Errorf("%s: content is not the %d bytes the tree said (did it change while building?)", n.e.Path, n.e.Size)
	}
	return fw.err
}

// collect assigns inode numbers in path order (root 2, lost+found 11, the
// rest from 12) and builds directory listings.
func collect(t *tree.Tree, now time.Time) ([]*node, map[string]*node, error) {
	entries := t.Entries()
	byPath := map[string]*node{}
	var nodes []*node
	next := uint32(firstInode + 1)
	root := &node{ino: RootInode}
	lpf := &node{ino: firstInode, e: &tree.Entry{Path: "lost+found", Kind: tree.Dir, Mode: 0o700, ModTime: now}}
	for _, e := range entries {
		switch e.Path {
		case ".":
			root.e = e
			continue
		case "lost+found":
			if e.Kind != tree.Dir {
				return nil, nil, fmt.Errorf("ext4: lost+found in the tree is a %s; it must be a directory", e.Kind)
			}
			lpf.e = e
			continue
		}
	}
	if root.e == nil {
		root.e = &tree.Entry{Path: ".", Kind: tree.Dir, Mode: 0o755, ModTime: now}
	}
	byPath["."] = root
	byPath["lost+found"] = lpf
	nodes = append(nodes, root, lpf)
	for _, e := range entries {
		if e.Path == "." || e.Path == "lost+found" {
			continue
		}
		n := &node{e: e, links: 1}
		switch e.Kind {
		case tree.Hardlink:
			target, ok := byPath[e.Link]
			if !ok || target.e.Kind != tree.File {
				return nil, nil, fmt.Errorf("ext4: hard link %s points at %q, which is not an earlier regular file of the tree", e.Path, e.Link)
			}
			n.ino = target.ino
			target.links++
		default:
			n.ino = next
			next++
		}
		switch e.Kind {
		case tree.File:
			n.nblocks = uint32((e.Size + BlockSize - 1) / BlockSize)
			if e.Size < 0 || (e.Size+BlockSize-1)/BlockSize > 1<<32-1 {
				return nil, nil, fmt.Errorf("ext4: %s has an impossible size %d", e.Path, e.Size)
			}
		case tree.Symlink:
			if len(e.Link) == 0 || len(e.Link) >= BlockSize {
				return nil, nil, fmt.Errorf("ext4: symlink %s target is %d bytes (1–4095 allowed)", e.Path, len(e.Link))
			}
			if len(e.Link) >= 60 {
				n.nblocks = 1
			}
		}
		byPath[e.Path] = n
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if n.e.Kind == tree.Hardlink {
			continue // the file's inode carries the attributes
		}
		ibody, block, err := layoutXattrs(n.e.Xattrs)
		if err != nil {
			name := n.e.Path
			if n.ino == RootInode {
				name = "the root directory"
			}
			return nil, nil, fmt.Errorf("ext4: %s: %w", name, err)
		}
		n.xattrs = ibody
		if block != nil {
			// Only the block's digest is kept: Write lays it out again.
			key := blockKey(block)
			n.xattrBlock = &key
		}
	}
	for _, n := range nodes {
		if n.e.Kind == tree.Dir {
			parent := RootInode
			if n.ino != RootInode {
				parent = int(byPath[path.Dir(n.e.Path)].ino)
			}
			n.children = []dirent{{".", n.ino, dirTypeDir}, {"..", uint32(parent), dirTypeDir}}
			n.links = 2
		}
	}
	for _, n := range nodes {
		if n.ino == RootInode {
			continue
		}
		parent := byPath[path.Dir(n.e.Path)]
		if parent == nil || parent.e.Kind != tree.Dir {
			return nil, nil, fmt.Errorf("ext4: %s has no parent directory in the tree", n.e.Path)
		}
		name := path.Base(n.e.Path)
		if len(name) > 255 {
			return nil, nil, fmt.Errorf("ext4: name %q is longer than 255 bytes", name)
		}
		parent.children = append(parent.children, dirent{name, n.ino, ftypeOf(n.e.Kind)})
		if n.e.Kind == tree.Dir {
			parent.links++
		}
	}
	// Hard links last: they own no inode and are skipped by the writer.
	var ordered []*node
	for _, n := range nodes {
		if n.e.Kind != tree.Hardlink {
			ordered = append(ordered, n)
		}
	}
	for _, n := range nodes {
		if n.e.Kind == tree.Hardlink {
			ordered = append(ordered, n)
		}
	}
	return ordered, byPath, nil
}

func renderDir(children []dirent, p string) ([]byte, error) {
	var out []byte
	blk := make([]byte, 0, BlockSize)
	lastOff := -1
	flush := func() {
		// The last entry of a block spans to its end.
		binary.LittleEndian.PutUint16(blk[lastOff+deRecLen:], uint16(BlockSize-lastOff))
		blk = blk[:BlockSize]
		out = append(out, blk...)
		blk = make([]byte, 0, BlockSize)
		lastOff = -1
	}
	for _, c := range children {
		rec := direntLen(c.name)
		if len(blk)+rec > BlockSize {
			flush()
		}
		lastOff = len(blk)
		e := make([]byte, rec)
		binary.LittleEndian.PutUint32(e[deInode:], c.ino)
		binary.LittleEndian.PutUint16(e[deRecLen:], uint16(rec))
		e[deNameLen] = uint8(len(c.name))
		e[deType] = c.ftype
		copy(e[deName:], c.name)
		blk = append(blk, e...)
	}
	if lastOff < 0 {
		return nil, fmt.Errorf("ext4: directory %s has no entries", p)
	}
	flush()
	return out, nil
}

func putExtentHeader(b []byte, entries, max, depth int) {
	binary.LittleEndian.PutUint16(b[ehMagic:], extentMagic)
	binary.LittleEndian.PutUint16(b[ehEntries:], uint16(entries))
	binary.LittleEndian.PutUint16(b[ehMax:], uint16(max))
	binary.LittleEndian.PutUint16(b[ehDepth:], uint16(depth))
}

func putExtent(b []byte, e extent) {
	binary.LittleEndian.PutUint32(b[eeBlock:], e.logical)
	binary.LittleEndian.PutUint16(b[eeLen:], uint16(e.length))
	binary.LittleEndian.PutUint16(b[eeStartHi:], 0)
	binary.LittleEndian.PutUint32(b[eeStartLo:], e.start)
}

func modeBits(e *tree.Entry) uint16 {
	m := uint16(e.Mode.Perm())
	if e.Mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if e.Mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if e.Mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	switch e.Kind {
	case tree.File:
		m |= TypeRegular
	case tree.Dir:
		m |= TypeDir
	case tree.Symlink:
		m |= TypeSymlink
	case tree.CharDevice:
		m |= TypeChar
	case tree.BlockDevice:
		m |= TypeBlock
	case tree.FIFO:
		m |= TypeFIFO
	case tree.Socket:
		m |= TypeSocket
	}
	return m
}

func inodeBytes(n *node, now time.Time) []byte {
	le := binary.LittleEndian
	b := make([]byte, inodeSize)
	e := n.e
	mt := e.ModTime
	if mt.IsZero() {
		mt = now
	}
	lo, extra := encodeTime(mt)
	le.PutUint16(b[iMode:], modeBits(e))
	le.PutUint16(b[iUID:], uint16(e.UID))
	var size uint64
	switch e.Kind {
	case tree.File:
		size = uint64(e.Size)
	case tree.Dir:
		size = uint64(len(n.dirData))
	case tree.Symlink:
		size = uint64(len(e.Link))
	}
	le.PutUint32(b[iSize:], uint32(size))
	le.PutUint32(b[iAtime:], lo)
	le.PutUint32(b[iCtime:], lo)
	le.PutUint32(b[iMtime:], lo)
	le.PutUint16(b[iGID:], uint16(e.GID))
	links := n.links
	if e.Kind == tree.Dir && links > 65000 {
		links = 1
	}
	le.PutUint16(b[iLinks:], uint16(links))
	blocks := n.nblocks + uint32(len(n.leaves))
	if n.sharedBlock != nil {
		// Every inode counts its attribute block, shared or not.
		blocks++
		le.PutUint32(b[iFileACL:], n.sharedBlock.at)
	}
	sectors := uint64(blocks) * (BlockSize / 512)
	le.PutUint32(b[iBlocks:], uint32(sectors))
	iblock := b[iBlock : iBlock+iBlockLen]
	switch {
	case e.Kind == tree.CharDevice || e.Kind == tree.BlockDevice:
		if e.Major < 256 && e.Minor < 256 {
			le.PutUint32(iblock[0:], e.Major<<8|e.Minor)
		} else {
			le.PutUint32(iblock[4:], (e.Minor&0xff)|(e.Major<<8)|((e.Minor&^0xff)<<12))
		}
	case e.Kind == tree.Symlink && n.nblocks == 0:
		copy(iblock, e.Link)
	case e.Kind == tree.File || e.Kind == tree.Dir || e.Kind == tree.Symlink:
		le.PutUint32(b[iFlags:], inodeFlagExtents)
		if len(n.leaves) == 0 {
			putExtentHeader(iblock, len(n.extents), 4, 0)
			for i, x := range n.extents {
				putExtent(iblock[extentEntrySize*(i+1):], x)
			}
		} else {
			putExtentHeader(iblock, len(n.leaves), 4, 1)
			for i, leaf := range n.leaves {
				ix := iblock[extentEntrySize*(i+1):]
				le.PutUint32(ix[eiBlock:], n.extents[i*extentsPerLeaf].logical)
				le.PutUint32(ix[eiLeafLo:], leaf)
			}
		}
	}
	le.PutUint32(b[iSizeHi:], uint32(size>>32))
	le.PutUint16(b[iBlocksHi:], uint16(sectors>>32))
	le.PutUint16(b[iUIDHi:], uint16(e.UID>>16))
	le.PutUint16(b[iGIDHi:], uint16(e.GID>>16))
	le.PutUint16(b[iExtraIsize:], extraIsize)
	le.PutUint32(b[iCtimeExtra:], extra)
	le.PutUint32(b[iMtimeExtra:], extra)
	le.PutUint32(b[iAtimeExtra:], extra)
	le.PutUint32(b[iCrtime:], lo)
	le.PutUint32(b[iCrtimeExtra:], extra)
	if n.xattrs != nil {
		le.PutUint32(b[goodOldInodeSize+extraIsize:], xattrMagic)
		copy(b[goodOldInodeSize+extraIsize+4:], n.xattrs)
	}
	return b
}

func superblock(g geometry, p Params, reserved, freeBlocks, freeInodes uint32, journal *node) []byte {
	le := binary.LittleEndian
	s := make([]byte, superblockSize)
	ts := uint32(p.Time.Unix())
	le.PutUint32(s[sInodesCount:], g.inodeCount)
	le.PutUint32(s[sBlocksCount:], g.blocks)
	le.PutUint32(s[sReservedBlocks:], reserved)
	le.PutUint32(s[sFreeBlocks:], freeBlocks)
	le.PutUint32(s[sFreeInodes:], freeInodes)
	le.PutUint32(s[sFirstDataBlock:], 0)
	le.PutUint32(s[sLogBlockSize:], 2) // 4 KiB
	le.PutUint32(s[sLogClusterSize:], 2)
	le.PutUint32(s[sBlocksPerGroup:], blocksPerGroup)
	le.PutUint32(s[sClustersPerGroup:], blocksPerGroup)
	le.PutUint32(s[sInodesPerGroup:], g.ipg)
	le.PutUint32(s[sMountTime:], 0)
	le.PutUint32(s[sWriteTime:], ts)
	le.PutUint16(s[sMountCount:], 0)
	le.PutUint16(s[sMaxMountCount:], 0xFFFF)
	le.PutUint16(s[sMagic:], superblockMagic)
	le.PutUint16(s[sState:], 1)  // clean
	le.PutUint16(s[sErrors:], 1) // continue
	le.PutUint32(s[sLastCheck:], ts)
	le.PutUint32(s[sRevLevel:], 1)
	le.PutUint32(s[sFirstInode:], firstInode)
	le.PutUint16(s[sInodeSize:], inodeSize)
	compat := uint32(compatExtAttr)
	if journal != nil {
		compat |= compatHasJournal
	}
	le.PutUint32(s[sFeatureCompat:], compat)
	le.PutUint32(s[sFeatureIncompat:], incompatFiletype|incompatExtents)
	le.PutUint32(s[sFeatureROCompat:], roCompatSparseSuper|roCompatLargeFile|roCompatHugeFile|roCompatDirNlink|roCompatExtraIsize)
	copy(s[sUUID:], p.UUID[:])
	copy(s[sVolumeName:], p.Label)
	for i := 0; i < 4; i++ {
		le.PutUint32(s[sHashSeed+4*i:], le.Uint32(p.HashSeed[4*i:]))
	}
	s[sDefHashVersion] = 1 // half_md4
	le.PutUint32(s[sDefaultMountOpts:], 0x0C)
	le.PutUint32(s[sMkfsTime:], ts)
	if journal != nil {
		le.PutUint32(s[sJournalInode:], journalInode)
		s[sJournalBackupType] = 1 // EXT3_JNL_BACKUP_BLOCKS
		ib := inodeBytes(journal, p.Time)
		copy(s[sJournalBlocks:sJournalBlocks+iBlockLen], ib[iBlock:iBlock+iBlockLen])
		le.PutUint32(s[sJournalBlocks+iBlockLen:], le.Uint32(ib[iSizeHi:]))
		le.PutUint32(s[sJournalBlocks+iBlockLen+4:], le.Uint32(ib[iSize:]))
	}
	le.PutUint16(s[sMinExtraIsize:], extraIsize)
	le.PutUint16(s[sWantExtraIsize:], extraIsize)
	le.PutUint32(s[sFlags:], 2) // unsigned directory hash
	return s
}
