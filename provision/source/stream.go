package source

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/lekiwi/heartbeat/image/bmap"
)

// ErrBehind is returned (wrapped) by a streamed source's ReadAt for an offset
// it has already passed: the bytes were decompressed or downloaded once and
// are gone. flash.Flash reads front to back and only re-reads to explain a
// verification mismatch, where it reports the range without the first
// differing byte instead.
var ErrBehind = errors.New("a streamed source cannot go back")

var errClosed = errors.New("source is closed")

// stream adapts a forward-only reader of the image's bytes (from offset 0) to
// flash.Source: reads ahead of the position skip the bytes between, reads
// behind it fail with ErrBehind.
type stream struct {
	name     string
	size     int64
	sizeFrom string // where size came from, for errors
	m        *bmap.Map
	closers  []func() error // run in order by Close

	mu  sync.Mutex
	r   io.Reader
	pos int64
	err error // sticky: once the stream broke, every later read fails alike
}

func (s *stream) Size() int64         { return s.size }
func (s *stream) BlockMap() *bmap.Map { return s.m }
func (s *stream) Name() string        { return s.name }

func (s *stream) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case off < 0:
		return 0, fmt.Errorf("source %s: negative offset %d", s.name, off)
	case off < s.pos:
		return 0, fmt.Errorf("source %s: offset %d is behind the stream's position %d: %w (read it front to back, or decompress or download it to a file first)", s.name, off, s.pos, ErrBehind)
	case s.err != nil:
		return 0, s.err
	case off >= s.size:
		return 0, io.EOF
	}
	if off > s.pos {
		n, err := io.CopyN(io.Discard, s.r, off-s.pos)
		s.pos += n
		if err != nil {
			s.err = s.broken(err)
			return 0, s.err
		}
	}
	want := min(int64(len(p)), s.size-off)
	n, err := io.ReadFull(s.r, p[:want])
	s.pos += int64(n)
	if err != nil {
		s.err = s.broken(err)
		return n, s.err
	}
	if s.pos == s.size {
		if err := s.checkEnd(); err != nil {
			s.err = err
			return n, err
		}
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// broken explains an error of the underlying stream at the current position.
func (s *stream) broken(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("source %s ended at byte %d, but the image has %d bytes (size from %s): truncated download or file, or a wrong size: %w", s.name, s.pos, s.size, s.sizeFrom, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("source %s at byte %d: %w", s.name, s.pos, err)
}

// checkEnd makes sure the stream ends where the image does. Reading on to the
// end also makes the decompressor check its trailer (xz and gzip CRCs, zstd
// checksum), so corruption in the last block is not missed; and a size that was
// too small (a wrapped gzip ISIZE, a multi-frame zstd) fails here rather than
// yielding a cut-off image.
func (s *stream) checkEnd() error {
	var b [1]byte
	n, err := io.ReadFull(s.r, b[:])
	if n > 0 {
		return fmt.Errorf("source %s has more than the %d bytes announced by %s: the size is wrong (give the image's .bmap or its exact size)", s.name, s.size, s.sizeFrom)
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("source %s at its end (byte %d): %w", s.name, s.size, err)
}

// Close releases the decoders, the file or connection and the read-ahead.
func (s *stream) Close() error {
	var first error
	for _, c := range s.closers {
		if err := c(); err != nil && first == nil {
			first = err
		}
	}
	s.closers = nil
	return first
}

// readahead runs the decompressor (or the download) in its own goroutine, a few
// buffers ahead of the consumer, so decompressing overlaps flash's hashing and
// the targets' writes.
type readahead struct {
	full chan readaheadBuf
	free chan []byte
	stop chan struct{}
	done chan struct{}
	cur  readaheadBuf
	err  error
}

type readaheadBuf struct {
	b   []byte
	n   int // bytes of b already consumed
	err error
}

func newReadahead(r io.Reader, bufSize, depth int) *readahead {
	ra := &readahead{
		full: make(chan readaheadBuf, depth),
		free: make(chan []byte, depth),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range depth {
		ra.free <- make([]byte, bufSize)
	}
	go ra.fill(r)
	return ra
}

func (ra *readahead) fill(r io.Reader) {
	defer close(ra.done)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			return
		}
		n, err := fill(r, buf)
		if n > 0 || err != nil {
			select {
			case ra.full <- readaheadBuf{b: buf[:n], err: err}:
			case <-ra.stop:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (ra *readahead) Read(p []byte) (int, error) {
	for ra.cur.n == len(ra.cur.b) {
		if ra.err != nil {
			return 0, ra.err
		}
		if ra.cur.b != nil {
			ra.free <- ra.cur.b[:cap(ra.cur.b)]
		}
		select {
		case ra.cur = <-ra.full:
		case <-ra.stop:
			ra.cur = readaheadBuf{}
			return 0, errClosed
		}
		if ra.cur.err != nil {
			ra.err = ra.cur.err
			if len(ra.cur.b) == 0 {
				ra.cur = readaheadBuf{}
				return 0, ra.err
			}
			ra.cur.err = nil
		}
	}
	n := copy(p, ra.cur.b[ra.cur.n:])
	ra.cur.n += n
	return n, nil
}

// fill reads until buf is full or r fails. Unlike io.ReadFull it passes on a
// decompressor's own io.ErrUnexpectedEOF (a truncated stream) instead of
// turning a short last read into one.
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

// Close stops the goroutine and waits for it; unblock its reader first (close
// the file or connection under it).
func (ra *readahead) Close() error {
	close(ra.stop)
	<-ra.done
	return nil
}
