package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestMax(t *testing.T) {
	p := Policy{Base: time.Second, Cap: 60 * time.Second}
	tests := []struct {
		attempt int
		want    time.Duration
	}{
		{-1, time.Second},
		{0, time.Second},
		{1, 2 * time.Second},
		{5, 32 * time.Second},
		{6, 60 * time.Second},
		{7, 60 * time.Second},
		{1000, 60 * time.Second}, // would overflow a naive base<<attempt
	}
	for _, tt := range tests {
		if got := p.Max(tt.attempt); got != tt.want {
			t.Errorf("Max(%d) = %v, want %v", tt.attempt, got, tt.want)
		}
	}
	if got := (Policy{}).Max(100); got != DefaultCap {
		t.Errorf("zero Policy Max(100) = %v, want default cap %v", got, DefaultCap)
	}
	if got := (Policy{}).Max(0); got != DefaultBase {
		t.Errorf("zero Policy Max(0) = %v, want default base %v", got, DefaultBase)
	}
}

// TestDelayNeverAboveCapAndFullJitter checks the two properties that matter
// for a fleet: no delay ever exceeds its window (or the cap), and delays
// spread over the whole window instead of clustering near its top.
func TestDelayNeverAboveCapAndFullJitter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p := Policy{Base: 100 * time.Millisecond, Cap: 3 * time.Second}
	for attempt := range 12 {
		upper := p.Max(attempt)
		const n = 4000
		var sum time.Duration
		var low, high int
		for range n {
			d := p.Delay(attempt, rng)
			if d < 0 || d > upper || d > p.Cap {
				t.Fatalf("attempt %d: delay %v outside [0, %v] (cap %v)", attempt, d, upper, p.Cap)
			}
			sum += d
			if d < upper/4 {
				low++
			}
			if d > upper*3/4 {
				high++
			}
		}
		mean := sum / n
		// Uniform on [0, upper] has mean upper/2 and a quarter of the mass in
		// each quarter; allow generous statistical slack.
		if mean < upper*45/100 || mean > upper*55/100 {
			t.Errorf("attempt %d: mean delay %v, want about %v (uniform)", attempt, mean, upper/2)
		}
		if low < n/5 || high < n/5 {
			t.Errorf("attempt %d: %d delays in the bottom quarter and %d in the top quarter of %d; full jitter needs about %d each", attempt, low, high, n, n/4)
		}
	}
}

func TestUniformEdges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	if d := Uniform(0, rng); d != 0 {
		t.Fatalf("Uniform(0) = %v, want 0", d)
	}
	if d := Uniform(-time.Second, rng); d != 0 {
		t.Fatalf("Uniform(-1s) = %v, want 0", d)
	}
	seen := map[time.Duration]bool{}
	for range 200 {
		d := Uniform(2, rng)
		if d < 0 || d > 2 {
			t.Fatalf("Uniform(2ns) = %v, outside [0, 2ns]", d)
		}
		seen[d] = true
	}
	if len(seen) != 3 {
		t.Fatalf("Uniform(2ns) produced %v, want all of 0, 1 and 2 (inclusive upper bound)", seen)
	}
}
