// Package sparse holds what every image reader and writer here needs about
// sparse files: where the data is (SEEK_DATA/SEEK_HOLE), whether a block is
// all zeros, copying a stream into a file with holes for zero blocks, and
// opening the compressed forms images travel in.
package sparse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/xi2/xz"
	"golang.org/x/sys/unix"
)

// IsZero reports whether b is all zeros: the first byte is zero and every
// byte equals the one before it (bytes.Equal is vectorised).
func IsZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

// Region is an inclusive run of blocks that holds data.
type Region struct{ First, Last int64 }

// DataRegions lists the blocks of size bs holding data in the first size
// bytes of f according to SEEK_DATA/SEEK_HOLE, rounded outwards to whole
// blocks and merged where they touch. On file systems without SEEK_DATA
// the whole file is one region: correct, only slower. It moves f's offset.
func DataRegions(ctx context.Context, f *os.File, size, bs int64) ([]Region, error) {
	if size <= 0 {
		return nil, nil
	}
	lastBlock := (size+bs-1)/bs - 1
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var regions []Region
	var seekErr error
	err = rc.Control(func(fd uintptr) {
		for off := int64(0); off < size; {
			if seekErr = ctx.Err(); seekErr != nil {
				return
			}
			data, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				return // no data after off
			}
			if off == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				regions = []Region{{0, lastBlock}}
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
			r := Region{data / bs, min((hole+bs-1)/bs-1, lastBlock)}
			if n := len(regions); n > 0 && r.First <= regions[n-1].Last+1 {
				regions[n-1].Last = max(regions[n-1].Last, r.Last)
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

// Copy copies r to the start of f, seeking over all-zero 64 KiB blocks,
// and sets f's size to the bytes copied. A decompressor's
// io.ErrUnexpectedEOF (a truncated stream) is an error, not the end.
func Copy(ctx context.Context, f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n, err := fill(r, buf)
		if n > 0 {
			if !IsZero(buf[:n]) {
				if _, werr := f.WriteAt(buf[:n], off); werr != nil {
					return off, werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return off, err
		}
	}
	return off, f.Truncate(off)
}

// fill reads until buf is full or r fails. Unlike io.ReadFull it passes on
// a decompressor's own io.ErrUnexpectedEOF instead of mistaking it for the
// end of a short last block.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Decompress wraps r for the compression named by ext (".xz", ".zst",
// ".gz"). The returned close releases the decoder.
//
// xz is decoded by xi2/xz, a port of XZ Embedded: on a Debian kernel
// package's 360 MB data.tar.xz it took 6 s where ulikunitz/xz took minutes
// (about 1 MB/s on this project's 2-core machines), and every xz an image,
// a .deb or a flash source comes in goes through here.
func Decompress(r io.Reader, ext string) (io.Reader, func(), error) {
	switch ext {
	case ".xz":
		xr, err := xz.NewReader(r, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("not a valid xz file (corrupt or incomplete download?): %w", err)
		}
		return xr, func() {}, nil
	case ".zst":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case ".gz":
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("not a valid gzip file (corrupt or incomplete download?): %w", err)
		}
		return gr, func() { gr.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown compression %q: use .xz, .zst or .gz", ext)
}
