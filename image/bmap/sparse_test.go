package bmap

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// extent is a piece of a test image that holds written bytes: random data, or
// explicit zeros (allocated, unlike a hole).
type extent struct {
	off, len int64
	zeros    bool
}

// makeSparse creates a sparse image of size bytes in dir with the extents written
// and everything else left as holes. Data is pseudo-random from a fixed seed so
// failures reproduce.
func makeSparse(t testing.TB, dir, name string, size int64, extents []extent) string {
	t.Helper()
	requireHoles(t, dir)
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(size), uint64(len(extents))))
	for _, e := range extents {
		buf := make([]byte, e.len)
		if !e.zeros {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		}
		if _, err := f.WriteAt(buf, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireHoles skips the test when the file system under dir does not report holes
// (then every image is one data region and the expectations are moot).
func requireHoles(t testing.TB, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "holeprobe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	regions, err := sparse.DataRegions(t.Context(), f, 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(regions) != 0 {
		t.Skipf("file system of %s does not report holes via SEEK_HOLE; run the tests on ext4, xfs, btrfs or tmpfs", dir)
	}
}

func mustSize(t testing.TB, f *os.File) int64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// hashFileRange is the test's independent computation of a range checksum.
func hashFileRange(t testing.TB, path string, first, last int64, bs int) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := min((last+1)*int64(bs), int64(len(data)))
	sum := sha256.Sum256(data[first*int64(bs) : end])
	return hex.EncodeToString(sum[:])
}

func scanPath(t testing.TB, path string, opts ScanOptions) *Map {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := Scan(t.Context(), f, opts)
	if err != nil {
		t.Fatalf("Scan(%s): %v", path, err)
	}
	return m
}
