// Package ext4 writes ext4 filesystems and reads ext2, ext3 and ext4 ones,
// all without mounting, root or loop devices.
//
// Writing: Write lays a tree.Tree down as a fresh ext4 filesystem in a
// partition-sized region of an image. It writes 4 KiB blocks, 32768 blocks
// per group, 256-byte inodes, sparse_super, extents, filetype, large_file,
// huge_file, dir_nlink, extra_isize, ext_attr, and optionally a (clean,
// empty) journal. Directories are linear (no dir_index), metadata carries
// no checksums (no metadata_csum), group metadata sits at the start of each
// group (no flex_bg). Inodes and blocks are handed out in the tree's sorted
// path order, so the same tree and Params give the same bytes. Extended
// attributes (getxattr(2) values; POSIX ACLs are converted to ext4's form)
// go into the inode while they fit (92 bytes: security.capability, or a
// directory's two small ACLs), as mke2fs -d places them, and the rest into
// one attribute block per inode, shared by inodes whose rest is the same
// (as the kernel shares them, up to 1024 inodes a block); a set larger
// than that block (values that would need ea_inode) is refused, naming the
// file and attribute. Write assumes the region reads as zeros (a fresh
// sparse image file) unless Params.ZeroMetadata is set, in which case it
// zeroes the inode tables itself so a region holding an older filesystem can
// be rewritten in place. A tree that does not fit is refused with
// ErrNoSpace before a byte is written; Estimate and Overhead size a
// partition for a tree beforehand.
//
// Reading: Open reads an ext2, ext3 or ext4 filesystem from an io.ReaderAt:
// superblock, group descriptors, inodes, extent trees and classic block
// maps, directories (linear and htree, both read as linear), fast and slow
// symlinks, inline data, extended attributes in the inode body and in an
// attribute block, and device numbers. FS.Walk visits every name with its
// inode's full metadata; FS.Reader streams contents lazily. Importing a
// Raspberry Pi OS root filesystem needs exactly that, and its bytes come
// from a download and are untrusted: every offset and length is checked so
// corrupt input gives an error wrapping ErrCorrupt, never a panic or an
// unbounded allocation.
//
// Probing: HasSuperblock only looks for the superblock's magic number, for
// callers (the agent) that must tell a written system partition from an
// empty or torn one without reading a filesystem.
//
// This file holds the on-disk layout both sides share.
package ext4

import (
	"strings"
	"time"
)

// The superblock sits superblockOffset bytes into the filesystem, whatever
// the block size, and carries superblockMagic at sMagic.
const (
	superblockOffset = 1024
	superblockSize   = 1024
	superblockMagic  = 0xEF53
)

// Superblock fields, as byte offsets into the superblock.
const (
	sInodesCount       = 0x00  // uint32
	sBlocksCount       = 0x04  // uint32, low half
	sReservedBlocks    = 0x08  // uint32, low half
	sFreeBlocks        = 0x0C  // uint32, low half
	sFreeInodes        = 0x10  // uint32
	sFirstDataBlock    = 0x14  // uint32: 1 with 1 KiB blocks, else 0
	sLogBlockSize      = 0x18  // uint32: block size is 1024 << this
	sLogClusterSize    = 0x1C  // uint32
	sBlocksPerGroup    = 0x20  // uint32
	sClustersPerGroup  = 0x24  // uint32
	sInodesPerGroup    = 0x28  // uint32
	sMountTime         = 0x2C  // uint32
	sWriteTime         = 0x30  // uint32
	sMountCount        = 0x34  // uint16
	sMaxMountCount     = 0x36  // uint16
	sMagic             = 0x38  // uint16: superblockMagic
	sState             = 0x3A  // uint16
	sErrors            = 0x3C  // uint16
	sLastCheck         = 0x40  // uint32
	sRevLevel          = 0x4C  // uint32: 1 (dynamic) has the fields below
	sFirstInode        = 0x54  // uint32
	sInodeSize         = 0x58  // uint16
	sBlockGroupNr      = 0x5A  // uint16: the group this copy sits in
	sFeatureCompat     = 0x5C  // uint32: compat* flags
	sFeatureIncompat   = 0x60  // uint32: incompat* flags
	sFeatureROCompat   = 0x64  // uint32: roCompat* flags
	sUUID              = 0x68  // 16 bytes
	sVolumeName        = 0x78  // 16 bytes, NUL padded
	sJournalInode      = 0xE0  // uint32
	sHashSeed          = 0xEC  // 4 × uint32
	sDefHashVersion    = 0xFC  // uint8
	sJournalBackupType = 0xFD  // uint8: 1 when sJournalBlocks holds a copy
	sDescSize          = 0xFE  // uint16, with incompat64Bit
	sDefaultMountOpts  = 0x100 // uint32
	sMkfsTime          = 0x108 // uint32
	sJournalBlocks     = 0x10C // the journal inode's i_block, size_high, size
	sBlocksCountHi     = 0x150 // uint32, with incompat64Bit
	sMinExtraIsize     = 0x15C // uint16
	sWantExtraIsize    = 0x15E // uint16
	sFlags             = 0x160 // uint32
)

