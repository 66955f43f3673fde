package scale

import (
	"bytes"
	"errors"
	"image/color"
	"image/png"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/testbench/lab"
)

func TestLatencyHistQuantileWithinBucketOfExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h LatencyHist
	var exact []time.Duration
	for range 20000 {
		// Log-uniform from 20 µs to 2 s.
		d := time.Duration(20e3 * float64(int64(1)<<rng.IntN(17)) * (1 + rng.Float64()))
		h.Add(d)
		exact = append(exact, d)
	}
	if h.Count() != 20000 {
		t.Fatalf("Count = %d, want 20000", h.Count())
	}
	for _, p := range []float64{1, 50, 90, 99, 100} {
		got, want := h.Quantile(p), lab.Percentile(exact, p)
		// The bucket's upper bound: never below the exact value, at most
		// one bucket (8 %) above it.
		if got < want || float64(got) > float64(want)*histGrowth*1.0001 {
			t.Errorf("p%.0f = %s, exact %s: not within one bucket above", p, got, want)
		}
	}
	if h.Quantile(100) != h.Max {
		t.Errorf("p100 = %s, want Max %s", h.Quantile(100), h.Max)
	}
}

func TestLatencyHistEdges(t *testing.T) {
	var empty LatencyHist
	if empty.Quantile(99) != 0 || empty.Count() != 0 {
		t.Fatal("empty histogram must report zero")
	}
	var h LatencyHist
	h.Add(-time.Second)   // clock step: counted in the first bucket
	h.Add(24 * time.Hour) // beyond the last bucket: counted in it
	if h.Count() != 2 || h.Counts[0] != 1 || h.Counts[histBuckets-1] != 1 {
		t.Fatalf("edge values not counted in the edge buckets: %v", h.Counts[:2])
	}
	if h.Quantile(100) != 24*time.Hour {
		t.Errorf("p100 = %s, want the maximum", h.Quantile(100))
	}
}

func TestLatencyHistSinceAndMerge(t *testing.T) {
	var a LatencyHist
	for range 100 {
		a.Add(time.Millisecond)
	}
	before := LatencyHist{Counts: append([]uint64(nil), a.Counts...), Max: a.Max}
	for range 10 {
		a.Add(100 * time.Millisecond)
	}
	w := a.Since(before)
	if w.Count() != 10 {
		t.Fatalf("window counts %d, want 10", w.Count())
	}
	if p := w.Quantile(50); p < 100*time.Millisecond || p > 109*time.Millisecond {
		t.Errorf("window p50 = %s, want ~100 ms (the earlier 1 ms samples are not in the window)", p)
	}
	var sum LatencyHist
	sum.Merge(a)
	sum.Merge(w)
	sum.Merge(LatencyHist{}) // a child that has not acknowledged anything yet
	if sum.Count() != 120 || sum.Max != 100*time.Millisecond {
		t.Errorf("merged count %d max %s, want 120 and 100ms", sum.Count(), sum.Max)
	}
}

func TestSumSeries(t *testing.T) {
	text := `# HELP lekiwi_control_messages_total Messages received from robots, by type.
# TYPE lekiwi_control_messages_total counter
lekiwi_control_messages_total{type="heartbeat"} 1500
lekiwi_control_messages_total{type="telemetry"} 20
lekiwi_control_messages_total_extra 7
lekiwi_control_robot_denied_total{reason="cert revoked, see log"} 3
go_goroutines 2041
go_memstats_heap_inuse_bytes 2.8672e+07
`
	for _, tc := range []struct {
		series string
		want   float64
		err    bool
	}{
		{"lekiwi_control_messages_total", 1520, false},
		{`lekiwi_control_messages_total{type="heartbeat"}`, 1500, false},
		{`lekiwi_control_robot_denied_total{reason="cert revoked, see log"}`, 3, false},
		{"go_goroutines", 2041, false},
		{"go_memstats_heap_inuse_bytes", 28672000, false},
		{"go_gc", 0, true},
		{`lekiwi_control_messages_total{type="event"}`, 0, true}, // errNoSeries
	} {
		got, err := sumSeries(text, tc.series)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("sumSeries(%s) = %v, %v; want %v, error %v", tc.series, got, err, tc.want, tc.err)
		}
	}
	if _, err := sumSeries("", "lekiwi_control_messages_total"); !errors.Is(err, errNoSeries) {
		t.Errorf("a missing series must be errNoSeries (a member with no robot yet), got %v", err)
	}
	if _, err := sumSeries("go_goroutines many\n", "go_goroutines"); err == nil {
		t.Error("a non-numeric value must be an error")
	}
}

func FuzzSumSeries(f *testing.F) {
	f.Add("a{b=\"c d\"} 1\na 2\n# x\n", "a")
	f.Add("go_goroutines 2.5e+03\n", "go_goroutines")
	f.Add(" \n\n{ } NaN", "{")
	f.Fuzz(func(t *testing.T, text, series string) {
		_, _ = sumSeries(text, series) // must not panic
	})
}

