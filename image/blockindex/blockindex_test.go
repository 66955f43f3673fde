package blockindex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const KiB = 1 << 10

// write puts bytes at an offset of a test image.
type write struct {
	off  int64
	data []byte
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// makeImage creates a sparse file of size bytes with the writes applied and holes
// everywhere else.
func makeImage(t testing.TB, size int64, writes []write) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func build(t testing.TB, path string, bs int) *Index {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ix, err := Build(t.Context(), f, bs)
	if err != nil {
		t.Fatalf("Build(%s): %v", path, err)
	}
	return ix
}

// expectedHashes is the test's own reading of the format: every block of the file,
// zero-padded, hashed unless it is all zeros.
func expectedHashes(t testing.TB, path string, bs int) [][32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][32]byte
	for off := 0; off < len(data); off += bs {
		block := make([]byte, bs)
		copy(block, data[off:])
		if bytes.Count(block, []byte{0}) == bs {
			out = append(out, [32]byte{})
		} else {
			out = append(out, sha256.Sum256(block))
		}
	}
	return out
}

func TestBuild(t *testing.T) {
	tests := []struct {
		name   string
		size   int64
		writes []write
		bs     int
		zeros  []int // blocks expected to be zero blocks
	}{
		{
			name: "holes, written zeros, unaligned data, partial last block",
			size: 40*4*KiB + 100,
			writes: []write{
				{0, randomBytes(1, 4*KiB)},
				{3 * 4 * KiB, make([]byte, 8*KiB)},  // blocks 3-4 written as zeros
				{5*4*KiB + 10, randomBytes(2, 20)},  // block 5
				{20*4*KiB - 1, randomBytes(3, 2)},   // blocks 19 and 20
				{40 * 4 * KiB, randomBytes(4, 100)}, // partial block 40
			},
			bs: 4 * KiB,
		},
		{
			name:   "default 64 KiB blocks, region longer than one read",
			size:   24 << 20,
			writes: []write{{1 << 20, randomBytes(5, 10<<20)}, {20 << 20, randomBytes(6, 1)}},
			bs:     0,
		},
		{
			name: "empty image",
			size: 0,
			bs:   4 * KiB,
		},
		{
			name: "only holes",
			size: 1 << 20,
			bs:   8 << 20,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := makeImage(t, tc.size, tc.writes)
			ix := build(t, path, tc.bs)
			bs := tc.bs
			if bs == 0 {
				bs = DefaultBlockSize
			}
			if ix.BlockSize != bs || ix.ImageSize != tc.size {
				t.Fatalf("header: block size %d, image size %d", ix.BlockSize, ix.ImageSize)
			}
			want := expectedHashes(t, path, bs)
			if len(ix.Hashes) != len(want) {
				t.Fatalf("%d hashes, want %d", len(ix.Hashes), len(want))
			}
			for i := range want {
				if ix.Hashes[i] != want[i] {
					t.Errorf("block %d: hash %x, want %x", i, ix.Hashes[i], want[i])
				}
			}
		})
	}
}

func TestBuildRefuses(t *testing.T) {
	img := makeImage(t, 1<<20, nil)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, bs := range []int{-1, 512, 3 * KiB, 100 * KiB, 16 << 20} {
		if _, err := Build(t.Context(), f, bs); err == nil || !strings.Contains(err.Error(), "power of two") {
			t.Errorf("Build with block size %d: %v, want a block size error", bs, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Build(ctx, f, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Build with a canceled context: %v", err)
	}
	d, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := Build(t.Context(), d, 0); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Build of a directory: %v", err)
	}
}

func encode(t testing.TB, ix *Index) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := ix.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d bytes", n, buf.Len())
	}
	return buf.Bytes()
}

func sampleIndex(t testing.TB) *Index {
	path := makeImage(t, 10*4*KiB+1, []write{{0, randomBytes(1, 4*KiB)}, {6 * 4 * KiB, randomBytes(2, 9*KiB)}})
	return build(t, path, 4*KiB)
}

func TestRoundTrip(t *testing.T) {
	ix := sampleIndex(t)
	a, b := encode(t, ix), encode(t, ix)
	if !bytes.Equal(a, b) {
		t.Fatal("WriteTo is not deterministic")
	}
	if len(a) != headerSize+32*11+32 {
		t.Fatalf("encoded %d bytes, want %d", len(a), headerSize+32*11+32)
	}
	got, err := Read(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ix) {
		t.Fatalf("round trip changed the index")
	}
}