// Feature flags.
const (
	compatHasJournal = 0x4
	compatExtAttr    = 0x8

	incompatCompression = 0x1
	incompatFiletype    = 0x2
	incompatRecover     = 0x4
	incompatJournalDev  = 0x8
	incompatMetaBG      = 0x10
	incompatExtents     = 0x40
	incompat64Bit       = 0x80
	incompatEAInode     = 0x400
	incompatDirData     = 0x1000
	incompatInlineData  = 0x8000
	incompatEncrypt     = 0x10000

	roCompatSparseSuper = 0x1
	roCompatLargeFile   = 0x2
	roCompatHugeFile    = 0x8
	roCompatDirNlink    = 0x20
	roCompatExtraIsize  = 0x40
)

// Group descriptor fields, as byte offsets; a descriptor is 32 bytes, or
// sDescSize with incompat64Bit.
const (
	gdBlockBitmap = 0x00 // uint32
	gdInodeBitmap = 0x04 // uint32
	gdInodeTable  = 0x08 // uint32, low half
	gdFreeBlocks  = 0x0C // uint16
	gdFreeInodes  = 0x0E // uint16
	gdUsedDirs    = 0x10 // uint16
	gdInodeTblHi  = 0x28 // uint32, in 64-byte descriptors
)

// Reserved inode numbers.
const (
	// RootInode is the inode number of the root directory.
	RootInode    = 2
	journalInode = 8
	// firstInode is the first inode for files: lost+found on a fresh
	// filesystem.
	firstInode = 11
)

// Inode fields, as byte offsets. The first goodOldInodeSize bytes are the
// classic inode; iExtraIsize says how much of the rest is fields, and
// in-inode extended attributes follow those.
const (
	goodOldInodeSize = 128

	iMode        = 0x00 // uint16: TypeMask bits and permissions
	iUID         = 0x02 // uint16, low half
	iSize        = 0x04 // uint32, low half
	iAtime       = 0x08 // uint32
	iCtime       = 0x0C // uint32
	iMtime       = 0x10 // uint32
	iGID         = 0x18 // uint16, low half
	iLinks       = 0x1A // uint16
	iBlocks      = 0x1C // uint32: 512-byte sectors, low half
	iFlags       = 0x20 // uint32: inodeFlag*
	iBlock       = 0x28 // 60 bytes: extent tree, block map, fast symlink or device
	iFileACL     = 0x68 // uint32: xattr block, low half
	iSizeHi      = 0x6C // uint32
	iBlocksHi    = 0x74 // uint16
	iFileACLHi   = 0x76 // uint16
	iUIDHi       = 0x78 // uint16
	iGIDHi       = 0x7A // uint16
	iExtraIsize  = 0x80 // uint16
	iCtimeExtra  = 0x84 // uint32: see encodeTime
	iMtimeExtra  = 0x88 // uint32
	iAtimeExtra  = 0x8C // uint32
	iCrtime      = 0x90 // uint32
	iCrtimeExtra = 0x94 // uint32

	iBlockLen = 60

	inodeFlagExtents    = 0x80000
	inodeFlagInlineData = 0x10000000
)

// File types in Inode.Mode&TypeMask, as in stat(2).
const (
	TypeMask    = 0xF000
	TypeFIFO    = 0x1000
	TypeChar    = 0x2000
	TypeDir     = 0x4000
	TypeBlock   = 0x6000
	TypeRegular = 0x8000
	TypeSymlink = 0xA000
	TypeSocket  = 0xC000
)

