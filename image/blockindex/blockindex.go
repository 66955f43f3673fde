// Package blockindex builds, stores and compares block hash indexes of disk images,
// so that an over-the-air update downloads only the blocks a robot does not already
// have somewhere on its disk.
//
// An index is the image cut into fixed-size blocks with the sha256 of each block. The
// robot indexes what it has (its current slot), fetches the new image's index, and
// Missing says which blocks of the new image match no block it has; those are
// downloaded, every other block is copied locally from wherever its content already
// is (Lookup). Blocks that are all zeros (including holes in the sparse image) are
// recorded as the all-zero hash, which no real sha256 produces, so they cost nothing
// to index and are never downloaded.
//
// The default block size is 64 KiB. It is a trade between the index, which every
// update downloads in full, and the granularity of reuse: at 64 KiB the index is
// 1/2048 of the image (2 MiB for a 4 GiB image) while a changed file costs at most
// 64 KiB more than its own size; 4 KiB blocks would make the index 32 MiB, and
// 1 MiB blocks would turn each scattered file-system metadata update (bitmaps, inode
// tables, directory blocks) into a megabyte download. Block sizes must be powers of two
// from 4 KiB to 8 MiB, i.e. divide the 8 MiB partition alignment of our A/B layout, so
// that no block straddles two partitions and a partition's blocks are the same
// wherever the partition sits.
//
// File format (all integers big-endian), deterministic for a given image:
//
//	magic "LKWBIDX1" | version uint32 (1) | block size uint32 | image size uint64 |
//	block count uint64 | block count × 32-byte sha256 | sha256 of everything before
//
// The last block, when the image size is not a multiple of the block size, is hashed
// as if zero-padded to a whole block.
package blockindex

import (
	"fmt"
)

// Magic starts every index file.
const Magic = "LKWBIDX1"

// FormatVersion is the version of the file format written by WriteTo.
const FormatVersion = 1

// DefaultBlockSize is the block size Build uses when given 0 (see the package comment).
const DefaultBlockSize = 64 << 10

const (
	minBlockSize = 4 << 10
	maxBlockSize = 8 << 20
	// maxImageSize bounds what an index may describe (1 PiB), so block arithmetic
	// cannot overflow.
	maxImageSize = 1 << 50
)

// Index is the per-block sha256 of an image.
type Index struct {
	BlockSize int
	ImageSize int64
	// Hashes has one entry per block; the all-zero value marks a block of zeros.
	Hashes [][32]byte
}

// SidecarPath is where the index of an image is kept: next to the image.
func SidecarPath(imagePath string) string { return imagePath + ".blkidx" }

// IsZeroBlock reports whether h is the marker of an all-zero block.
func IsZeroBlock(h [32]byte) bool { return h == [32]byte{} }

// BlockCount is the number of blocks in the image: ceil(ImageSize / BlockSize).
func (ix *Index) BlockCount() int64 { return int64(len(ix.Hashes)) }

// Offset is the byte offset of block i in the image.
func (ix *Index) Offset(i int64) int64 { return i * int64(ix.BlockSize) }

// Lookup maps the content hash of every non-zero block to the first block holding
// that content, which is where a delta update copies a block from instead of
// downloading it.
func (ix *Index) Lookup() map[[32]byte]int64 {
	m := make(map[[32]byte]int64, len(ix.Hashes))
	for i, h := range ix.Hashes {
		if IsZeroBlock(h) {
			continue
		}
		if _, ok := m[h]; !ok {
			m[h] = int64(i)
		}
	}
	return m
}

// Missing lists, in ascending order, the blocks of want whose content is in no block
// of have: the blocks an update must download. Zero blocks are never missing. If
// have is nil or its block size differs from want's, every non-zero block of want is
// missing (indexes of different block sizes cannot be compared).
func Missing(have, want *Index) []int64 {
	if want == nil {
		return nil
	}
	var known map[[32]byte]int64
	if have != nil && have.BlockSize == want.BlockSize {
		known = have.Lookup()
	}
	var out []int64
	for i, h := range want.Hashes {
		if IsZeroBlock(h) {
			continue
		}
		if _, ok := known[h]; !ok {
			out = append(out, int64(i))
		}
	}
	return out
}

// validBlockSize checks bs is a power of two from 4 KiB to 8 MiB.
func validBlockSize(bs int64) error {
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two from %d to %d bytes (it must divide the 8 MiB partition alignment)",
			bs, minBlockSize, maxBlockSize)
	}
	return nil
}

func blockCount(imageSize, bs int64) int64 { return (imageSize + bs - 1) / bs }

// validate checks the header fields against each other.
func (ix *Index) validate() error {
	if err := validBlockSize(int64(ix.BlockSize)); err != nil {
		return err
	}
	if ix.ImageSize < 0 || ix.ImageSize > maxImageSize {
		return fmt.Errorf("image size %d out of range (0..%d)", ix.ImageSize, int64(maxImageSize))
	}
	if want := blockCount(ix.ImageSize, int64(ix.BlockSize)); int64(len(ix.Hashes)) != want {
		return fmt.Errorf("%d block hashes for a %d-byte image of %d-byte blocks, want %d",
			len(ix.Hashes), ix.ImageSize, ix.BlockSize, want)
	}
	return nil
}
