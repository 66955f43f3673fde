package ociart

import (
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// blockSize is the granularity of holes written on pull: the file system
// block size of every Linux file system an image is written to.
const blockSize = 4096

// zeroBlock is read-only: the bytes handed out for holes.
var zeroBlock [1 << 20]byte

// Linux lseek whence values for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// holeReader reads [off, end) of f and answers holes of a sparse file
// from memory, so pushing a mostly empty partition does not read the
// unallocated blocks. Files without SEEK_DATA support are read plainly.
type holeReader struct {
	f                *os.File
	off, end         int64
	dataAt, holeAt   int64 // current data run [dataAt, holeAt); recomputed when off passes holeAt
	noSeek, haveData bool
}

func newHoleReader(f *os.File, off, size int64) *holeReader {
	return &holeReader{f: f, off: off, end: off + size}
}

func (r *holeReader) locate() {
	r.haveData = true
	if r.noSeek {
		r.dataAt, r.holeAt = r.off, r.end
		return
	}
	d, err := r.f.Seek(r.off, seekData)
	if err != nil {
		// ENXIO: no data after off; anything else: no SEEK_DATA support.
		if errors.Is(err, syscall.ENXIO) {
			r.dataAt, r.holeAt = r.end, r.end
			return
		}
		r.noSeek = true
		r.dataAt, r.holeAt = r.off, r.end
		return
	}
	h, err := r.f.Seek(d, seekHole)
	if err != nil {
		h = r.end
	}
	r.dataAt, r.holeAt = min(d, r.end), min(h, r.end)
}

func (r *holeReader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	if !r.haveData || r.off >= r.holeAt {
		r.locate()
	}
	if r.off < r.dataAt {
		n := int(min(int64(len(p)), r.dataAt-r.off, int64(len(zeroBlock))))
		copy(p[:n], zeroBlock[:n])
		r.off += int64(n)
		return n, nil
	}
	n := int(min(int64(len(p)), r.holeAt-r.off))
	n, err := r.f.ReadAt(p[:n], r.off)
	r.off += int64(n)
	if err == io.EOF && r.off < r.end {
		return n, io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// sparseWriter writes a stream at consecutive offsets of f, skipping
// all-zero blocks so they stay holes in a freshly truncated file.
type sparseWriter struct {
	f   *os.File
	off int64
}

func (w *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		// Cut at the next block boundary of the file so holes line up with
		// file system blocks.
		n := int(blockSize - w.off%blockSize)
		n = min(n, len(p))
		// Gather a run of blocks of the same kind.
		zero := sparse.IsZero(p[:n])
		for n < len(p) {
			m := min(blockSize, len(p)-n)
			if sparse.IsZero(p[n:n+m]) != zero {
				break
			}
			n += m
		}
		if !zero {
			if _, err := w.f.WriteAt(p[:n], w.off); err != nil {
				return total - len(p), err
			}
		}
		w.off += int64(n)
		p = p[n:]
	}
	return total, nil
}