// Directory entries: an 8-byte header and the name, padded to 4 bytes;
// the last entry of a block spans to its end.
const (
	deInode   = 0 // uint32, 0 for an unused entry
	deRecLen  = 4 // uint16
	deNameLen = 6 // uint8 (uint16 without incompatFiletype)
	deType    = 7 // uint8: dirType*, with incompatFiletype
	deName    = 8

	dirTypeRegular = 1
	dirTypeDir     = 2
	dirTypeChar    = 3
	dirTypeBlock   = 4
	dirTypeFIFO    = 5
	dirTypeSocket  = 6
	dirTypeSymlink = 7
)

// Extent tree nodes: a 12-byte header, then 12-byte entries (leaf extents
// at depth 0, index entries above).
const (
	extentMagic     = 0xF30A
	ehMagic         = 0  // uint16
	ehEntries       = 2  // uint16
	ehMax           = 4  // uint16
	ehDepth         = 6  // uint16
	extentEntrySize = 12 // also the header's size

	eeBlock   = 0 // uint32: first logical block
	eeLen     = 4 // uint16: blocks; above maxInitExtent means unwritten
	eeStartHi = 6 // uint16
	eeStartLo = 8 // uint32

	eiBlock  = 0 // uint32: first logical block under this index
	eiLeafLo = 4 // uint32
	eiLeafHi = 8 // uint16

	maxInitExtent = 32768
)

// Extended attributes: a magic, then entries from the front and values
// from the back (in the inode after its extra fields, or in a block after
// a 32-byte header). Entry names and values are padded to 4 bytes; a zero
// word ends the entries.
const (
	xattrMagic       = 0xEA020000
	xattrBlockHeader = 32
	xattrEntryHeader = 16

	xhMagic    = 0  // uint32: xattrMagic
	xhRefcount = 4  // uint32: inodes whose i_file_acl names the block
	xhBlocks   = 8  // uint32: always 1
	xhHash     = 12 // uint32: see xattrBlockHash
	// The kernel shares a block among at most this many inodes
	// (EXT4_XATTR_REFCOUNT_MAX).
	xattrRefcountMax = 1024

	xeNameLen   = 0  // uint8
	xeNameIndex = 1  // uint8: see xattrPrefix
	xeValueOff  = 2  // uint16
	xeValueIno  = 4  // uint32: ea_inode
	xeValueSize = 8  // uint32
	xeHash      = 12 // uint32
	xeName      = 16
)

// ext4 stores POSIX ACLs in its own form: a version-1 header, then
// 4-byte entries (tag, permissions) and 8-byte ones (tag, permissions, id)
// for named users and groups.
const (
	aclDiskVersion    = 1
	aclDiskHeader     = 4
	aclDiskShortEntry = 4
	aclDiskEntry      = 8
)

// xattrIndex splits a full attribute name into its on-disk name index and
// the rest, the inverse of xattrPrefix. The ACL names come first: they
// share the "system." prefix.
func xattrIndex(full string) (index uint8, name string, ok bool) {
	for _, i := range []uint8{2, 3, 1, 4, 6, 7} {
		p, _ := xattrPrefix(i)
		if rest, found := strings.CutPrefix(full, p); found && (rest == "") == (i == 2 || i == 3) {
			return i, rest, true
		}
	}
	return 0, "", false
}

// xattrPrefix maps an on-disk name index to its namespace prefix.
func xattrPrefix(index uint8) (string, bool) {
	switch index {
	case 0:
		return "", true
	case 1:
		return "user.", true
	case 2:
		return "system.posix_acl_access", true
	case 3:
		return "system.posix_acl_default", true
	case 4:
		return "trusted.", true
	case 6:
		return "security.", true
	case 7:
		return "system.", true
	case 8:
		return "system.richacl", true
	}
	return "", false
}

// encodeTime splits t into an inode's 32-bit seconds and its _extra field:
// two more bits of seconds (the epoch) and the nanoseconds above them.
func encodeTime(t time.Time) (lo, extra uint32) {
	sec := t.Unix()
	epoch := uint32((sec-int64(int32(sec)))>>32) & 3
	return uint32(sec), epoch | uint32(t.Nanosecond())<<2
}

// decodeTime is the inverse of encodeTime; hasExtra is false for inodes
// too small to hold the _extra field. Nanoseconds out of range read as 0.
func decodeTime(lo, extra uint32, hasExtra bool) time.Time {
	secs := int64(int32(lo))
	var nsec int64
	if hasExtra {
		secs += int64(extra&3) << 32
		nsec = int64(extra >> 2)
		if nsec > 999999999 {
			nsec = 0
		}
	}
	return time.Unix(secs, nsec).UTC()
}