// reseal replaces the trailing checksum so that an edited header reaches the checks
// behind the checksum.
func reseal(b []byte) []byte {
	out := bytes.Clone(b[:len(b)-32])
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

func TestReadRefuses(t *testing.T) {
	good := encode(t, sampleIndex(t))
	header := func(off int, v uint64, width int) []byte {
		b := bytes.Clone(good)
		if width == 4 {
			binary.BigEndian.PutUint32(b[off:], uint32(v))
		} else {
			binary.BigEndian.PutUint64(b[off:], v)
		}
		return reseal(b)
	}
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"empty", nil, "truncated"},
		{"bad magic", reseal(append([]byte("LKWBIDX2"), good[8:]...)), "bad magic"},
		{"version 2", header(8, 2, 4), "format version 2"},
		{"block size not a power of two", header(12, 5000, 4), "power of two"},
		{"block size too large", header(12, 16<<20, 4), "power of two"},
		{"block count mismatch", header(24, 12, 8), "block count 12"},
		{"image size huge", header(16, 1<<62, 8), "beyond"},
		{"claims a billion blocks but is short", func() []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint64(b[16:], 1<<42)
			binary.BigEndian.PutUint64(b[24:], 1<<42/(4*KiB))
			return b
		}(), "truncated"},
		{"trailing data", append(bytes.Clone(good), 0), "data after"},
		{"checksum byte flipped", append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^1), "checksum mismatch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read error = %v, want one containing %q", err, tc.want)
			}
		})
	}

	// Every truncation and every single flipped bit anywhere is refused.
	for n := range len(good) {
		if _, err := Read(bytes.NewReader(good[:n])); err == nil {
			t.Fatalf("Read accepted the index truncated to %d of %d bytes", n, len(good))
		} else if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("truncated to %d bytes: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	for i := range len(good) {
		bad := bytes.Clone(good)
		bad[i] ^= 0x10
		if _, err := Read(bytes.NewReader(bad)); err == nil {
			t.Fatalf("Read accepted the index with byte %d changed", i)
		}
	}
}

func TestWriteToRefusesInvalid(t *testing.T) {
	for _, ix := range []*Index{
		{BlockSize: 1000, ImageSize: 1000, Hashes: make([][32]byte, 1)},
		{BlockSize: 4096, ImageSize: 4097, Hashes: make([][32]byte, 1)},
		{BlockSize: 4096, ImageSize: -1},
	} {
		if _, err := ix.WriteTo(io.Discard); err == nil {
			t.Errorf("WriteTo accepted %+v", ix)
		}
	}
}

// TestMissing: the new image differs from the old one in a changed block, a block
// whose content moved, a block that became zeros and a new block repeating old
// content; only the changed block must be downloaded.
func TestMissing(t *testing.T) {
	const bs = 4 * KiB
	blocks := make([][]byte, 12)
	for i := range blocks {
		blocks[i] = randomBytes(uint64(100+i), bs)
	}
	oldImg := makeImage(t, 12*bs, func() []write {
		var w []write
		for i, b := range blocks {
			if i != 10 && i != 11 { // 10 and 11 are holes
				w = append(w, write{int64(i * bs), b})
			}
		}
		return w
	}())
	newImg := makeImage(t, 14*bs, []write{
		{0 * bs, blocks[0]},               // unchanged
		{1 * bs, randomBytes(999, bs)},    // changed: missing
		{2 * bs, blocks[2]},               // unchanged
		{3 * bs, make([]byte, bs)},        // zeros: never missing
		{4 * bs, blocks[9]},               // moved from block 9: not missing
		{5 * bs, blocks[5]},               // unchanged
		{6 * bs, blocks[2]},               // repeats block 2: not missing
		{12 * bs, randomBytes(1000, 100)}, // new partial last block: missing
	})
	have, want := build(t, oldImg, bs), build(t, newImg, bs)
	if got := Missing(have, want); !slices.Equal(got, []int64{1, 12}) {
		t.Fatalf("Missing = %v, want [1 12]", got)
	}
	lookup := have.Lookup()
	if src, ok := lookup[want.Hashes[4]]; !ok || src != 9 {
		t.Fatalf("moved block found at %d (%v), want 9", src, ok)
	}
	if _, ok := lookup[[32]byte{}]; ok {
		t.Fatal("Lookup lists zero blocks")
	}
	if got := Missing(have, have); len(got) != 0 {
		t.Fatalf("an image misses nothing of itself, got %v", got)
	}
	nonZero := []int64{0, 1, 2, 4, 5, 6, 12}
	if got := Missing(nil, want); !slices.Equal(got, nonZero) {
		t.Fatalf("Missing(nil, want) = %v, want every non-zero block %v", got, nonZero)
	}
	other := build(t, oldImg, 8*KiB)
	if got := Missing(other, want); !slices.Equal(got, nonZero) {
		t.Fatalf("Missing across block sizes = %v, want every non-zero block %v", got, nonZero)
	}
	if got := Missing(have, nil); got != nil {
		t.Fatalf("Missing(have, nil) = %v", got)
	}
}

func TestLookupFirstOccurrence(t *testing.T) {
	h := [32]byte{1}
	ix := &Index{BlockSize: 4096, ImageSize: 3 * 4096, Hashes: [][32]byte{{}, h, h}}
	if got := ix.Lookup(); len(got) != 1 || got[h] != 1 {
		t.Fatalf("Lookup = %v, want only block 1", got)
	}
}

func TestSidecarPath(t *testing.T) {
	if got := SidecarPath("/out/robot.img"); got != "/out/robot.img.blkidx" {
		t.Fatalf("SidecarPath = %q", got)
	}
}

// FuzzRead: Read never panics, and what it accepts re-encodes to exactly the input
// (the format has one encoding per index).
func FuzzRead(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte(Magic))
	f.Add(encode(f, &Index{BlockSize: 4096, ImageSize: 0}))
	f.Add(encode(f, &Index{BlockSize: 64 * KiB, ImageSize: 70000, Hashes: [][32]byte{{1, 2, 3}, {}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := Read(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if _, err := ix.WriteTo(&buf); err != nil {
			t.Fatalf("WriteTo of an index Read accepted: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("re-encoding differs from the accepted input")
		}
	})
}
