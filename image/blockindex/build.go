package blockindex

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/lekiwi/heartbeat/image/sparse"
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
	regions, err := sparse.DataRegions(ctx, f, size, bs)
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
		for first := r.First; first <= r.Last; first += perPiece {
			select {
			case pieces <- piece{first, min(perPiece, r.Last-first+1)}:
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
		if !sparse.IsZero(b) {
			ix.Hashes[first+i] = sha256.Sum256(b)
		}
	}
	return nil
}
