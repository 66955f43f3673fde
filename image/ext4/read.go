package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"
)

// maxDirSize bounds how much of a directory is read into memory; a real
// directory of a million entries is far below it.
const maxDirSize = 256 << 20

// ErrCorrupt marks a structure that does not make sense; errors wrapping it
// mean the filesystem (or the image holding it) is damaged or truncated.
var ErrCorrupt = errors.New("corrupt ext4 filesystem")

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// FS is an open filesystem. It holds no open resources of its own.
type FS struct {
	r              io.ReaderAt
	size           int64
	blockSize      uint64
	inodeSize      uint64
	inodesPerGroup uint32
	inodesCount    uint32
	blocksCount    uint64
	groupCount     uint64
	descSize       uint64
	gdtOffset      int64
	filetype       bool
	label          string
}

// Open reads the superblock of the filesystem occupying the first size
// bytes of r.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, superblockSize)
	if size < superblockOffset+superblockSize {
		return nil, corrupt("only %d bytes, too small to hold a superblock", size)
	}
	if _, err := r.ReadAt(sb, superblockOffset); err != nil {
		return nil, fmt.Errorf("read ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sMagic:]) != superblockMagic {
		return nil, fmt.Errorf("no ext2/3/4 superblock (magic %#04x, want %#04x)", le.Uint16(sb[sMagic:]), superblockMagic)
	}
	logBlock := le.Uint32(sb[sLogBlockSize:])
	if logBlock > 6 { // 64 KiB is the largest block size ext4 knows
		return nil, corrupt("block size 2^(10+%d)", logBlock)
	}
	fs := &FS{r: r, size: size, blockSize: 1024 << logBlock}
	fs.inodesCount = le.Uint32(sb[sInodesCount:])
	fs.blocksCount = uint64(le.Uint32(sb[sBlocksCount:]))
	firstDataBlock := uint64(le.Uint32(sb[sFirstDataBlock:]))
	groupBlocks := uint64(le.Uint32(sb[sBlocksPerGroup:]))
	fs.inodesPerGroup = le.Uint32(sb[sInodesPerGroup:])
	fs.inodeSize = goodOldInodeSize
	if le.Uint32(sb[sRevLevel:]) >= 1 {
		fs.inodeSize = uint64(le.Uint16(sb[sInodeSize:]))
	}
	incompat := le.Uint32(sb[sFeatureIncompat:])
	fs.descSize = 32
	if incompat&incompat64Bit != 0 {
		fs.blocksCount |= uint64(le.Uint32(sb[sBlocksCountHi:])) << 32
		fs.descSize = uint64(le.Uint16(sb[sDescSize:]))
		if fs.descSize < 32 || fs.descSize > 1024 || fs.descSize&(fs.descSize-1) != 0 {
			return nil, corrupt("group descriptor size %d", fs.descSize)
		}
	}
	for _, f := range []struct {
		bit  uint32
		name string
	}{
		{incompatCompression, "compression"}, {incompatJournalDev, "external journal device"},
		{incompatMetaBG, "meta_bg"}, {incompatDirData, "dirdata"}, {incompatEncrypt, "encryption"},
	} {
		if incompat&f.bit != 0 {
			return nil, fmt.Errorf("ext4 feature %s is not supported by this reader", f.name)
		}
	}
	if incompat&incompatRecover != 0 {
		return nil, errors.New("ext4 journal needs recovery (the filesystem was not unmounted cleanly): run e2fsck on the image first")
	}
	fs.filetype = incompat&incompatFiletype != 0
	if fs.inodeSize < goodOldInodeSize || fs.inodeSize > fs.blockSize || fs.inodeSize&(fs.inodeSize-1) != 0 {
		return nil, corrupt("inode size %d", fs.inodeSize)
	}
	if groupBlocks == 0 || fs.inodesPerGroup == 0 {
		return nil, corrupt("zero blocks or inodes per group")
	}
	if fs.blocksCount <= firstDataBlock {
		return nil, corrupt("%d blocks", fs.blocksCount)
	}
	fs.groupCount = (fs.blocksCount - firstDataBlock + groupBlocks - 1) / groupBlocks
	if need := uint64(fs.inodesCount+fs.inodesPerGroup-1) / uint64(fs.inodesPerGroup); need > fs.groupCount {
		return nil, corrupt("%d inodes need %d groups, filesystem has %d", fs.inodesCount, need, fs.groupCount)
	}
	fs.gdtOffset = int64((firstDataBlock + 1) * fs.blockSize)
	if end := uint64(fs.gdtOffset) + fs.groupCount*fs.descSize; end > uint64(size) {
		return nil, corrupt("group descriptors end at byte %d, past the filesystem's %d bytes", end, size)
	}
	label := sb[sVolumeName : sVolumeName+16]
	for i, c := range label {
		if c == 0 {
			label = label[:i]
			break
		}
	}
	fs.label = string(label)
	return fs, nil
}

