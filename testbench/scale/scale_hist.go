package scale

import (
	"math"
	"time"
)

// Latency histogram of the scale scenarios. Simulator processes record
// millions of acknowledgements per run; a histogram keeps that in a few
// hundred counters, and histograms of several processes (or two snapshots
// of one, for a window) combine by adding or subtracting counts.

const (
	histBase    = 10 * time.Microsecond // upper bound of bucket 0
	histGrowth  = 1.08                  // each bucket 8 % wider: percentiles within 8 %
	histBuckets = 240                   // up to ~1.1e8 x 10 µs: well above a minute
)

// LatencyHist counts durations in logarithmic buckets. The zero value is
// empty and ready to use; it is not safe for concurrent use.
type LatencyHist struct {
	Counts []uint64      `json:"counts"`
	Max    time.Duration `json:"max_ns"`
}

func histBucket(d time.Duration) int {
	if d <= histBase {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(histBase)) / math.Log(histGrowth)))
	return min(i, histBuckets-1)
}

// histUpper is the upper bound of bucket i.
func histUpper(i int) time.Duration {
	return time.Duration(float64(histBase) * math.Pow(histGrowth, float64(i)))
}

// Add counts d.
func (h *LatencyHist) Add(d time.Duration) {
	if h.Counts == nil {
		h.Counts = make([]uint64, histBuckets)
	}
	h.Counts[histBucket(d)]++
	h.Max = max(h.Max, d)
}

// Count is the number of durations counted.
func (h *LatencyHist) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Merge adds o's counts to h.
func (h *LatencyHist) Merge(o LatencyHist) {
	if len(o.Counts) == 0 {
		h.Max = max(h.Max, o.Max)
		return
	}
	if h.Counts == nil {
		h.Counts = make([]uint64, histBuckets)
	}
	for i := 0; i < len(o.Counts) && i < histBuckets; i++ {
		h.Counts[i] += o.Counts[i]
	}
	h.Max = max(h.Max, o.Max)
}

// Since returns what was counted after the snapshot earlier of the same
// (cumulative) histogram. Max is the cumulative maximum: the window's own
// maximum is not recoverable from counts, so Since bounds it by the upper
// edge of the highest bucket that grew.
func (h LatencyHist) Since(earlier LatencyHist) LatencyHist {
	out := LatencyHist{Counts: make([]uint64, histBuckets)}
	top := -1
	for i := 0; i < len(h.Counts) && i < histBuckets; i++ {
		var e uint64
		if i < len(earlier.Counts) {
			e = earlier.Counts[i]
		}
		if h.Counts[i] > e {
			out.Counts[i] = h.Counts[i] - e
			top = i
		}
	}
	if top >= 0 {
		out.Max = min(h.Max, histUpper(top))
	}
	return out
}

// Quantile returns the upper bound of the bucket holding the p-th
// percentile (0-100), never more than Max; 0 when empty.
func (h LatencyHist) Quantile(p float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			if i == histBuckets-1 {
				return h.Max // the last bucket has no upper bound
			}
			if h.Max > 0 {
				return min(histUpper(i), h.Max)
			}
			return histUpper(i)
		}
	}
	return h.Max
}
