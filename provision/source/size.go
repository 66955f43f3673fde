package source

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// A streamed, compressed image must announce its decompressed size before the
// first byte is written: targets are sized (and their last MiB, the backup GPT,
// placed) from it. These readers find it in the compressed file's own
// metadata without decompressing anything.

var errNoSize = errors.New("the compressed file does not record the image size")

const (
	maxXZStreams    = 1024     // concatenated streams followed backwards before giving up
	maxXZIndexBytes = 16 << 20 // a 16 TiB image in 64 MiB blocks has an index of ~1 MiB
	maxXZPadding    = 1 << 20  // stream padding skipped between concatenated streams
	sectorSize      = 512      // every disk image is a whole number of sectors
)

var xzHeaderMagic = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}

// xzSize returns the uncompressed size recorded in the indexes of the xz file
// r of the given length: each stream ends with a footer pointing back to an
// index that lists every block's compressed and uncompressed size. Concatenated
// streams (and stream padding) are followed back to the start of the file.
func xzSize(r io.ReaderAt, length int64) (int64, error) {
	if length < 24 {
		return 0, fmt.Errorf("xz: %d bytes cannot hold a stream (truncated or not an xz file)", length)
	}
	var total int64
	end := length
	for streams := 0; end > 0; streams++ {
		if streams == maxXZStreams {
			return 0, fmt.Errorf("xz: more than %d concatenated streams", maxXZStreams)
		}
		// Stream padding: zeros, a multiple of four bytes, between and after
		// streams.
		for skipped := 0; ; skipped += 4 {
			if end < 4 || skipped > maxXZPadding {
				return 0, fmt.Errorf("xz: no stream footer before offset %d (not an xz file, or truncated)", end)
			}
			var pad [4]byte
			if _, err := r.ReadAt(pad[:], end-4); err != nil {
				return 0, fmt.Errorf("xz: read stream footer: %w", err)
			}
			if pad != [4]byte{} {
				break
			}
			end -= 4
		}
		if end < 24 {
			return 0, fmt.Errorf("xz: %d bytes cannot hold a stream header and footer (truncated file?)", end)
		}
		var footer [12]byte
		if _, err := r.ReadAt(footer[:], end-12); err != nil {
			return 0, fmt.Errorf("xz: read stream footer: %w", err)
		}
		if footer[10] != 'Y' || footer[11] != 'Z' {
			return 0, fmt.Errorf("xz: no stream footer magic at offset %d (truncated or not an xz file)", end-2)
		}
		if crc32.ChecksumIEEE(footer[4:10]) != binary.LittleEndian.Uint32(footer[0:4]) {
			return 0, fmt.Errorf("xz: stream footer at offset %d fails its CRC32 (corrupt file)", end-12)
		}
		indexSize := (int64(binary.LittleEndian.Uint32(footer[4:8])) + 1) * 4
		if indexSize > maxXZIndexBytes || indexSize > end-24 {
			return 0, fmt.Errorf("xz: index of %d bytes does not fit before offset %d (corrupt file)", indexSize, end-12)
		}
		index := make([]byte, indexSize)
		if _, err := r.ReadAt(index, end-12-indexSize); err != nil {
			return 0, fmt.Errorf("xz: read index: %w", err)
		}
		blocks, uncompressed, err := parseXZIndex(index)
		if err != nil {
			return 0, err
		}
		streamSize := 12 + blocks + indexSize + 12
		if blocks > end || streamSize > end {
			return 0, fmt.Errorf("xz: the index lists %d bytes of blocks, more than the file holds (corrupt file)", blocks)
		}
		start := end - streamSize
		var header [12]byte
		if _, err := r.ReadAt(header[:], start); err != nil {
			return 0, fmt.Errorf("xz: read stream header: %w", err)
		}
		if !bytes.Equal(header[:6], xzHeaderMagic) || crc32.ChecksumIEEE(header[6:8]) != binary.LittleEndian.Uint32(header[8:12]) {
			return 0, fmt.Errorf("xz: no valid stream header at offset %d where the index says the stream starts (corrupt file)", start)
		}
		if !bytes.Equal(header[6:8], footer[8:10]) {
			return 0, fmt.Errorf("xz: stream flags of the header and footer at offset %d differ (corrupt file)", start)
		}
		if uncompressed > 1<<62-total {
			return 0, fmt.Errorf("xz: uncompressed sizes overflow (corrupt file)")
		}
		total += uncompressed
		end = start
	}
	return total, nil
}

// parseXZIndex parses an xz index (indicator, record count, records of
// unpadded and uncompressed size, padding, CRC32) and returns the bytes its
// blocks take in the stream (each padded to four bytes) and their uncompressed
// total.
func parseXZIndex(b []byte) (blocks, uncompressed int64, err error) {
	if len(b) < 8 || len(b)%4 != 0 || b[0] != 0 {
		return 0, 0, errors.New("xz: malformed index (corrupt file)")
	}
	body := b[:len(b)-4]
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return 0, 0, errors.New("xz: index fails its CRC32 (corrupt file)")
	}
	pos := 1
	count, err := xzVarint(body, &pos)
	if err != nil {
		return 0, 0, err
	}
	if count > uint64(len(body)) {
		return 0, 0, fmt.Errorf("xz: index claims %d records in %d bytes (corrupt file)", count, len(body))
	}
	const limit = 1 << 62
	for i := uint64(0); i < count; i++ {
		unpadded, err := xzVarint(body, &pos)
		if err != nil {
			return 0, 0, err
		}
		size, err := xzVarint(body, &pos)
		if err != nil {
			return 0, 0, err
		}
		if unpadded == 0 || unpadded > limit || size > limit {
			return 0, 0, errors.New("xz: index record out of range (corrupt file)")
		}
		blocks += int64((unpadded + 3) &^ 3)
		uncompressed += int64(size)
		if blocks > limit || uncompressed > limit {
			return 0, 0, errors.New("xz: index sizes overflow (corrupt file)")
		}
	}
	for ; pos%4 != 0; pos++ {
		if pos >= len(body) || body[pos] != 0 {
			return 0, 0, errors.New("xz: index padding is not zeros (corrupt file)")
		}
	}
	if pos != len(body) {
		return 0, 0, errors.New("xz: index has trailing bytes (corrupt file)")
	}
	return blocks, uncompressed, nil
}

