package flash

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/bmap"
)

// sizedSource is a Source of only a size, for planning.
type sizedSource struct{ size int64 }

func (s sizedSource) ReadAt(p []byte, off int64) (int, error) { return 0, errors.New("not readable") }
func (s sizedSource) Size() int64                             { return s.size }
func (s sizedSource) BlockMap() *bmap.Map                     { return nil }
func (s sizedSource) Name() string                            { return "sized" }

func TestPlanPieces(t *testing.T) {
	for _, tc := range []struct {
		size  int64
		chunk int
	}{
		{512 << 10, 4 << 20},     // smaller than the header region: all header
		{1*MiB + 4096, 1 << 20},  // head and tail overlap
		{3 * MiB / 2, 64 << 10},  // tail starts inside the head's second half
		{8*MiB + 100, 1 << 20},   // unaligned size
		{64 * MiB, 4 << 20},      // the usual shape
		{5*MiB + 12288, 3 << 20}, // chunk not a power of two
	} {
		t.Run(fmt.Sprintf("%d/%d", tc.size, tc.chunk), func(t *testing.T) {
			p, err := newPlan(sizedSource{tc.size}, tc.chunk)
			if err != nil {
				t.Fatal(err)
			}
			var next int64
			for _, e := range p.pieces() {
				if e.off != next || e.end <= e.off {
					t.Fatalf("piece %v: want it to start at %d and be non-empty", e, next)
				}
				if e.off/int64(tc.chunk) != (e.end-1)/int64(tc.chunk) {
					t.Errorf("piece %v crosses a chunk boundary", e)
				}
				for _, b := range []int64{p.head.end, p.tail.off} {
					if e.off < b && b < e.end {
						t.Errorf("piece %v crosses the partition-table border %d", e, b)
					}
				}
				inHead, inTail := e.end <= p.head.end, e.off >= p.tail.off
				if p.isHeader(e) != (inHead || inTail) {
					t.Errorf("piece %v: isHeader %v", e, p.isHeader(e))
				}
				next = e.end
			}
			if next != tc.size {
				t.Errorf("pieces end at %d, want %d", next, tc.size)
			}
			if p.head != (extent{0, min(HeaderRegion, tc.size)}) || p.tail.end != tc.size || p.tail.off < p.head.end || p.tail.off < tc.size-HeaderRegion {
				t.Errorf("head %v tail %v", p.head, p.tail)
			}
		})
	}
}

// brokenSource fails reading at and after failAt.
type brokenSource struct {
	*ImageFile
	failAt int64
	m      *bmap.Map
}

func (b brokenSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > b.failAt {
		return 0, errors.New("medium error")
	}
	return b.ImageFile.ReadAt(p, off)
}

func (b brokenSource) BlockMap() *bmap.Map { return b.m }

func TestFlashSourceFails(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, true))
	targets := []Target{openTarget(t, filepath.Join(dir, "a.img")), openTarget(t, filepath.Join(dir, "b.img"))}
	results := Flash(t.Context(), brokenSource{src, 3 * MiB, src.BlockMap()}, targets, Options{ChunkSize: testChunk})
	for i, r := range results {
		if r.Err == nil || !strings.Contains(r.Err.Error(), "read source") || !strings.Contains(r.Err.Error(), "medium error") {
			t.Errorf("target %d: err %v, want the source read error", i, r.Err)
		}
		mustZeroHeader(t, targets[i].Name())
	}
}

// TestFlashWrongMapChecksum gives a block map whose checksum does not match the
// image: every target is written faithfully, so the message must blame the image
// or its map, not the card.
func TestFlashWrongMapChecksum(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, true))
	m := *src.BlockMap()
	m.Ranges = append([]bmap.Range(nil), m.Ranges...)
	last := len(m.Ranges) - 1
	m.Ranges[last].SHA256 = strings.Repeat("0", 64)
	targets := []Target{openTarget(t, filepath.Join(dir, "a.img"))}
	results := Flash(t.Context(), brokenSource{src, 1 << 62, &m}, targets, Options{ChunkSize: testChunk})
	if err := results[0].Err; err == nil || !strings.Contains(err.Error(), "matches the source but not the block map checksum") {
		t.Errorf("err = %v", err)
	}
	mustEqualFiles(t, src.Name(), targets[0].Name())
}

// eofReader returns its bytes with io.EOF on the read that reaches the end, as
// io.ReaderAt allows, or a short read without an error.
type eofReader struct {
	b     []byte
	short bool
}

func (e eofReader) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, e.b[off:])
	if e.short {
		return n - 1, nil
	}
	if off+int64(n) == int64(len(e.b)) {
		return n, io.EOF
	}
	return n, nil
}

func TestReadFull(t *testing.T) {
	b := []byte("0123456789")
	p := make([]byte, 4)
	if err := readFull(eofReader{b: b}, p, 6); err != nil || string(p) != "6789" {
		t.Errorf("full read ending in io.EOF: %q, %v", p, err)
	}
	if err := readFull(eofReader{b: b}, make([]byte, 5), 6); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	if err := readFull(eofReader{b: b, short: true}, p, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short read without error: %v, want io.ErrUnexpectedEOF", err)
	}
}