func scaleSteps() []Step {
	return []Step{
		{Scenario: "single", Robots: 1000, Interval: 30 * time.Second, RSSPerConn: 90 << 10, AckP50: time.Millisecond, AckP99: 5 * time.Millisecond, Connected: 1000, Goroutines: 2000},
		{Scenario: "single", Robots: 1000, Interval: time.Second, StormFromReady: 3 * time.Second, StormPeakCPU: 1.2, AckP99: 40 * time.Millisecond, Saturated: "ack p99"},
		{Scenario: "single+subscribers", Robots: 1000, Interval: 30 * time.Second, Subscribers: 100, SubFramesSec: 3300},
		{Scenario: "single", Robots: 5000, Interval: 30 * time.Second, RSSPerConn: 80 << 10, AckP50: 2 * time.Millisecond, AckP99: 20 * time.Millisecond},
		{Scenario: "cluster", Robots: 50000, Members: 3, Connected: 50000, Visible: "c1: listed 50000/50000", MemberRSS: []uint64{1 << 30},
			Interval: 30 * time.Second, RSSPerConn: 120 << 10, AckP50: 3 * time.Millisecond, AckP99: 24 * time.Millisecond},
		{Scenario: "cluster", Robots: 30000, Members: 3, Connected: 30000, Interval: 30 * time.Second, RSSPerConn: 130 << 10, AckP50: 2 * time.Millisecond, AckP99: 15 * time.Millisecond},
		{Scenario: "cluster restart", Robots: 50000, Members: 3, StormFromReady: 40 * time.Second, MemberConnect: []int{25000, 0, 25000}},
	}
}

func TestScaleTableHasEveryScenario(t *testing.T) {
	md := Table(scaleSteps())
	for _, want := range []string{
		"| single | 1000 | 30s |", "| 90.0 |", "| 2.00 |", // KiB per connection, goroutines per connection
		"| single | 1000 | 0s | 3s | 1.20 |", // storm row
		"| 1000 | 30s | 100 | 3300 |",        // subscribers
		"| cluster restart | 50000 |", "25000, 0, 25000", "c1: listed 50000/50000",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}

func TestScalePlotDrawsThePoints(t *testing.T) {
	count := func(t *testing.T, steps []Step) map[color.RGBA]int {
		t.Helper()
		b, err := Plot(steps)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("not a PNG: %v", err)
		}
		px := map[color.RGBA]int{}
		bounds := img.Bounds()
		for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
			for x := bounds.Min.X; x < bounds.Max.X; x++ {
				px[color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)]++
			}
		}
		return px
	}
	// Two points with a line between them, plus the legend, for each of
	// one node's memory and p99 and the cluster's memory and p99.
	px := count(t, scaleSteps())
	for name, c := range map[string]color.RGBA{"one node's memory": plotBlue, "one node's p99": plotRed, "cluster memory": plotGreen, "cluster p99": plotPurple} {
		if px[c] < 100 {
			t.Errorf("%s series missing (%d px)", name, px[c])
		}
	}
	var clusterOnly []Step
	for _, s := range scaleSteps() {
		if s.Scenario == "cluster" {
			clusterOnly = append(clusterOnly, s)
		}
	}
	px = count(t, clusterOnly)
	if px[plotGreen] < 100 || px[plotBlue] > 0 {
		t.Errorf("cluster-only plot: cluster memory %d px, one node's %d px (want none, not even a legend)", px[plotGreen], px[plotBlue])
	}
	if _, err := Plot(nil); err == nil {
		t.Error("a plot without points must say so")
	}
}

// The robots of any one member must fail over to every other member in
// equal shares.
func TestClusterServersSpreadFailover(t *testing.T) {
	const M = 4
	var members []*lab.Member
	for i := range M {
		members = append(members, &lab.Member{Listen: string(rune('a' + i))})
	}
	nproc := M * (M - 1)
	second := map[string]map[string]int{}
	for i := range nproc {
		s := clusterServers(members, i)
		if len(s) != M {
			t.Fatalf("process %d: %d servers, want %d", i, len(s), M)
		}
		seen := map[string]bool{}
		for _, u := range s {
			seen[u] = true
		}
		if len(seen) != M {
			t.Fatalf("process %d: servers %v repeat", i, s)
		}
		if second[s[0]] == nil {
			second[s[0]] = map[string]int{}
		}
		second[s[0]][s[1]]++
	}
	for primary, to := range second {
		if len(to) != M-1 {
			t.Errorf("robots of %s fail over to %v, want each of the %d others once", primary, to, M-1)
		}
		for other, n := range to {
			if n != 1 {
				t.Errorf("robots of %s: %d processes fail over to %s, want 1", primary, n, other)
			}
		}
	}
}
