package ext4

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// xattrSpace is what an inode holds for extended attributes after its
// extra fields and the magic: 256 - 128 - 32 - 4.
const xattrSpace = inodeSize - goodOldInodeSize - extraIsize - 4

// xattrBlockSpace is what an attribute block holds for entries and values:
// the block less its header and the zero word that ends the entries.
const xattrBlockSpace = BlockSize - xattrBlockHeader - 4

// xattrEntry is one attribute as it is stored.
type xattrEntry struct {
	full  string // the name as getxattr(2) knows it, for messages
	index uint8  // namespace, see xattrPrefix
	name  string // the rest of the name
	value []byte // POSIX ACLs already in ext4's form
}

func (x xattrEntry) entryLen() int { return (xattrEntryHeader + len(x.name) + 3) &^ 3 }
func (x xattrEntry) valueLen() int { return (len(x.value) + 3) &^ 3 }

// layoutXattrs lays out an inode's extended attributes as ext2fs does for
// mke2fs -d: in the order the kernel keeps an attribute block sorted (name
// index, name length, name), each attribute goes into the inode while it
// has room and into the inode's attribute block otherwise. It returns the
// in-inode area (after the magic) and the attribute block, whose refcount
// the writer fills in once it knows how many inodes share it; either is
// nil when it holds nothing. Values are the getxattr(2) ones: POSIX ACLs
// are converted to ext4's form here.
func layoutXattrs(x map[string][]byte) (ibody, block []byte, err error) {
	if len(x) == 0 {
		return nil, nil, nil
	}
	entries := make([]xattrEntry, 0, len(x))
	for full, v := range x {
		index, name, ok := xattrIndex(full)
		if !ok {
			return nil, nil, fmt.Errorf("extended attribute %q has no known namespace (user., trusted., security., system.) or an empty name", full)
		}
		if len(name) > 255 {
			return nil, nil, fmt.Errorf("extended attribute %q: the name is longer than 255 bytes", full)
		}
		if index == 2 || index == 3 {
			if v, err = aclToDisk(v); err != nil {
				return nil, nil, fmt.Errorf("extended attribute %s: %w", full, err)
			}
		}
		e := xattrEntry{full: full, index: index, name: name, value: v}
		if limit := xattrBlockSpace - e.entryLen(); len(v) > limit {
			return nil, nil, fmt.Errorf("extended attribute %s has a %d-byte value, more than the %d bytes a %d-byte attribute block holds for it: larger values need the ea_inode feature, which this writer does not write",
				full, len(v), limit, BlockSize)
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.index != b.index {
			return a.index < b.index
		}
		if len(a.name) != len(b.name) {
			return len(a.name) < len(b.name)
		}
		return a.name < b.name
	})
	var inInode, inBlock []xattrEntry
	inodeFree, blockNeed := xattrSpace-4, 0 // less the zero word ending the entries
	for _, e := range entries {
		if need := e.entryLen() + e.valueLen(); need <= inodeFree {
			inInode = append(inInode, e)
			inodeFree -= need
		} else {
			inBlock = append(inBlock, e)
			blockNeed += need
		}
	}
	if blockNeed > xattrBlockSpace {
		names := make([]string, len(inBlock))
		for i, e := range inBlock {
			names[i] = e.full
		}
		return nil, nil, fmt.Errorf("extended attributes %s need %d bytes beyond the %d the inode holds, more than the %d one attribute block holds: this writer writes one block an inode and no ea_inode",
			strings.Join(names, ", "), blockNeed, xattrSpace, xattrBlockSpace)
	}
	if len(inInode) > 0 {
		ibody = make([]byte, xattrSpace)
		putXattrs(ibody, 0, inInode)
	}
	if len(inBlock) > 0 {
		le := binary.LittleEndian
		block = make([]byte, BlockSize)
		le.PutUint32(block[xhMagic:], xattrMagic)
		le.PutUint32(block[xhBlocks:], 1)
		putXattrs(block, xattrBlockHeader, inBlock)
		le.PutUint32(block[xhHash:], xattrBlockHash(block))
	}
	return ibody, block, nil
}

