package source

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lekiwi/heartbeat/image/bmap"
)

const mib = 1 << 20

// makeImage writes a sparse image of size bytes: random data at the start (a
// fake partition table), in a few regions in the middle and at the very end
// (a fake backup GPT), holes between. It returns the path and the bytes.
func makeImage(t testing.TB, dir string, size int64, seed uint64) (string, []byte) {
	t.Helper()
	img := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 7))
	fill := func(off, n int64) {
		for i := off; i < off+n && i < size; i++ {
			img[i] = byte(rng.Uint32())
		}
	}
	fill(0, 64<<10)
	fill(3*mib+4096, 700<<10) // crosses a 4 MiB chunk border
	fill(size/2, 5000)        // unaligned
	fill(size-33*512, 33*512)
	path := filepath.Join(dir, "robot.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += 4096 {
		blk := img[off:min(off+4096, size)]
		if !bytes.Equal(blk, make([]byte, len(blk))) {
			if _, err := f.WriteAt(blk, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	return path, img
}

// writeBmap scans the image and writes its block map to mapPath.
func writeBmap(t testing.TB, imgPath, mapPath string) *bmap.Map {
	t.Helper()
	f, err := os.Open(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := bmap.Scan(context.Background(), f, bmap.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := m.WriteXML(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mapPath, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

// compress runs the real compressor: "xz", "zstd" or "gzip" with args on in,
// writing out.
func compress(t testing.TB, out string, in string, tool string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s is not installed (Debian xz-utils, zstd, gzip; in the Makefile's DEB_TEST)", tool)
	}
	src, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	cmd := exec.Command(tool, append(args, "-c")...)
	cmd.Stdin, cmd.Stdout = src, dst
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v: %s", tool, args, err, stderr.String())
	}
}

// compressFile runs the compressor on the file itself (so it knows the size,
// as zstd needs to record it), leaving in in place; returns the output path.
func compressFile(t testing.TB, in, tool string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s is not installed (Debian xz-utils, zstd, gzip; in the Makefile's DEB_TEST)", tool)
	}
	ext := map[string]string{"xz": ".xz", "zstd": ".zst", "gzip": ".gz"}[tool]
	out := in + ext
	os.Remove(out)
	cmd := exec.Command(tool, append(args, "-k", in)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", tool, args, err, b)
	}
	return out
}

// readAll reads a source front to back in pieces of n bytes with ReadAt.
func readAll(t testing.TB, s interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}, n int) []byte {
	t.Helper()
	out := make([]byte, 0, s.Size())
	buf := make([]byte, n)
	for off := int64(0); off < s.Size(); {
		m, err := s.ReadAt(buf, off)
		if err != nil && !(err == io.EOF && off+int64(m) == s.Size()) {
			t.Fatalf("ReadAt(%d, %d): %d, %v", len(buf), off, m, err)
		}
		out = append(out, buf[:m]...)
		off += int64(m)
	}
	return out
}
