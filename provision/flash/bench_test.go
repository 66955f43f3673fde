package flash

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/bmap"
)

// benchImage writes a sparse image of size bytes with data bytes of random data in
// 2 MiB regions spread over it, plus its .bmap sidecar.
func benchImage(tb testing.TB, dir string, size, data int64) string {
	tb.Helper()
	path := filepath.Join(dir, "bench.img")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{'f', 'l', 'a', 's', 'h'})
	buf := make([]byte, 2*MiB)
	regions := data / int64(len(buf))
	stride := size / regions
	for i := range regions {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, i*stride+(i%7)*13*4096); err != nil {
			tb.Fatal(err)
		}
	}
	m, err := bmap.Scan(tb.Context(), f, bmap.ScanOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	var x bytes.Buffer
	if err := m.WriteXML(&x); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(bmap.SidecarPath(path), x.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// flashOnce flashes img to n fresh file targets in dir and fails on any error.
func flashOnce(tb testing.TB, img, dir string, n int) {
	tb.Helper()
	src, err := OpenImage(img)
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	var targets []Target
	for i := range n {
		ft, err := OpenFileTarget(filepath.Join(dir, fmt.Sprintf("t%d.img", i)), src.Size())
		if err != nil {
			tb.Fatal(err)
		}
		defer ft.Close()
		targets = append(targets, ft)
	}
	for _, r := range Flash(tb.Context(), src, targets, Options{}) {
		if r.Err != nil {
			tb.Fatal(r.Err)
		}
	}
}

// BenchmarkFlash flashes a 256 MiB image with 64 MiB of data to 1 and 4 file
// targets, fsync and verify included. Bytes/s is mapped data per target.
func BenchmarkFlash(b *testing.B) {
	dir := b.TempDir()
	img := benchImage(b, dir, 256*MiB, 64*MiB)
	for _, n := range []int{1, 4} {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			b.SetBytes(64 * MiB)
			for b.Loop() {
				flashOnce(b, img, dir, n)
			}
		})
	}
}

// TestFlashVsBmaptoolAndDd times Flash (with verify) against `bmaptool copy` and
// `dd bs=4M conv=fsync` on the same image and file targets, in one run, and logs
// the figures; it asserts nothing about time. Run with
//
//	LEKIWI_BENCH=1 go test -run TestFlashVsBmaptoolAndDd -v ./provision/flash/
func TestFlashVsBmaptoolAndDd(t *testing.T) {
	if os.Getenv("LEKIWI_BENCH") != "1" {
		t.Skip("benchmark comparison; set LEKIWI_BENCH=1 to run")
	}
	bmaptool := needTool(t, "bmaptool")
	dir := t.TempDir()
	const size, data = 1 << 30, 256 * MiB
	img := benchImage(t, dir, size, data)
	out := filepath.Join(dir, "out.img")
	// Throughput is mapped data written per second summed over the targets. Note
	// that Flash's read-back goes through the page cache until targets use
	// O_DIRECT, and bmaptool checks the source's checksums but does not read the
	// target back.
	run := func(name string, targets int, f func()) {
		os.Remove(out)
		start := time.Now()
		f()
		d := time.Since(start)
		t.Logf("%-28s %8v  %6.0f MiB/s of mapped data (all targets)", name, d.Round(time.Millisecond), float64(targets*data)/MiB/d.Seconds())
	}
	t.Logf("image %d MiB, %d MiB mapped; file targets on the test's temp dir, fsync included", size/MiB, data/MiB)
	run("flash, 1 target, verify", 1, func() { flashOnce(t, img, dir, 1) })
	run("flash, 4 targets, verify", 4, func() { flashOnce(t, img, dir, 4) })
	run("bmaptool copy", 1, func() {
		if msg, err := exec.Command(bmaptool, "copy", img, out).CombinedOutput(); err != nil {
			t.Fatalf("bmaptool copy: %v\n%s", err, msg)
		}
	})
	run("dd bs=4M conv=fsync", 1, func() {
		if msg, err := exec.Command("dd", "if="+img, "of="+out, "bs=4M", "conv=fsync").CombinedOutput(); err != nil {
			t.Fatalf("dd: %v\n%s", err, msg)
		}
	})
}
