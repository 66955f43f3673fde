// Package fat writes FAT16 and FAT32 filesystems and reads FAT12, FAT16 and
// FAT32 ones, all without mounting, root or loop devices.
//
// Writing: Write lays a tree.Tree down as a fresh FAT16 or FAT32 filesystem
// in a partition-sized region that reads as zeros (a fresh sparse image
// file). The same tree and Params give the same bytes. Only regular files
// and directories can be stored; a tree that does not fit or holds anything
// else is refused before a byte is written.
//
// Reading, two ways, because the two callers want different things:
//
//   - Open gives an FS over a FAT16 or FAT32 filesystem with 512-byte
//     sectors, such as the boot partitions Write makes: look a file up by
//     path (case-insensitively, like FAT), read it, or rewrite it in place
//     with the same length (FS.Overwrite). An in-place rewrite touches only
//     the file's clusters, never the FAT or a directory, so an interrupted
//     rewrite on a device never leaves the filesystem inconsistent. The FAT
//     is read entry by entry and nothing is cached.
//   - NewReader gives a Reader that walks a whole FAT12, FAT16 or FAT32
//     filesystem (Reader.Walk) and streams file contents cluster by cluster
//     (Reader.Open), for importing a downloaded Raspberry Pi OS image. Those
//     bytes are untrusted: every chain and offset is checked, and corrupt
//     input is an error wrapping ErrCorrupt, never a panic or a loop.
//
// This file holds the on-disk layout both sides share.
package fat

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Type is the FAT variant.
type Type int

const (
	FAT12 Type = 12 // read only: Write makes FAT16 or FAT32
	FAT16 Type = 16
	FAT32 Type = 32
)

// String is "FAT12", "FAT16" or "FAT32".
func (t Type) String() string { return fmt.Sprintf("FAT%d", int(t)) }

// The type follows from the number of data clusters alone, as Microsoft's
// specification says: below minClusters16 it is FAT12, below minClusters32
// FAT16, else FAT32.
const (
	minClusters16 = 4085
	minClusters32 = 65525
)

func typeForClusters(clusters uint32) Type {
	switch {
	case clusters < minClusters16:
		return FAT12
	case clusters < minClusters32:
		return FAT16
	default:
		return FAT32
	}
}

// sectorSize is the only sector size Write and Open handle.
const sectorSize = 512

// Boot sector fields (the BIOS parameter block), as byte offsets.
const (
	bsJump            = 0
	bsOEMName         = 3
	bsBytesPerSector  = 11  // uint16
	bsSectorsPerClus  = 13  // uint8
	bsReservedSectors = 14  // uint16
	bsFATCount        = 16  // uint8
	bsRootEntries     = 17  // uint16, 0 on FAT32
	bsTotalSectors16  = 19  // uint16, 0 when the count needs bsTotalSectors32
	bsMedia           = 21  // uint8
	bsFATSectors16    = 22  // uint16, 0 on FAT32
	bsSectorsPerTrack = 24  // uint16
	bsHeads           = 26  // uint16
	bsHiddenSectors   = 28  // uint32: the partition's first LBA
	bsTotalSectors32  = 32  // uint32
	bsFATSectors32    = 36  // uint32, FAT32 only
	bsRootCluster     = 44  // uint32, FAT32 only
	bsFSInfoSector    = 48  // uint16, FAT32 only
	bsBackupBoot      = 50  // uint16, FAT32 only
	bsSignature       = 510 // 0x55 0xAA

	// The extended BPB starts at extBPB16 on FAT12/16 and at extBPB32 on
	// FAT32; its fields are offsets from there.
	extBPB16    = 36
	extBPB32    = 64
	extDrive    = 0  // uint8
	extBootSig  = 2  // extBootSigValue when the fields after it are valid
	extVolumeID = 3  // uint32
	extLabel    = 7  // 11 bytes, space padded
	extFSType   = 18 // 8 bytes, "FAT16   " or "FAT32   "

	extBootSigValue = 0x29
	labelLen        = 11
)

// bpb is the part of the boot sector that locates the filesystem's regions,
// as stored: the readers check it, each for what it accepts.
type bpb struct {
	bytesPerSector    uint32
	sectorsPerCluster uint32
	reserved          uint32
	fats              uint32
	rootEntries       uint32
	totalSectors      uint32
	fatSectors        uint32
	rootCluster       uint32 // meaningful on FAT32 only
}