// putXattrs writes entries from byte first of area on and their values
// from its end down; value offsets count from the start of area (the first
// entry in an inode, the block's start in a block), as the kernel reads
// them. The caller has checked that they fit.
func putXattrs(area []byte, first int, entries []xattrEntry) {
	le := binary.LittleEndian
	off, end := first, len(area)
	for _, x := range entries {
		end -= x.valueLen()
		e := area[off:]
		e[xeNameLen] = uint8(len(x.name))
		e[xeNameIndex] = x.index
		le.PutUint16(e[xeValueOff:], uint16(end))
		le.PutUint32(e[xeValueSize:], uint32(len(x.value)))
		copy(e[xeName:], x.name)
		copy(area[end:], x.value)
		le.PutUint32(e[xeHash:], xattrHash(x.name, area[end:end+x.valueLen()], len(x.value)))
		off += x.entryLen()
	}
}

// xattrHash is the kernel's ext4_xattr_hash_entry and e2fsprogs'
// ext2fs_ext_attr_hash_entry: name bytes unsigned (both still accept the
// signed variant older x86 builds wrote), then the value's 32-bit words.
func xattrHash(name string, value []byte, size int) uint32 {
	var h uint32
	for i := 0; i < len(name); i++ {
		h = (h << 5) ^ (h >> 27) ^ uint32(name[i])
	}
	for i := 0; i < (size+3)/4; i++ {
		h = (h << 16) ^ (h >> 16) ^ binary.LittleEndian.Uint32(value[4*i:])
	}
	return h
}

// xattrBlockHash is the kernel's ext4_xattr_rehash: the entry hashes
// folded together, by which the kernel finds blocks to share.
func xattrBlockHash(block []byte) uint32 {
	le := binary.LittleEndian
	var h uint32
	for off := xattrBlockHeader; le.Uint32(block[off:]) != 0; off += (xattrEntryHeader + int(block[off+xeNameLen]) + 3) &^ 3 {
		eh := le.Uint32(block[off+xeHash:])
		if eh == 0 {
			return 0
		}
		h = (h << 16) ^ (h >> 16) ^ eh
	}
	return h
}

// xattrBlocks hands out attribute blocks so that inodes whose attributes
// beyond the inode are the same share one block, as the kernel does, at
// most xattrRefcountMax inodes a block. Blocks are known by a digest of
// their contents and keep the attributes they were laid out from instead
// of the 4 KiB block, so a tree of many distinct sets costs no block-sized
// memory until each is written.
type xattrBlocks struct {
	open map[xattrBlockKey]*sharedXattrBlock // the block each content still takes references in
	all  []*sharedXattrBlock                 // in the order they were handed out
}

// xattrBlockKey is the digest of an attribute block's contents.
type xattrBlockKey [sha256.Size]byte

func blockKey(block []byte) xattrBlockKey { return sha256.Sum256(block) }

type sharedXattrBlock struct {
	from  map[string][]byte // the attributes of the first inode using it
	at    uint32            // block number, once allocated
	users uint32            // h_refcount
}

// use returns the block for an inode whose attribute block (laid out from
// attrs) has digest key, and whether the block is new and needs allocating.
func (s *xattrBlocks) use(key xattrBlockKey, attrs map[string][]byte) (*sharedXattrBlock, bool) {
	if b := s.open[key]; b != nil && b.users < xattrRefcountMax {
		b.users++
		return b, false
	}
	if s.open == nil {
		s.open = map[xattrBlockKey]*sharedXattrBlock{}
	}
	b := &sharedXattrBlock{from: attrs, users: 1}
	s.open[key] = b
	s.all = append(s.all, b)
	return b, true
}

// render lays the block out again with its final refcount.
func (b *sharedXattrBlock) render() ([]byte, error) {
	_, block, err := layoutXattrs(b.from)
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint32(block[xhRefcount:], b.users)
	return block, nil
}
