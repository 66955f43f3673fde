// Package bmap reads and writes block maps in the format of bmaptool (Debian/Yocto
// bmap-tools), version 2.0 with sha256 checksums.
//
// A block map lists the blocks of a sparse disk image that hold data, so that flashing
// the image (`bmaptool copy image.img /dev/sdX`) writes only those blocks and skips the
// holes, and so that each written range can be verified against its checksum. Images
// built by the image builder are written as sparse files; Scan finds their data with
// SEEK_DATA/SEEK_HOLE and hashes it, WriteXML renders the map byte-for-byte the way
// `bmaptool create` would, and Parse reads and validates any 1.4/2.0 bmap file
// (including its self-checksum, exactly as `bmaptool copy` verifies it).
package bmap

import "fmt"

// DefaultBlockSize is the block size Scan uses when none is given: the ext4 and page
// size, and what bmaptool itself reports on the file systems images are built on.
const DefaultBlockSize = 4096

// Range is a run of mapped blocks.
type Range struct {
	First, Last int64  // block numbers, inclusive
	SHA256      string // lowercase hex sha256 of the range's bytes (clipped at the image end); "" when absent
}

// Map is a parsed or scanned block map.
type Map struct {
	ImageSize    int64 // bytes
	BlockSize    int   // bytes
	BlocksCount  int64 // ceil(ImageSize / BlockSize)
	MappedBlocks int64 // sum of the ranges' lengths
	Ranges       []Range
}

// SidecarPath is where the block map of an image is kept: next to it, as bmaptool
// looks for it by default.
func SidecarPath(imagePath string) string { return imagePath + ".bmap" }

// maxBlockSize bounds block sizes so that block arithmetic cannot overflow and a
// hostile map cannot make readers allocate absurd buffers.
const maxBlockSize = 1 << 30

// Validate checks that the map is internally consistent: a positive block size, a
// block count matching the image size, ranges sorted, non-overlapping and inside the
// image, well-formed checksums and a mapped-block count equal to the ranges' total.
func (m *Map) Validate() error {
	if m.BlockSize <= 0 || m.BlockSize > maxBlockSize {
		return fmt.Errorf("block size %d out of range (1..%d)", m.BlockSize, maxBlockSize)
	}
	if m.ImageSize <= 0 {
		return fmt.Errorf("image size %d: must be positive (bmaptool cannot use a map of an empty image)", m.ImageSize)
	}
	bs := int64(m.BlockSize)
	if want := m.ImageSize/bs + boolInt(m.ImageSize%bs != 0); m.BlocksCount != want {
		return fmt.Errorf("blocks count %d does not match image size %d bytes at %d bytes per block (want %d)",
			m.BlocksCount, m.ImageSize, m.BlockSize, want)
	}
	var mapped int64
	for i, r := range m.Ranges {
		if r.First < 0 || r.First > r.Last {
			return fmt.Errorf("range %d (%d-%d): first block after last or negative", i, r.First, r.Last)
		}
		if r.Last >= m.BlocksCount {
			return fmt.Errorf("range %d (%d-%d): beyond the last block %d of the image", i, r.First, r.Last, m.BlocksCount-1)
		}
		if i > 0 && r.First <= m.Ranges[i-1].Last {
			return fmt.Errorf("range %d (%d-%d): not after the previous range (%d-%d); ranges must be sorted and not overlap",
				i, r.First, r.Last, m.Ranges[i-1].First, m.Ranges[i-1].Last)
		}
		if r.SHA256 != "" && !isLowerHex(r.SHA256, 64) {
			return fmt.Errorf("range %d (%d-%d): checksum %q is not 64 lowercase hex digits", i, r.First, r.Last, r.SHA256)
		}
		mapped += r.Last - r.First + 1
	}
	if mapped != m.MappedBlocks {
		return fmt.Errorf("mapped blocks count %d does not match the %d blocks in the ranges", m.MappedBlocks, mapped)
	}
	return nil
}

// MappedBytes is how many bytes of the image the ranges cover (the last block may
// be partial).
func (m *Map) MappedBytes() int64 {
	var n int64
	for _, r := range m.Ranges {
		n += rangeBytes(r, int64(m.BlockSize), m.ImageSize)
	}
	return n
}

// rangeBytes is the length of a range clipped at the image end.
func rangeBytes(r Range, bs, imageSize int64) int64 {
	end := min((r.Last+1)*bs, imageSize)
	return end - r.First*bs
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