func readBPB(b []byte) bpb {
	le := binary.LittleEndian
	p := bpb{
		bytesPerSector:    uint32(le.Uint16(b[bsBytesPerSector:])),
		sectorsPerCluster: uint32(b[bsSectorsPerClus]),
		reserved:          uint32(le.Uint16(b[bsReservedSectors:])),
		fats:              uint32(b[bsFATCount]),
		rootEntries:       uint32(le.Uint16(b[bsRootEntries:])),
		totalSectors:      uint32(le.Uint16(b[bsTotalSectors16:])),
		fatSectors:        uint32(le.Uint16(b[bsFATSectors16:])),
		rootCluster:       le.Uint32(b[bsRootCluster:]),
	}
	if p.totalSectors == 0 {
		p.totalSectors = le.Uint32(b[bsTotalSectors32:])
	}
	if p.fatSectors == 0 {
		p.fatSectors = le.Uint32(b[bsFATSectors32:])
	}
	return p
}

// FSInfo sector fields (FAT32), as byte offsets, and its signatures.
const (
	fsiLeadSig   = 0   // fsiLeadValue
	fsiStructSig = 484 // fsiStructValue
	fsiFree      = 488 // uint32: free clusters
	fsiNextFree  = 492 // uint32: where to look for a free cluster
	fsiTrailSig  = 508 // fsiTrailValue

	fsiLeadValue   = 0x41615252
	fsiStructValue = 0x61417272
	fsiTrailValue  = 0xAA550000
)

// Allocation table entries: a chain ends at an entry at or above eocMin
// for the type. FAT32 entries are 28 bits (fat32Mask).
const (
	eocMin12  = 0xFF8
	eocMin16  = 0xFFF8
	eocMin32  = 0x0FFFFFF8
	fat32Mask = 0x0FFFFFFF
)

// Directory entries are dirEntrySize bytes; these are their fields, as
// byte offsets.
const (
	dirEntrySize = 32

	deName      = 0  // 8+3 bytes, space padded
	deAttr      = 11 // uint8
	deCase      = 12 // uint8: caseLowerBase, caseLowerExt (Windows NT)
	deCTime     = 14 // uint16
	deCDate     = 16 // uint16
	deADate     = 18 // uint16
	deClusterHi = 20 // uint16, FAT32 only
	deMTime     = 22 // uint16
	deMDate     = 24 // uint16
	deClusterLo = 26 // uint16
	deSize      = 28 // uint32

	// The first name byte: entryEnd ends the directory, entryFree marks a
	// deleted entry, entryKanjiE5 stands for a name starting with 0xE5.
	entryEnd     = 0x00
	entryFree    = 0xE5
	entryKanjiE5 = 0x05

	attrVolume  = 0x08
	attrDir     = 0x10
	attrArchive = 0x20
	// attrLFN (read-only, hidden, system, volume) marks a long-name entry.
	attrLFN = 0x0F

	caseLowerBase = 0x08
	caseLowerExt  = 0x10

	// A long-name entry holds lfnChars UTF-16 characters of the name; the
	// first byte is its 1-based order, with lfnLast on the entry holding
	// the name's end (written first), and lfnChecksum is the checksum of
	// the short entry it belongs to.
	lfnLast     = 0x40
	lfnOrder    = 0x1F
	lfnChecksum = 13
	lfnChars    = 13
)

// lfnCharOffset is where character i (0–12) of a long-name entry is.
func lfnCharOffset(i int) int {
	switch {
	case i < 5:
		return 1 + 2*i
	case i < 11:
		return 14 + 2*(i-5)
	default:
		return 28 + 2*(i-11)
	}
}

// checksum is the short name's checksum that its long-name entries carry.
func checksum(short []byte) byte {
	var s byte
	for _, c := range short {
		s = (s>>1 | s<<7) + c
	}
	return s
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

// fatTime decodes a directory entry's date and time. FAT keeps local time
// without a zone; it is read as UTC.
func fatTime(date, tm uint16) time.Time {
	if date == 0 {
		return time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(1980+int(date>>9), time.Month(date>>5&0xF), int(date&0x1F),
		int(tm>>11), int(tm>>5&0x3F), int(tm&0x1F)*2, 0, time.UTC)
}
