package layout

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// GUID is a GUID in RFC 4122 (string) byte order; the GPT stores the first
// three fields little-endian, which WriteGPT and ReadGPT convert.
type GUID [16]byte

// ParseGUID reads "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
func ParseGUID(s string) (GUID, error) {
	var g GUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 || len(s) != 36 {
		return g, fmt.Errorf("GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	if _, err := hex.Decode(g[:], []byte(h)); err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	return g, nil
}

// MustParseGUID is ParseGUID for constants.
func MustParseGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String is the lower-case form used in PARTUUID=.
func (g GUID) String() string {
	h := hex.EncodeToString(g[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (g GUID) disk() []byte {
	b := make([]byte, 16)
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:], g[8:])
	return b
}

func guidFromDisk(b []byte) GUID {
	var g GUID
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:16])
	return g
}

const (
	sector     = 512
	numEntries = 128
	entrySize  = 128
	entriesLen = numEntries * entrySize // 32 sectors
)

// WriteGPT writes the protective MBR, the primary GPT at the start and the
// backup GPT at the end of a p.Size-byte image.
func WriteGPT(w io.WriterAt, p *Plan) error {
	if p.Size%sector != 0 || p.Size < 2*Align {
		return fmt.Errorf("image size %d is not a whole number of sectors or too small", p.Size)
	}
	lastLBA := uint64(p.Size/sector - 1)
	entries := make([]byte, entriesLen)
	for i, part := range p.Partitions {
		if part.Number != i+1 || i >= numEntries {
			return fmt.Errorf("partition %d out of order", part.Number)
		}
		if part.Start%sector != 0 || part.Size%sector != 0 || part.Start < 34*sector || uint64(part.End()/sector) > lastLBA-33 {
			return fmt.Errorf("partition %d (%s) does not fit the disk", part.Number, part.Name)
		}
		e := entries[i*entrySize:]
		copy(e[0:], part.Type.disk())
		copy(e[16:], part.GUID.disk())
		binary.LittleEndian.PutUint64(e[32:], uint64(part.Start/sector))
		binary.LittleEndian.PutUint64(e[40:], uint64(part.End()/sector-1))
		name := utf16.Encode([]rune(part.Name))
		if len(name) > 36 {
			return fmt.Errorf("partition name %q is longer than 36 characters", part.Name)
		}
		for j, c := range name {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	mbr := make([]byte, sector)
	pe := mbr[446:]
	pe[1], pe[2], pe[3] = 0x00, 0x02, 0x00
	pe[4] = 0xEE
	pe[5], pe[6], pe[7] = 0xFF, 0xFF, 0xFF
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(lastLBA, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(current, backup, entriesLBA uint64) []byte {
		h := make([]byte, sector)
		copy(h, "EFI PART")
		le := binary.LittleEndian
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], current)
		le.PutUint64(h[32:], backup)
		le.PutUint64(h[40:], 34)
		le.PutUint64(h[48:], lastLBA-33)
		copy(h[56:], p.DiskGUID.disk())
		le.PutUint64(h[72:], entriesLBA)
		le.PutUint32(h[80:], numEntries)
		le.PutUint32(h[84:], entrySize)
		le.PutUint32(h[88:], entriesCRC)
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	for _, wr := range []struct {
		b   []byte
		off int64
	}{
		{mbr, 0},
		{header(1, lastLBA, 2), sector},
		{entries, 2 * sector},
		{entries, int64(lastLBA-32) * sector},
		{header(lastLBA, 1, lastLBA-32), int64(lastLBA) * sector},
	} {
		if _, err := w.WriteAt(wr.b, wr.off); err != nil {
			return fmt.Errorf("write GPT: %w", err)
		}
	}
	return nil
}

// ErrNotGPT means the image has no valid GPT.
var ErrNotGPT = errors.New("no valid GPT")

// ReadGPT reads the primary GPT of a size-byte image, checking its CRCs.
func ReadGPT(r io.ReaderAt, size int64) (*Plan, error) {
	h := make([]byte, sector)
	if _, err := r.ReadAt(h, sector); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: %d bytes is too small to hold one", ErrNotGPT, size)
		}
		return nil, fmt.Errorf("read GPT header: %w", err)
	}
	le := binary.LittleEndian
	if string(h[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%w: no EFI PART signature at sector 1 (is this an MBR image?)", ErrNotGPT)
	}
	hsize := le.Uint32(h[12:])
	if hsize < 92 || hsize > sector {
		return nil, fmt.Errorf("%w: header size %d", ErrNotGPT, hsize)
	}
	crc := le.Uint32(h[16:])
	le.PutUint32(h[16:], 0)
	if crc32.ChecksumIEEE(h[:hsize]) != crc {
		return nil, fmt.Errorf("%w: header CRC mismatch", ErrNotGPT)
	}
	n, esz := le.Uint32(h[80:]), le.Uint32(h[84:])
	if esz < 128 || esz > 4096 || n == 0 || n > 1024 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes", ErrNotGPT, n, esz)
	}
	lba := le.Uint64(h[72:])
	if lba == 0 || lba > uint64(size/sector) {
		return nil, fmt.Errorf("%w: entries at LBA %d outside the image", ErrNotGPT, lba)
	}
	entries := make([]byte, int(n)*int(esz))
	if _, err := r.ReadAt(entries, int64(lba)*sector); err != nil {
		return nil, fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != le.Uint32(h[88:]) {
		return nil, fmt.Errorf("%w: entries CRC mismatch", ErrNotGPT)
	}
	p := &Plan{DiskGUID: guidFromDisk(h[56:72]), Size: size}
	for i := 0; i < int(n); i++ {
		e := entries[i*int(esz):]
		typ := guidFromDisk(e[0:16])
		if typ == (GUID{}) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first || last >= uint64(size/sector) {
			return nil, fmt.Errorf("%w: partition %d spans LBA %d–%d outside the image", ErrNotGPT, i+1, first, last)
		}
		var name []uint16
		for j := 0; j < 36; j++ {
			c := le.Uint16(e[56+2*j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		p.Partitions = append(p.Partitions, Partition{Number: i + 1, Name: string(utf16.Decode(name)), Type: typ, GUID: guidFromDisk(e[16:32]),
			Start: int64(first) * sector, Size: int64(last-first+1) * sector})
	}
	return p, nil
}

// CheckAB reports whether p is the six-partition A/B plan this package
// writes (names and types in order), so customize and inspect refuse other
// disks with a clear message.
func CheckAB(p *Plan) error {
	if len(p.Partitions) != 6 {
		return fmt.Errorf("the image has %d partitions, not the 6 of the Lekiwi A/B layout (bootconfig, boot_a, boot_b, system_a, system_b, persistent)", len(p.Partitions))
	}
	for i, part := range p.Partitions {
		if part.Number != i+1 || part.Name != partitionNames[i+1] {
			return fmt.Errorf("partition %d is %q, the Lekiwi A/B layout has %q there", part.Number, part.Name, partitionNames[i+1])
		}
	}
	return nil
}
