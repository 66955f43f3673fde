package cdc

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

type sum struct {
	h [32]byte
	n int
}

func chunks(t testing.TB, data []byte, r io.Reader) []sum {
	t.Helper()
	c := New(r)
	var out []sum
	var total int64
	for i := 0; ; i++ {
		if i > len(data)/Min+2 {
			t.Fatalf("more chunks than %d bytes allow", len(data))
		}
		off, b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if off != total {
			t.Fatalf("chunk %d at offset %d, want %d", i, off, total)
		}
		if !bytes.Equal(b, data[off:off+int64(len(b))]) {
			t.Fatalf("chunk %d does not match the input at %d", i, off)
		}
		if len(b) > Max || len(b) == 0 {
			t.Fatalf("chunk %d has %d bytes", i, len(b))
		}
		total += int64(len(b))
		out = append(out, sum{sha256.Sum256(b), len(b)})
	}
	if total != int64(len(data)) {
		t.Fatalf("chunks cover %d bytes of %d", total, len(data))
	}
	return out
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestDeterministicWhateverTheReads(t *testing.T) {
	data := random(1, 8<<20)
	a := chunks(t, data, bytes.NewReader(data))
	b := chunks(t, data, iotest.OneByteReader(bytes.NewReader(data[:])))
	c := chunks(t, data, iotest.HalfReader(bytes.NewReader(data)))
	if len(a) != len(b) || len(a) != len(c) {
		t.Fatalf("chunk counts differ by read size: %d %d %d", len(a), len(b), len(c))
	}
	for i := range a {
		if a[i] != b[i] || a[i] != c[i] {
			t.Fatalf("chunk %d differs by read size", i)
		}
	}
	avg := len(data) / len(a)
	if avg < Avg/2 || avg > 2*Avg {
		t.Errorf("average chunk %d bytes, want near %d", avg, Avg)
	}
	t.Logf("%d chunks, average %d bytes", len(a), avg)
}

func TestShiftResistance(t *testing.T) {
	data := random(2, 16<<20)
	for _, tc := range []struct {
		name    string
		editLen int
		edit    func([]byte) []byte
	}{
		{"insert 1 byte", 1, func(b []byte) []byte { return append(append(append([]byte{}, b[:5<<20]...), 0x42), b[5<<20:]...) }},
		{"insert 4 KiB block", 4096, func(b []byte) []byte {
			return append(append(append([]byte{}, b[:3<<20]...), random(3, 4096)...), b[3<<20:]...)
		}},
		{"delete 1000 bytes", 1000, func(b []byte) []byte { return append(append([]byte{}, b[:7<<20]...), b[7<<20+1000:]...) }},
		{"overwrite 100 KiB", 100 << 10, func(b []byte) []byte {
			c := append([]byte{}, b...)
			copy(c[9<<20:], random(4, 100<<10))
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := tc.edit(data)
			old := chunks(t, data, bytes.NewReader(data))
			have := map[[32]byte]bool{}
			for _, c := range old {
				have[c.h] = true
			}
			nw := chunks(t, edited, bytes.NewReader(edited))
			miss, missBytes := 0, 0
			for _, c := range nw {
				if !have[c.h] {
					miss++
					missBytes += c.n
				}
			}
			// An edit costs the chunks it overlaps, and the boundaries
			// re-synchronize within about one chunk after it: far less than
			// the 16 MiB a fixed-block index loses to a shift.
			if limit := tc.editLen + 2*Max; missBytes > limit {
				t.Errorf("%d new bytes in %d of %d chunks after a %d-byte edit, want at most %d", missBytes, miss, len(nw), tc.editLen, limit)
			}
			t.Logf("%d of %d chunks new (%d bytes)", miss, len(nw), missBytes)
		})
	}
}

func TestZerosMakeMaxChunks(t *testing.T) {
	if h := -gear[0]; h&maskHard == 0 || h&maskEasy == 0 {
		t.Fatalf("the gear hash of a zero run (%#x) matches a cut mask", h)
	}
	data := make([]byte, 3*Max+100)
	c := New(bytes.NewReader(data))
	var lens []int
	for {
		_, b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		lens = append(lens, len(b))
	}
	want := []int{Max, Max, Max, 100}
	if len(lens) != len(want) {
		t.Fatalf("zero chunks %v, want %v", lens, want)
	}
	for i := range want {
		if lens[i] != want[i] {
			t.Fatalf("zero chunks %v, want %v", lens, want)
		}
	}
}

func TestShortAndEmpty(t *testing.T) {
	for _, n := range []int{0, 1, Min - 1, Min, Min + 1} {
		data := random(5, n)
		got := chunks(t, data, bytes.NewReader(data))
		if n > 0 && len(got) != 1 || n == 0 && len(got) != 0 {
			t.Errorf("%d bytes gave %d chunks", n, len(got))
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestReadErrorPropagates(t *testing.T) {
	c := New(errReader{})
	if _, _, err := c.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v, want the reader's error", err)
	}
}

type stuckReader struct{}

func (stuckReader) Read([]byte) (int, error) { return 0, nil }

func TestStuckReaderEnds(t *testing.T) {
	if _, _, err := New(stuckReader{}).Next(); err != io.ErrNoProgress {
		t.Fatalf("got %v, want io.ErrNoProgress", err)
	}
}

func BenchmarkChunker(b *testing.B) {
	data := random(6, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c := New(bytes.NewReader(data))
		for {
			if _, _, err := c.Next(); err != nil {
				break
			}
		}
	}
}