// Label is the volume name (e.g. "rootfs").
func (fs *FS) Label() string { return fs.label }

// BlockSize is the filesystem block size in bytes.
func (fs *FS) BlockSize() int { return int(fs.blockSize) }

// Size is the filesystem size in bytes according to its superblock.
func (fs *FS) Size() int64 { return int64(fs.blocksCount * fs.blockSize) }

func (fs *FS) readAt(p []byte, off uint64) error {
	if off > uint64(fs.size) || uint64(len(p)) > uint64(fs.size)-off {
		return corrupt("read of %d bytes at %d past the end of the filesystem (%d bytes)", len(p), off, fs.size)
	}
	n, err := fs.r.ReadAt(p, int64(off))
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

func (fs *FS) readBlock(n uint64) ([]byte, error) {
	if n >= fs.blocksCount {
		return nil, corrupt("block %d beyond the %d blocks of the filesystem", n, fs.blocksCount)
	}
	b := make([]byte, fs.blockSize)
	return b, fs.readAt(b, n*fs.blockSize)
}

// Inode is the metadata of one file.
type Inode struct {
	Num     uint32
	Mode    uint16 // type (S_IFMT) and permission bits, as in stat(2)
	UID     uint32
	GID     uint32
	Size    uint64
	Links   uint16
	ModTime time.Time
	flags   uint32
	block   [iBlockLen]byte
	fileACL uint64
	body    []byte // the whole on-disk inode, for in-body xattrs
}

// Type is Mode&TypeMask.
func (in *Inode) Type() uint16 { return in.Mode & TypeMask }

// Inode reads inode n (1-based, as in directory entries).
func (fs *FS) Inode(n uint32) (*Inode, error) {
	if n == 0 || n > fs.inodesCount {
		return nil, corrupt("inode %d out of range 1..%d", n, fs.inodesCount)
	}
	group := uint64(n-1) / uint64(fs.inodesPerGroup)
	index := uint64(n-1) % uint64(fs.inodesPerGroup)
	desc := make([]byte, fs.descSize)
	if err := fs.readAt(desc, uint64(fs.gdtOffset)+group*fs.descSize); err != nil {
		return nil, fmt.Errorf("group descriptor %d: %w", group, err)
	}
	le := binary.LittleEndian
	table := uint64(le.Uint32(desc[gdInodeTable:]))
	if fs.descSize >= 64 {
		table |= uint64(le.Uint32(desc[gdInodeTblHi:])) << 32
	}
	if table == 0 || table >= fs.blocksCount {
		return nil, corrupt("inode table of group %d at block %d", group, table)
	}
	raw := make([]byte, fs.inodeSize)
	if err := fs.readAt(raw, table*fs.blockSize+index*fs.inodeSize); err != nil {
		return nil, fmt.Errorf("inode %d: %w", n, err)
	}
	in := &Inode{
		Num:     n,
		Mode:    le.Uint16(raw[iMode:]),
		UID:     uint32(le.Uint16(raw[iUID:])) | uint32(le.Uint16(raw[iUIDHi:]))<<16,
		GID:     uint32(le.Uint16(raw[iGID:])) | uint32(le.Uint16(raw[iGIDHi:]))<<16,
		Size:    uint64(le.Uint32(raw[iSize:])) | uint64(le.Uint32(raw[iSizeHi:]))<<32,
		Links:   le.Uint16(raw[iLinks:]),
		flags:   le.Uint32(raw[iFlags:]),
		fileACL: uint64(le.Uint32(raw[iFileACL:])) | uint64(le.Uint16(raw[iFileACLHi:]))<<32,
		body:    raw,
	}
	copy(in.block[:], raw[iBlock:iBlock+iBlockLen])
	var mtimeExtra uint32
	hasExtra := false
	if fs.inodeSize > goodOldInodeSize {
		extra := uint64(le.Uint16(raw[iExtraIsize:]))
		if goodOldInodeSize+extra > fs.inodeSize {
			return nil, corrupt("inode %d: extra size %d", n, extra)
		}
		if extra >= iAtimeExtra-iExtraIsize { // i_mtime_extra present
			mtimeExtra, hasExtra = le.Uint32(raw[iMtimeExtra:]), true
		}
	}
	in.ModTime = decodeTime(le.Uint32(raw[iMtime:]), mtimeExtra, hasExtra)
	return in, nil
}

// Device returns the major and minor numbers of a character or block
// device inode.
func (in *Inode) Device() (major, minor uint32) {
	le := binary.LittleEndian
	if old := le.Uint32(in.block[0:]); old != 0 {
		return (old >> 8) & 0xff, old & 0xff
	}
	d := le.Uint32(in.block[4:])
	return (d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00)
}

// blockRun maps count logical blocks starting at logical to physical
// blocks starting at physical; physical 0 means a hole (read as zeros).
type blockRun struct {
	logical, physical, count uint64
}

// extents lists the data extents of an inode in logical order.
func (fs *FS) extents(in *Inode) ([]blockRun, error) {
	if in.flags&inodeFlagExtents != 0 {
		var out []blockRun
		if err := fs.walkExtentNode(in.block[:], 0, &out, new(int)); err != nil {
			return nil, fmt.Errorf("inode %d extent tree: %w", in.Num, err)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].logical < out[j].logical })
		for i := 1; i < len(out); i++ {
			if out[i].logical < out[i-1].logical+out[i-1].count {
				return nil, corrupt("inode %d: overlapping extents at logical block %d", in.Num, out[i].logical)
			}
		}
		return out, nil
	}
	return fs.blockMap(in)
}