// xzVarint decodes xz's multibyte integer (7 bits a byte, little end first, at
// most 9 bytes, no superfluous zero byte) at b[*pos].
func xzVarint(b []byte, pos *int) (uint64, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		if *pos >= len(b) {
			return 0, errors.New("xz: index ends inside a number (corrupt file)")
		}
		c := b[*pos]
		*pos++
		v |= uint64(c&0x7F) << (7 * i)
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				return 0, errors.New("xz: index number is not minimally encoded (corrupt file)")
			}
			return v, nil
		}
	}
	return 0, errors.New("xz: index number longer than 9 bytes (corrupt file)")
}

// zstdHeaderMax is the most bytes zstdSize looks at: a frame header is at most
// 18 bytes; room is left for a small skippable frame in front of it.
const zstdHeaderMax = 64 << 10

// zstdSize returns the frame content size from the header of the first zstd
// frame in head (the first bytes of the file), skipping skippable frames. The
// zstd tool records it whenever it compresses a file (not a pipe). Like any
// single-frame size it assumes one frame; the stream's end check catches a
// multi-frame file (pzstd, concatenation) that this undercounts.
func zstdSize(head []byte) (int64, error) {
	for pos := 0; ; {
		if len(head)-pos < 8 {
			return 0, errors.New("zstd: file too short for a frame header (truncated download?)")
		}
		magic := binary.LittleEndian.Uint32(head[pos:])
		if magic&0xFFFFFFF0 == 0x184D2A50 { // skippable frame
			skip := uint64(binary.LittleEndian.Uint32(head[pos+4:]))
			if skip > uint64(len(head)-pos-8) {
				return 0, fmt.Errorf("zstd: a %d-byte skippable frame hides the frame header", skip)
			}
			pos += 8 + int(skip)
			continue
		}
		if magic != 0xFD2FB528 {
			return 0, errors.New("zstd: no frame magic at the start (not a zstd file)")
		}
		h := head[pos+4:]
		desc := h[0]
		if desc&0x08 != 0 {
			return 0, errors.New("zstd: reserved bit set in the frame header (corrupt file)")
		}
		singleSegment := desc&0x20 != 0
		n := 1
		if !singleSegment {
			n++ // window descriptor
		}
		n += []int{0, 1, 2, 4}[desc&0x03] // dictionary id
		var fcsBytes int
		switch desc >> 6 {
		case 0:
			if singleSegment {
				fcsBytes = 1
			}
		case 1:
			fcsBytes = 2
		case 2:
			fcsBytes = 4
		case 3:
			fcsBytes = 8
		}
		if fcsBytes == 0 {
			return 0, fmt.Errorf("zstd: %w (compressed from a pipe?)", errNoSize)
		}
		if len(h) < n+fcsBytes {
			return 0, errors.New("zstd: file too short for its frame header (truncated download?)")
		}
		f := h[n : n+fcsBytes]
		var size uint64
		switch fcsBytes {
		case 1:
			size = uint64(f[0])
		case 2:
			size = uint64(binary.LittleEndian.Uint16(f)) + 256
		case 4:
			size = uint64(binary.LittleEndian.Uint32(f))
		case 8:
			size = binary.LittleEndian.Uint64(f)
		}
		if size > 1<<62 {
			return 0, fmt.Errorf("zstd: frame content size %d out of range (corrupt file)", size)
		}
		return int64(size), nil
	}
}

// gzipSize returns the image size from the ISIZE field of a gzip file's last
// 8 bytes (tail), given the compressed length. ISIZE is the size modulo 4 GiB
// of the last member only, so it is taken only when it is plausible: a whole
// number of sectors, and no smaller than deflate could have made the file
// (stored blocks grow data by 5 bytes in 65535). A 5 GiB image whose ISIZE
// wrapped to a plausible value slips through; the stream's end check then
// stops the flash before any target is reported good.
func gzipSize(tail []byte, length int64) (int64, error) {
	if len(tail) < 8 || length < 18 {
		return 0, errors.New("gzip: file too short for a gzip trailer (truncated download?)")
	}
	isize := int64(binary.LittleEndian.Uint32(tail[len(tail)-4:]))
	minimum := (length - 18 - 1024) - (length-18-1024)/8192 // generous header allowance
	switch {
	case isize == 0:
		return 0, fmt.Errorf("gzip: the trailer records size 0 (modulo 4 GiB): %w", errNoSize)
	case isize%sectorSize != 0:
		return 0, fmt.Errorf("gzip: the trailer's size %d is not a whole number of 512-byte sectors (an image over 4 GiB, or several gzip members): %w", isize, errNoSize)
	case isize < minimum:
		return 0, fmt.Errorf("gzip: the trailer's size %d is smaller than the %d-byte compressed file (an image over 4 GiB, or several gzip members): %w", isize, length, errNoSize)
	}
	return isize, nil
}
