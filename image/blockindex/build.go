package blockindex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// readSize is how much a Build worker reads at once: whole blocks, large enough that
// syscalls are noise next to hashing. It is a multiple of every valid block size.
const readSize = 8 << 20

// Build indexes the image f with blocks of blockSize bytes (0 means
// DefaultBlockSize). Holes, found with SEEK_DATA/SEEK_HOLE, are zero blocks without
// being read; data is read in large pieces by one worker per CPU, so reading one
// piece overlaps hashing another. f is read with ReadAt and must not change meanwhile.
func Build(ctx context.Context, f *os.File, blockSize int) (*Index, error) {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	bs := int64(blockSize)
	if err := validBlockSize(bs); err != nil {
		return nil, fmt.Errorf("blockindex: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("blockindex: stat image %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("blockindex: image %s is not a regular file (mode %s)", f.Name(), fi.Mode())
	}
	size := fi.Size()
	if size > maxImageSize {
		return nil, fmt.Errorf("blockindex: image %s is %d bytes, beyond the %d-byte limit", f.Name(), size, int64(maxImageSize))
	}
	ix := &Index{BlockSize: blockSize, ImageSize: size, Hashes: make([][32]byte, blockCount(size, bs))}
	regions, err := dataRegions(ctx, f, size, bs)
	if err != nil {
		return nil, fmt.Errorf("blockindex: find data in %s: %w", f.Name(), err)
	}

	// Work items are block-aligned pieces of data regions of at most readSize bytes.
	type piece struct{ first, blocks int64 }
	perPiece := readSize / bs
	pieces := make(chan piece)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, readSize)
			for p := range pieces {
				if err := hashPiece(f, ix, p.first, p.blocks, buf); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
				}
			}
		}()
	}
feed:
	for _, r := range regions {
		for first := r.first; first <= r.last; first += perPiece {
			select {
			case pieces <- piece{first, min(perPiece, r.last-first+1)}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(pieces)
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("blockindex: index %s: %w", f.Name(), firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("blockindex: index %s: %w", f.Name(), err)
	}
	return ix, nil
}

// hashPiece hashes blocks [first, first+blocks) into ix.Hashes; workers write
// disjoint entries.
func hashPiece(f *os.File, ix *Index, first, blocks int64, buf []byte) error {
	bs := int64(ix.BlockSize)
	off := first * bs
	n := min(blocks*bs, ix.ImageSize-off)
	if _, err := f.ReadAt(buf[:n], off); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("image ended before offset %d; was it truncated while being indexed?", off+n)
		}
		return fmt.Errorf("read %d bytes at offset %d: %w", n, off, err)
	}
	clear(buf[n : blocks*bs]) // the last block of the image counts as zero-padded
	for i := range blocks {
		b := buf[i*bs : (i+1)*bs]
		if !isZero(b) {
			ix.Hashes[first+i] = sha256.Sum256(b)
		}
	}
	return nil
}

// isZero reports whether b is all zeros: the first byte is zero and every byte equals
// the one before it (bytes.Equal is vectorised).
func isZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

// blockRegion is an inclusive run of blocks that holds data.
type blockRegion struct{ first, last int64 }

// dataRegions lists the blocks holding data according to SEEK_DATA/SEEK_HOLE,
// rounded outwards to whole blocks and merged where they touch. Without SEEK_DATA
// support the whole file is one region. (image/bmap has the same walk at its own
// block size; the two packages stay independent.)
func dataRegions(ctx context.Context, f *os.File, size, bs int64) ([]blockRegion, error) {
	if size == 0 {
		return nil, nil
	}
	lastBlock := blockCount(size, bs) - 1
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var regions []blockRegion
	var seekErr error
	err = rc.Control(func(fd uintptr) {
		for off := int64(0); off < size; {
			if seekErr = ctx.Err(); seekErr != nil {
				return
			}
			data, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				return
			}
			if off == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				regions = []blockRegion{{0, lastBlock}}
				return
			}
			if err != nil {
				seekErr = fmt.Errorf("SEEK_DATA from offset %d: %w", off, err)
				return
			}
			if data >= size {
				return
			}
			hole, err := unix.Seek(int(fd), data, unix.SEEK_HOLE)
			if err != nil {
				seekErr = fmt.Errorf("SEEK_HOLE from offset %d: %w", data, err)
				return
			}
			hole = min(hole, size)
			r := blockRegion{data / bs, min((hole+bs-1)/bs-1, lastBlock)}
			if n := len(regions); n > 0 && r.first <= regions[n-1].last+1 {
				regions[n-1].last = max(regions[n-1].last, r.last)
			} else {
				regions = append(regions, r)
			}
			off = hole
		}
	})
	if err != nil {
		return nil, err
	}
	return regions, seekErr
}
