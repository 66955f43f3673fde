package ociart

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// ErrNotGPT means the image has no valid GUID partition table.
var ErrNotGPT = errors.New("no valid GPT")

// gptEntry is one used GPT partition entry, kept with every field the
// entry has so a pulled image can be checked against the artifact's config.
type gptEntry struct {
	Number     int // 1-based index in the entry array
	Name       string
	Type       string // GUID, RFC 4122 text form
	GUID       string
	FirstLBA   uint64
	LastLBA    uint64
	Attributes uint64
}

// gptTable is what readGPT found: sector size, disk GUID, the used entries
// in entry-array order and where the backup header lives.
type gptTable struct {
	SectorSize int64
	DiskGUID   string
	BackupLBA  uint64
	Entries    []gptEntry
}

// guidString renders a GPT on-disk GUID (first three fields little-endian)
// in its text form.
func guidString(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:4]), le.Uint16(b[4:6]), le.Uint16(b[6:8]), b[8:10], b[10:16])
}

// readGPT reads and checks the primary GPT of a size-byte image (512-byte or
// 4096-byte sectors) and the backup header it points at, so a truncated
// image is refused rather than pushed.
func readGPT(r io.ReaderAt, size int64) (*gptTable, error) {
	for _, ss := range []int64{512, 4096} {
		if size < 3*ss {
			continue
		}
		sig := make([]byte, 8)
		if _, err := r.ReadAt(sig, ss); err != nil {
			return nil, fmt.Errorf("read GPT header at byte %d: %w", ss, err)
		}
		if string(sig) == "EFI PART" {
			return readGPTSectors(r, size, ss)
		}
	}
	return nil, fmt.Errorf("%w: no \"EFI PART\" signature at sector 1 (is this an MBR image or not a disk image at all? convert it with `provision image build --base`)", ErrNotGPT)
}

type gptHeader struct {
	myLBA, altLBA, firstUsable, lastUsable, entriesLBA uint64
	numEntries, entrySize, entriesCRC                  uint32
	diskGUID                                           string
}

func parseGPTHeader(b []byte, ss int64, where string) (gptHeader, error) {
	le := binary.LittleEndian
	if string(b[:8]) != "EFI PART" {
		return gptHeader{}, fmt.Errorf("%w: %s header has no \"EFI PART\" signature", ErrNotGPT, where)
	}
	hsize := le.Uint32(b[12:])
	if hsize < 92 || int64(hsize) > ss {
		return gptHeader{}, fmt.Errorf("%w: %s header size %d is outside 92..%d", ErrNotGPT, where, hsize, ss)
	}
	h := make([]byte, hsize)
	copy(h, b)
	crc := le.Uint32(h[16:])
	le.PutUint32(h[16:], 0)
	if crc32.ChecksumIEEE(h) != crc {
		return gptHeader{}, fmt.Errorf("%w: %s header CRC mismatch (corrupted table)", ErrNotGPT, where)
	}
	return gptHeader{
		myLBA: le.Uint64(b[24:]), altLBA: le.Uint64(b[32:]),
		firstUsable: le.Uint64(b[40:]), lastUsable: le.Uint64(b[48:]),
		diskGUID:   guidString(b[56:72]),
		entriesLBA: le.Uint64(b[72:]), numEntries: le.Uint32(b[80:]), entrySize: le.Uint32(b[84:]), entriesCRC: le.Uint32(b[88:]),
	}, nil
}

func readGPTSectors(r io.ReaderAt, size, ss int64) (*gptTable, error) {
	sectors := uint64(size / ss)
	b := make([]byte, ss)
	if _, err := r.ReadAt(b, ss); err != nil {
		return nil, fmt.Errorf("read primary GPT header: %w", err)
	}
	h, err := parseGPTHeader(b, ss, "primary")
	if err != nil {
		return nil, err
	}
	if h.myLBA != 1 {
		return nil, fmt.Errorf("%w: primary header says it is at LBA %d, not 1", ErrNotGPT, h.myLBA)
	}
	if h.entrySize < 128 || h.entrySize > 4096 || h.entrySize%8 != 0 || h.numEntries == 0 || h.numEntries > 1024 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes is not a GPT entry array", ErrNotGPT, h.numEntries, h.entrySize)
	}
	arrayBytes := int64(h.numEntries) * int64(h.entrySize)
	if h.entriesLBA < 2 || h.entriesLBA >= sectors || int64(h.entriesLBA)*ss+arrayBytes > size {
		return nil, fmt.Errorf("%w: entry array at LBA %d lies outside the %d-sector image", ErrNotGPT, h.entriesLBA, sectors)
	}
	if h.altLBA >= sectors {
		return nil, fmt.Errorf("image truncated: the backup GPT header is at LBA %d but the image has only %d sectors (%d bytes); copy the whole image", h.altLBA, sectors, size)
	}
	if h.firstUsable > h.lastUsable || h.lastUsable >= sectors {
		return nil, fmt.Errorf("%w: usable LBAs %d..%d do not fit the %d-sector image", ErrNotGPT, h.firstUsable, h.lastUsable, sectors)
	}
	entries := make([]byte, arrayBytes)
	if _, err := r.ReadAt(entries, int64(h.entriesLBA)*ss); err != nil {
		return nil, fmt.Errorf("read GPT entry array: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != h.entriesCRC {
		return nil, fmt.Errorf("%w: entry array CRC mismatch (corrupted table)", ErrNotGPT)
	}
	if _, err := r.ReadAt(b, int64(h.altLBA)*ss); err != nil {
		return nil, fmt.Errorf("read backup GPT header at LBA %d: %w", h.altLBA, err)
	}
	backup, err := parseGPTHeader(b, ss, "backup")
	if err != nil {
		return nil, fmt.Errorf("%w (the image may be truncated or its end overwritten)", err)
	}
	if backup.myLBA != h.altLBA || backup.entriesCRC != h.entriesCRC || backup.diskGUID != h.diskGUID {
		return nil, fmt.Errorf("%w: backup header at LBA %d does not match the primary header", ErrNotGPT, h.altLBA)
	}
	t := &gptTable{SectorSize: ss, DiskGUID: h.diskGUID, BackupLBA: h.altLBA}
	le := binary.LittleEndian
	for i := 0; i < int(h.numEntries); i++ {
		e := entries[i*int(h.entrySize):]
		var zero [16]byte
		if string(e[:16]) == string(zero[:]) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first || first < h.firstUsable || last > h.lastUsable {
			return nil, fmt.Errorf("%w: partition %d spans LBA %d..%d outside the usable %d..%d", ErrNotGPT, i+1, first, last, h.firstUsable, h.lastUsable)
		}
		var name []uint16
		for j := 0; j < 36; j++ {
			c := le.Uint16(e[56+2*j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		t.Entries = append(t.Entries, gptEntry{Number: i + 1, Name: string(utf16.Decode(name)), Type: guidString(e[0:16]), GUID: guidString(e[16:32]),
			FirstLBA: first, LastLBA: last, Attributes: le.Uint64(e[48:])})
	}
	if len(t.Entries) == 0 {
		return nil, fmt.Errorf("%w: the partition table is empty", ErrNotGPT)
	}
	for i := range t.Entries {
		for j := i + 1; j < len(t.Entries); j++ {
			a, b := t.Entries[i], t.Entries[j]
			if a.FirstLBA <= b.LastLBA && b.FirstLBA <= a.LastLBA {
				return nil, fmt.Errorf("%w: partitions %d and %d overlap", ErrNotGPT, a.Number, b.Number)
			}
		}
	}
	return t, nil
}