func (fs *FS) walkExtentNode(node []byte, level int, out *[]blockRun, visited *int) error {
	le := binary.LittleEndian
	if len(node) < extentEntrySize || le.Uint16(node[ehMagic:]) != extentMagic {
		return corrupt("bad extent header")
	}
	entries := int(le.Uint16(node[ehEntries:]))
	depth := int(le.Uint16(node[ehDepth:]))
	if depth > 5 || level > 5 {
		return corrupt("extent tree deeper than 5")
	}
	if extentEntrySize*(entries+1) > len(node) {
		return corrupt("%d extent entries do not fit in %d bytes", entries, len(node))
	}
	// A file cannot have more extent nodes or extents than the filesystem
	// has blocks; the bound stops a crafted tree that shares nodes.
	if *visited++; uint64(*visited) > fs.blocksCount || uint64(len(*out)) > fs.blocksCount {
		return corrupt("extent tree larger than the filesystem")
	}
	for i := 0; i < entries; i++ {
		e := node[extentEntrySize*(i+1):]
		if depth == 0 {
			n := uint64(le.Uint16(e[eeLen:]))
			uninit := n > maxInitExtent
			if uninit {
				n -= maxInitExtent
			}
			start := uint64(le.Uint16(e[eeStartHi:]))<<32 | uint64(le.Uint32(e[eeStartLo:]))
			if n == 0 {
				continue
			}
			if start+n > fs.blocksCount || start+n < start {
				return corrupt("extent of %d blocks at %d beyond the filesystem", n, start)
			}
			if uninit { // allocated but never written: reads as zeros
				start = 0
			}
			*out = append(*out, blockRun{logical: uint64(le.Uint32(e[eeBlock:])), physical: start, count: n})
			continue
		}
		leaf := uint64(le.Uint32(e[eiLeafLo:])) | uint64(le.Uint16(e[eiLeafHi:]))<<32
		child, err := fs.readBlock(leaf)
		if err != nil {
			return err
		}
		if int(le.Uint16(child[ehDepth:])) != depth-1 {
			return corrupt("extent node at block %d has depth %d under depth %d", leaf, le.Uint16(child[ehDepth:]), depth)
		}
		if err := fs.walkExtentNode(child, level+1, out, visited); err != nil {
			return err
		}
	}
	return nil
}

