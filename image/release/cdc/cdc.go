// Package cdc cuts a byte stream into content-defined chunks (FastCDC: a
// gear rolling hash with normalized chunking), so that two versions of a
// disk partition that differ by an insertion or a shift share every chunk
// outside the changed region. The build chunks a release's partitions and
// the robot chunks its own active slot with the same parameters: both get
// the same boundaries wherever the bytes are the same, whatever their
// offset.
//
// Boundaries depend only on the bytes (and the fixed gear table below), so
// the output is deterministic across machines and versions of this package
// that keep Algorithm's name. Changing the table or the cut rule means a
// new Algorithm name.
//
// The cut rule: no cut before Min bytes; between Min and Avg a cut where the
// top 18 bits of the gear hash are zero (harder), between Avg and Max where
// the top 14 bits are zero (easier), a forced cut at Max. The gear hash's
// bit k depends only on the last k+1 bytes, so the top bits see the last 64
// bytes. A run of zeros never matches (the hash of zeros settles to
// -gear[0], whose top bits are not zero; a test checks it), so zero runs
// become Max-sized chunks that deduplicate into one.
package cdc

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Algorithm names the chunking rule and its parameters; a release records it
// and a robot refuses a release chunked any other way.
const Algorithm = "fastcdc-gear-sha256seed-v1"

// Chunk size bounds in bytes.
const (
	Min = 16 << 10
	Avg = 64 << 10
	Max = 256 << 10
)

const (
	maskHard = uint64(1<<18-1) << (64 - 18) // before Avg: 1 in 2^18
	maskEasy = uint64(1<<14-1) << (64 - 14) // after Avg: 1 in 2^14
)

// gear is the table of 256 pseudo-random words: sha256("lekiwi-cdc-gear" ||
// i) truncated. It is computed once and never written afterwards.
var gear = makeGear()

func makeGear() [256]uint64 {
	var g [256]uint64
	for i := range g {
		s := sha256.Sum256([]byte(fmt.Sprintf("lekiwi-cdc-gear %d", i)))
		g[i] = binary.BigEndian.Uint64(s[:8])
	}
	return g
}

// Cut returns the length of the first chunk of data: data must hold Max
// bytes unless it is the end of the stream.
func Cut(data []byte) int {
	n := len(data)
	if n <= Min {
		return n
	}
	if n > Max {
		n = Max
	}
	var h uint64
	i := Min
	for lim := min(n, Avg); i < lim; i++ {
		h = h<<1 + gear[data[i]]
		if h&maskHard == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[data[i]]
		if h&maskEasy == 0 {
			return i + 1
		}
	}
	return n
}

// Chunker reads a stream and returns its chunks in order.
type Chunker struct {
	r        io.Reader
	buf      []byte
	start    int // first unconsumed byte in buf
	end      int // end of data in buf
	eof      bool
	consumed int64
}

// New returns a Chunker over r.
func New(r io.Reader) *Chunker {
	return &Chunker{r: r, buf: make([]byte, 4*Max)}
}

// Next returns the next chunk and its offset in the stream, or io.EOF after
// the last one. The slice is valid until the next call.
func (c *Chunker) Next() (off int64, chunk []byte, err error) {
	if c.end-c.start < Max && !c.eof {
		if c.start > 0 {
			copy(c.buf, c.buf[c.start:c.end])
			c.end -= c.start
			c.start = 0
		}
		for empty := 0; c.end < len(c.buf) && !c.eof; {
			n, err := c.r.Read(c.buf[c.end:])
			c.end += n
			switch {
			case errors.Is(err, io.EOF):
				c.eof = true
			case err != nil:
				return 0, nil, err
			case n == 0:
				if empty++; empty > 100 {
					return 0, nil, io.ErrNoProgress
				}
			default:
				empty = 0
			}
		}
	}
	if c.start == c.end {
		return 0, nil, io.EOF
	}
	n := Cut(c.buf[c.start:c.end])
	chunk = c.buf[c.start : c.start+n]
	off = c.consumed
	c.start += n
	c.consumed += int64(n)
	return off, chunk, nil
}
