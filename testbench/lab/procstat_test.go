package lab

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
	// Spin until the process has used 100 ms more CPU, whatever else the
	// machine is doing (on a loaded box 300 ms of wall time may give this
	// process only a fraction of that); bounded by 30 s of wall time.
	deadline := time.Now().Add(30 * time.Second)
	var after time.Duration
	for x := 0; ; x++ {
		if x%1_000_000 == 0 {
			if after, err = ReadProcCPU(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if after-before >= 100*time.Millisecond {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("cpu went %v -> %v after 30 s of spinning: the figure does not move", before, after)
			}
		}
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
