package stream

import (
	"bytes"
	"container/heap"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"
)

// Strategy says what a throttled subscription does with the messages of a
// topic that arrive faster than its rate.
type Strategy string

// The strategies.
const (
	// Sample delivers the first message of each interval and drops the
	// rest: the cheapest, and what arrives is a real message.
	Sample Strategy = "sample"
	// Latest delivers the first message at once and then, at the end of
	// each interval, the newest one held back: the final state of a topic
	// always arrives.
	Latest Strategy = "latest"
	// Aggregate delivers one summary per interval: the count, first and
	// last times, the newest data, and min/max/mean of every numeric field.
	Aggregate Strategy = "aggregate"
)

// Throttle limits a subscription to Rate messages per second per topic.
// A zero Rate means no throttle.
type Throttle struct {
	Rate     float64  `json:"rate"`
	Strategy Strategy `json:"strategy,omitempty"`
}

// Throttle limits.
const (
	MaxRate = 1000.0 // messages per second per topic; above this, do not throttle
	MinRate = 0.001  // once every ~17 minutes
	// maxStatFields bounds the numeric fields an aggregate tracks.
	maxStatFields = 64
)

func (t Throttle) validate() error {
	if t.Rate == 0 {
		if t.Strategy != "" {
			return fmt.Errorf("throttle strategy %q needs a rate (messages per second per topic)", t.Strategy)
		}
		return nil
	}
	if math.IsNaN(t.Rate) || t.Rate < MinRate || t.Rate > MaxRate {
		return fmt.Errorf("throttle rate %v is outside %v-%v messages per second per topic", t.Rate, MinRate, MaxRate)
	}
	switch t.Strategy {
	case Sample, Latest, Aggregate:
		return nil
	case "":
		return fmt.Errorf("throttle rate %v needs a strategy: sample, latest or aggregate", t.Rate)
	}
	return fmt.Errorf("throttle strategy %q is not sample, latest or aggregate", t.Strategy)
}

func (t Throttle) interval() time.Duration {
	return time.Duration(float64(time.Second) / t.Rate)
}

// throttler holds one subscription's per-topic windows. Memory is bounded
// by the number of distinct topics the subscription matches, and idle
// windows are swept.
type throttler struct {
	interval  time.Duration
	strategy  Strategy
	windows   map[string]*window
	due       dueHeap
	lastSweep time.Time
	dropped   uint64 // messages not delivered on their own (sampled away, replaced, aggregated)
}

type window struct {
	topic   string
	last    time.Time // last delivery (sample, latest)
	pending *published
	agg     *aggregate
	queued  bool // has an entry in the due heap
}

func newThrottler(t Throttle) *throttler {
	return &throttler{interval: t.interval(), strategy: t.Strategy, windows: map[string]*window{}}
}

// offer takes a message at now and says whether to deliver it at once.
func (t *throttler) offer(p *published, now time.Time) bool {
	w := t.windows[p.Topic]
	if w == nil {
		w = &window{topic: p.Topic}
		t.windows[p.Topic] = w
		if t.strategy != Aggregate {
			w.last = now
			return true
		}
	}
	switch t.strategy {
	case Sample:
		if now.Sub(w.last) >= t.interval {
			w.last = now
			return true
		}
		t.dropped++
		return false
	case Latest:
		if w.pending == nil && now.Sub(w.last) >= t.interval {
			w.last = now
			return true
		}
		if w.pending != nil {
			t.dropped++
		}
		w.pending = p
		t.schedule(w, w.last.Add(t.interval))
		return false
	default: // Aggregate
		if w.agg == nil {
			w.agg = &aggregate{}
			t.schedule(w, now.Add(t.interval))
		} else {
			t.dropped++
		}
		w.agg.add(p)
		return false
	}
}

func (t *throttler) schedule(w *window, at time.Time) {
	if !w.queued {
		w.queued = true
		heap.Push(&t.due, dueEntry{at: at, w: w})
	}
}

// flush returns the frames whose interval ended by now, for subscription
// subJSON, and forgets idle windows.
func (t *throttler) flush(now time.Time, subJSON []byte) []frame {
	var out []frame
	for len(t.due) > 0 && !t.due[0].at.After(now) {
		w := heap.Pop(&t.due).(dueEntry).w
		w.queued = false
		switch {
		case w.pending != nil:
			out = append(out, frame{data: w.pending.frameFor(subJSON), pri: w.pending.Priority, topic: w.topic})
			w.pending = nil
			w.last = now
		case w.agg != nil:
			out = append(out, frame{data: w.agg.frame(subJSON), pri: w.agg.last.Priority, topic: w.topic})
			w.agg = nil
		}
	}
	if now.Sub(t.lastSweep) >= max(t.interval, time.Second) {
		t.lastSweep = now
		for k, w := range t.windows {
			if !w.queued && now.Sub(w.last) >= t.interval {
				delete(t.windows, k)
			}
		}
	}
	return out
}

type dueEntry struct {
	at time.Time
	w  *window
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = dueEntry{}
	*h = old[:len(old)-1]
	return e
}

// aggregate summarises one topic's messages over an interval.
type aggregate struct {
	count       int
	first, last *published
	stats       map[string]*Stat
}

// Stat is the summary of one numeric field in an aggregate frame.
type Stat struct {
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
	N    int     `json:"n"`
}

func (a *aggregate) add(p *published) {
	a.count++
	if a.first == nil {
		a.first = p
	}
	a.last = p
	if len(p.Data) == 0 {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(p.Data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return
	}
	if a.stats == nil {
		a.stats = map[string]*Stat{}
	}
	a.walk("", v, 0)
}

func (a *aggregate) walk(path string, v any, depth int) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		if err != nil || path == "" {
			return
		}
		s := a.stats[path]
		if s == nil {
			if len(a.stats) >= maxStatFields {
				return
			}
			s = &Stat{Min: f, Max: f}
			a.stats[path] = s
		}
		s.Min, s.Max = min(s.Min, f), max(s.Max, f)
		s.Mean += (f - s.Mean) / float64(s.N+1)
		s.N++
	case map[string]any:
		if depth >= 4 {
			return
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // which fields fit under maxStatFields must not depend on map order
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			a.walk(p, x[k], depth+1)
		}
	}
}

type wireAggregate struct {
	Type     string           `json:"type"`
	Sub      json.RawMessage  `json:"sub"`
	Topic    string           `json:"topic"`
	RobotID  string           `json:"robot_id,omitempty"`
	Kind     string           `json:"kind,omitempty"`
	Priority Priority         `json:"priority"`
	Count    int              `json:"count"`
	First    time.Time        `json:"first"`
	Last     time.Time        `json:"last"`
	Seq      int64            `json:"seq,omitempty"`
	Data     json.RawMessage  `json:"data,omitempty"`
	Stats    map[string]*Stat `json:"stats,omitempty"`
}

func (a *aggregate) frame(subJSON []byte) []byte {
	l := a.last
	b, _ := json.Marshal(wireAggregate{Type: "aggregate", Sub: subJSON, Topic: l.Topic, RobotID: l.RobotID, Kind: l.Kind,
		Priority: l.Priority, Count: a.count, First: a.first.Time.UTC(), Last: l.Time.UTC(), Seq: l.Seq, Data: l.Data, Stats: a.stats})
	return b
}
