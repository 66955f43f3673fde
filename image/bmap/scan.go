package bmap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// ScanOptions tunes Scan.
type ScanOptions struct {
	// BlockSize is the map's block size in bytes; 0 means DefaultBlockSize.
	BlockSize int
	// SkipZeroBlocks also leaves out all-zero blocks inside data regions. The default
	// (false) is bmaptool's semantics: only holes are unmapped, so the map records
	// exactly what the file system allocated. Skipping zero blocks makes smaller maps
	// for images whose zeros were written out, but `bmaptool copy` onto a device
	// that is not already zeroed then leaves stale data where the zeros were.
	SkipZeroBlocks bool
}

// chunkSize is how much Scan reads at a time: large enough that syscalls and
// goroutine hand-offs are noise next to hashing, small enough that a few buffers per
// worker stay cheap.
const chunkSize = 4 << 20

// pipelineDepth is the number of buffers per worker: one being hashed, one being
// read, one ready, so reading never waits on hashing and vice versa.
const pipelineDepth = 3

// Scan maps the data of the image f: regions found with SEEK_DATA/SEEK_HOLE become
// ranges (a block holding any data is mapped), each hashed with sha256. Independent
// regions are hashed on all CPUs, and within a region reading overlaps hashing.
// Scan reads f with ReadAt only, so f's offset is left as SEEK_DATA/SEEK_HOLE leave
// it; f must not change while Scan runs.
func Scan(ctx context.Context, f *os.File, opts ScanOptions) (*Map, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < 0 || bs > maxBlockSize {
		return nil, fmt.Errorf("bmap: block size %d out of range (1..%d)", bs, maxBlockSize)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("bmap: stat image %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("bmap: image %s is not a regular file (mode %s); block maps are made from image files", f.Name(), fi.Mode())
	}
	size := fi.Size()
	if size == 0 {
		return nil, fmt.Errorf("bmap: image %s is empty; bmaptool cannot use a map of an empty image", f.Name())
	}
	regions, err := sparse.DataRegions(ctx, f, size, int64(bs))
	if err != nil {
		return nil, fmt.Errorf("bmap: find data in %s: %w", f.Name(), err)
	}

	chunk := max(bs, chunkSize/bs*bs) // whole blocks, so zero-block checks never straddle chunks
	results := make([][]Range, len(regions))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	next := make(chan int)
	for range min(runtime.GOMAXPROCS(0), len(regions)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := &regionHasher{f: f, bs: int64(bs), size: size, skipZero: opts.SkipZeroBlocks}
			for range pipelineDepth {
				h.bufs = append(h.bufs, make([]byte, chunk))
			}
			for i := range next {
				rs, err := h.hash(ctx, regions[i])
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					continue
				}
				results[i] = rs
			}
		}()
	}
feed:
	for i := range regions {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("bmap: hash %s: %w", f.Name(), firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bmap: scan %s: %w", f.Name(), err)
	}

	m := &Map{ImageSize: size, BlockSize: bs}
	m.BlocksCount = size/int64(bs) + boolInt(size%int64(bs) != 0)
	for _, rs := range results {
		for _, r := range rs {
			m.MappedBlocks += r.Last - r.First + 1
			m.Ranges = append(m.Ranges, r)
		}
	}
	return m, nil
}

// regionHasher turns one data region into ranges; each worker owns one, with its
// read buffers.
type regionHasher struct {
	f        *os.File
	bs, size int64
	skipZero bool
	bufs     [][]byte
}

func (h *regionHasher) hash(ctx context.Context, reg sparse.Region) ([]Range, error) {
	var (
		out []Range
		cur *Range
		sum hash.Hash
	)
	open := func(first int64) {
		cur, sum = &Range{First: first, Last: first}, sha256.New()
	}
	closeRange := func() {
		cur.SHA256 = hex.EncodeToString(sum.Sum(nil))
		out = append(out, *cur)
		cur = nil
	}
	start, end := reg.First*h.bs, min((reg.Last+1)*h.bs, h.size)
	err := readPipelined(ctx, h.f, start, end, h.bufs, func(off int64, p []byte) error {
		if !h.skipZero {
			if cur == nil {
				open(reg.First)
				cur.Last = reg.Last
			}
			sum.Write(p)
			return nil
		}
		for i := 0; i < len(p); i += int(h.bs) {
			b := p[i:min(i+int(h.bs), len(p))]
			blk := (off + int64(i)) / h.bs
			if sparse.IsZero(b) {
				if cur != nil {
					closeRange()
				}
				continue
			}
			if cur == nil {
				open(blk)
			}
			cur.Last = blk
			sum.Write(b)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if cur != nil {
		closeRange()
	}
	return out, nil
}

// readPipelined reads [start, end) of f in buffer-sized pieces on one goroutine and
// hands them, in order, to consume on the calling goroutine, so the next read runs
// while the current piece is consumed.
func readPipelined(ctx context.Context, f *os.File, start, end int64, bufs [][]byte, consume func(off int64, p []byte) error) error {
	type piece struct {
		off int64
		p   []byte
		err error
	}
	free := make(chan []byte, len(bufs))
	for _, b := range bufs {
		free <- b
	}
	full := make(chan piece, len(bufs))
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait() // the reader must be gone before the caller reuses bufs
	defer close(done)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(full)
		for off := start; off < end; {
			var buf []byte
			select {
			case buf = <-free:
			case <-done:
				return
			}
			n := int(min(int64(len(buf)), end-off))
			_, err := f.ReadAt(buf[:n], off)
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("image ended before offset %d; was it truncated while being scanned?", off+int64(n))
			} else if err != nil {
				err = fmt.Errorf("read %d bytes at offset %d: %w", n, off, err)
			}
			select {
			case full <- piece{off, buf[:n], err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
			off += int64(n)
		}
	}()
	for pc := range full {
		if pc.err != nil {
			return pc.err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := consume(pc.off, pc.p); err != nil {
			return err
		}
		free <- pc.p[:cap(pc.p)]
	}
	return nil
}
