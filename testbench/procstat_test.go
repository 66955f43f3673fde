package testbench

import (
	"os"
	"testing"
	"time"
)

func TestReadOwnProcessFigures(t *testing.T) {
	m, err := ReadProcMemory(os.Getpid())
	if err != nil || m.RSS < 1<<20 || m.HWM < m.RSS {
		t.Fatalf("memory %+v, %v", m, err)
	}
	before, err := ReadProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := ReadProcCPU(os.Getpid())
	if err != nil || after-before < 100*time.Millisecond {
		t.Fatalf("cpu went %v -> %v after 300 ms of spinning (%d), %v", before, after, x, err)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for p, want := range map[float64]time.Duration{50: 5, 99: 10, 90: 9, 10: 1, 0: 1} {
		if got := Percentile(ds, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty percentile")
	}
}