// blockMap reads an ext2/ext3 style direct/indirect block map as runs.
func (fs *FS) blockMap(in *Inode) ([]blockRun, error) {
	le := binary.LittleEndian
	nblocks := (in.Size + fs.blockSize - 1) / fs.blockSize
	var out []blockRun
	var logical, visited uint64
	add := func(phys uint64) error {
		if phys >= fs.blocksCount {
			return corrupt("inode %d: block %d beyond the filesystem", in.Num, phys)
		}
		if n := len(out); n > 0 && out[n-1].logical+out[n-1].count == logical &&
			((phys == 0 && out[n-1].physical == 0) || (phys != 0 && out[n-1].physical != 0 && out[n-1].physical+out[n-1].count == phys)) {
			out[n-1].count++
		} else {
			out = append(out, blockRun{logical: logical, physical: phys, count: 1})
		}
		logical++
		return nil
	}
	var walk func(block uint64, level int) error
	walk = func(block uint64, level int) error {
		per := fs.blockSize / 4
		span := uint64(1)
		for i := 0; i < level; i++ {
			span *= per
		}
		if block == 0 { // a hole as large as this subtree
			skip := span
			if logical+skip > nblocks {
				skip = nblocks - logical
			}
			logical += skip
			return nil
		}
		// A file cannot map more blocks than the filesystem holds.
		if visited++; visited > fs.blocksCount {
			return corrupt("inode %d maps more blocks than the filesystem has", in.Num)
		}
		if level == 0 {
			return add(block)
		}
		b, err := fs.readBlock(block)
		if err != nil {
			return err
		}
		for i := uint64(0); i < per && logical < nblocks; i++ {
			if err := walk(uint64(le.Uint32(b[i*4:])), level-1); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < 15 && logical < nblocks; i++ {
		level := 0
		if i >= 12 {
			level = i - 11
		}
		if err := walk(uint64(le.Uint32(in.block[i*4:])), level); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// fileReader reads an inode's contents through its extents.
type fileReader struct {
	fs      *FS
	size    uint64
	extents []blockRun
	inline  []byte // contents of an inline-data inode
}

// ReadAt implements io.ReaderAt over the file contents.
func (f *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if f.inline != nil {
		if off >= int64(len(f.inline)) {
			return 0, io.EOF
		}
		n := copy(p, f.inline[off:])
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	if uint64(off) >= f.size {
		return 0, io.EOF
	}
	want := len(p)
	var eof error
	if rem := f.size - uint64(off); uint64(want) > rem {
		want, eof = int(rem), io.EOF
	}
	bs := f.fs.blockSize
	done := 0
	for done < want {
		pos := uint64(off) + uint64(done)
		lb := pos / bs
		i := sort.Search(len(f.extents), func(i int) bool { return f.extents[i].logical+f.extents[i].count > lb })
		chunk := uint64(want - done)
		if i == len(f.extents) || f.extents[i].logical > lb { // hole
			if i < len(f.extents) {
				if gap := f.extents[i].logical*bs - pos; gap < chunk {
					chunk = gap
				}
			}
			clear(p[done : done+int(chunk)])
		} else {
			e := f.extents[i]
			if end := (e.logical+e.count)*bs - pos; end < chunk {
				chunk = end
			}
			if e.physical == 0 {
				clear(p[done : done+int(chunk)])
			} else if err := f.fs.readAt(p[done:done+int(chunk)], (e.physical+lb-e.logical)*bs+pos%bs); err != nil {
				return done, err
			}
		}
		done += int(chunk)
	}
	return done, eof
}

// Reader returns a reader of the contents of a regular file, directory or
// slow symlink. Nothing is read until it is used.
func (fs *FS) Reader(in *Inode) (*io.SectionReader, error) {
	f := &fileReader{fs: fs, size: in.Size}
	if in.flags&inodeFlagInlineData != 0 {
		data := append([]byte(nil), in.block[:]...)
		if x, err := fs.rawXattrs(in); err != nil {
			return nil, err
		} else if more, ok := x["system.data"]; ok {
			data = append(data, more...)
		}
		if uint64(len(data)) > in.Size {
			data = data[:in.Size]
		}
		f.inline = data
		return io.NewSectionReader(f, 0, int64(len(data))), nil
	}
	if in.Size > 1<<60 {
		return nil, corrupt("inode %d: size %d", in.Num, in.Size)
	}
	ext, err := fs.extents(in)
	if err != nil {
		return nil, err
	}
	f.extents = ext
	return io.NewSectionReader(f, 0, int64(in.Size)), nil
}

// Readlink returns the target of a symlink inode.
func (fs *FS) Readlink(in *Inode) (string, error) {
	if in.Type() != TypeSymlink {
		return "", fmt.Errorf("inode %d is not a symlink", in.Num)
	}
	if in.Size > 4096 {
		return "", corrupt("symlink inode %d of %d bytes", in.Num, in.Size)
	}
	if in.flags&(inodeFlagExtents|inodeFlagInlineData) == 0 && in.Size < 60 {
		return string(in.block[:in.Size]), nil // fast symlink
	}
	r, err := fs.Reader(in)
	if err != nil {
		return "", err
	}
	b := make([]byte, r.Size())
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("symlink inode %d: %w", in.Num, err)
	}
	return string(b), nil
}

// DirEntry is one name in a directory.
type DirEntry struct {
	Name  string
	Inode uint32
}

// ReadDir lists a directory inode, without "." and "..", sorted by name.
func (fs *FS) ReadDir(in *Inode) ([]DirEntry, error) {
	if in.Type() != TypeDir {
		return nil, fmt.Errorf("inode %d is not a directory", in.Num)
	}
	if in.Size > maxDirSize || in.Size > uint64(fs.size) {
		return nil, corrupt("directory inode %d of %d bytes", in.Num, in.Size)
	}
	r, err := fs.Reader(in)
	if err != nil {
		return nil, err
	}
	data := make([]byte, r.Size())
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("directory inode %d: %w", in.Num, err)
	}
	// Inline directories start with the parent inode number, then entries.
	blockLen := int(fs.blockSize)
	if in.flags&inodeFlagInlineData != 0 {
		if len(data) < 4 {
			return nil, corrupt("inline directory inode %d too short", in.Num)
		}
		data = data[4:]
		blockLen = len(data)
	}
	le := binary.LittleEndian
	var out []DirEntry
	for start := 0; start < len(data); start += blockLen {
		block := data[start:min(start+blockLen, len(data))]
		for off := 0; off+8 <= len(block); {
			ino := le.Uint32(block[off+deInode:])
			recLen := int(le.Uint16(block[off+deRecLen:]))
			if recLen == 0 && fs.blockSize == 65536 {
				recLen = 65536
			}
			if recLen < deName || off+recLen > len(block) {
				return nil, corrupt("directory inode %d: record length %d at offset %d", in.Num, recLen, start+off)
			}
			nameLen := int(block[off+deNameLen])
			if !fs.filetype {
				nameLen |= int(block[off+deType]) << 8
			}
			if deName+nameLen > recLen {
				return nil, corrupt("directory inode %d: name of %d bytes in a record of %d", in.Num, nameLen, recLen)
			}
			name := string(block[off+deName : off+deName+nameLen])
			if ino != 0 && name != "." && name != ".." {
				out = append(out, DirEntry{Name: name, Inode: ino})
			}
			off += recLen
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
