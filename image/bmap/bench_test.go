package bmap

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// benchImage writes the benchmark image: 1 GiB with 256 MiB of random data in 128
// regions of 2 MiB at uneven offsets over the whole file, holes in between — the
// shape of a built image whose partitions are mostly empty.
func benchImage(tb testing.TB, dir string) (path string, dataBytes int64) {
	tb.Helper()
	requireHoles(tb, dir)
	path = filepath.Join(dir, "bench.img")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		tb.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{'l', 'e', 'k', 'i', 'w', 'i'})
	buf := make([]byte, 2*MiB)
	for i := range int64(128) {
		off := i*8*MiB + (i%7)*13*4096
		n := int64(2 * MiB)
		rng.Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			tb.Fatal(err)
		}
		dataBytes += n
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	return path, dataBytes
}

// BenchmarkScan scans the 1 GiB benchmark image (data in the page cache, as right
// after a build). Bytes/s is over the mapped data.
func BenchmarkScan(b *testing.B) {
	path, data := benchImage(b, b.TempDir())
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(data)
	for b.Loop() {
		if _, err := Scan(b.Context(), f, ScanOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestScanVsBmaptoolCreate times Scan+WriteXML against `bmaptool create` on the
// benchmark image, in the same run, and prints both and their ratio. It never
// asserts on time; it does check both produce the same bytes. Run with
//
//	LEKIWI_BENCH=1 go test -run TestScanVsBmaptoolCreate -v ./image/bmap/
func TestScanVsBmaptoolCreate(t *testing.T) {
	if os.Getenv("LEKIWI_BENCH") != "1" {
		t.Skip("benchmark comparison; set LEKIWI_BENCH=1 to run")
	}
	bmaptool := needBmaptool(t)
	dir := t.TempDir()
	img, data := benchImage(t, dir)
	const rounds = 5

	// CPU time is reported next to wall time because it does not depend on what else
	// the machine is running.
	var ourCPU, theirCPU time.Duration
	ours := func() ([]byte, time.Duration) {
		cpu0 := selfCPU(t)
		defer func() { ourCPU += selfCPU(t) - cpu0 }()
		start := time.Now()
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m, err := Scan(t.Context(), f, ScanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := m.WriteXML(&buf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ours.bmap"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes(), time.Since(start)
	}
	theirs := func() ([]byte, time.Duration) {
		out := filepath.Join(dir, "theirs.bmap")
		start := time.Now()
		cmd := exec.Command(bmaptool, "create", "-o", out, img)
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bmaptool create: %v\n%s", err, msg)
		}
		elapsed := time.Since(start)
		theirCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b, elapsed
	}

	// Warm the page cache with one untimed run of each, then alternate.
	a, _ := ours()
	c, _ := theirs()
	if !bytes.Equal(a, c) {
		t.Fatal("Scan+WriteXML and bmaptool create produced different maps for the benchmark image")
	}
	ourCPU, theirCPU = 0, 0
	var ourTimes, theirTimes []time.Duration
	for range rounds {
		_, d := ours()
		ourTimes = append(ourTimes, d)
		_, d = theirs()
		theirTimes = append(theirTimes, d)
	}
	slices.Sort(ourTimes)
	slices.Sort(theirTimes)
	o, th := ourTimes[rounds/2], theirTimes[rounds/2]
	t.Logf("image 1 GiB, mapped %.0f MiB in 128 regions; median of %d runs (warm page cache)", float64(data)/MiB, rounds)
	t.Logf("Scan+WriteXML:   %v (min %v, max %v), %.0f MiB/s", o.Round(time.Millisecond), ourTimes[0].Round(time.Millisecond), ourTimes[rounds-1].Round(time.Millisecond), float64(data)/MiB/o.Seconds())
	t.Logf("bmaptool create: %v (min %v, max %v), %.0f MiB/s", th.Round(time.Millisecond), theirTimes[0].Round(time.Millisecond), theirTimes[rounds-1].Round(time.Millisecond), float64(data)/MiB/th.Seconds())
	t.Logf("ratio bmaptool/ours: %.2fx wall", th.Seconds()/o.Seconds())
	t.Logf("CPU per run (user+sys): ours %v, bmaptool %v, ratio %.2fx",
		(ourCPU / rounds).Round(time.Millisecond), (theirCPU / rounds).Round(time.Millisecond), theirCPU.Seconds()/ourCPU.Seconds())
}

// selfCPU is the user+system CPU time this process has used.
func selfCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
