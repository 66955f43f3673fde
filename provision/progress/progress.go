// Package progress shows how far each target of `provision flash` got: one
// bar per target on a terminal (bytes, speed, ETA and phase, with mpb), and
// on anything else — a CI log, a pipe — one line per target every few
// seconds and at each phase change, so that logs stay readable.
//
// Speed and ETA are per phase: a card that finished writing and is now being
// read back shows its read-back speed, not an average of both.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Reporter receives progress from concurrent targets. Update may be called
// from many goroutines at once.
type Reporter interface {
	// Update says that target is in phase with done of total bytes.
	Update(target, phase string, done, total int64)
	// Finish says target ended, successfully when err is nil.
	Finish(target string, err error)
	// Close waits for the display to settle; call it once, after every
	// target finished.
	Close()
}

// state is one target's progress within its current phase.
type state struct {
	phase       string
	done, total int64
	phaseStart  time.Time
	phaseFrom   int64 // done when the phase started, so speed is per phase
	lastLine    time.Time
	bar         *mpb.Bar
	creating    bool
	finished    bool
	err         error
}

func (s *state) rate(now time.Time) float64 {
	el := now.Sub(s.phaseStart).Seconds()
	if el < 0.2 {
		return 0
	}
	return float64(s.done-s.phaseFrom) / el
}

func (s *state) describe(now time.Time) string {
	if s.finished {
		if s.err != nil {
			return fmt.Sprintf("FAILED in %s", s.phase)
		}
		return "done"
	}
	r := s.rate(now)
	eta := "--"
	if r > 0 && s.total > s.done {
		eta = time.Duration(float64(s.total-s.done) / r * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%-7s %s/%s  %s/s  ETA %s", s.phase, size(s.done), size(s.total), size(int64(r)), eta)
}

// size formats bytes in binary units, short.
func size(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTP"[exp])
}

// common holds what both displays share.
type common struct {
	mu     sync.Mutex
	now    func() time.Time
	states map[string]*state
}

func (c *common) update(target, phase string, done, total int64) (*state, bool) {
	now := c.now()
	s, ok := c.states[target]
	if !ok {
		s = &state{phaseStart: now}
		c.states[target] = s
	}
	changed := s.phase != phase
	if changed {
		s.phase, s.phaseStart, s.phaseFrom = phase, now, done
	}
	s.done, s.total = done, total
	return s, changed
}

// get returns target's state, creating it in phase "prepare".
func (c *common) get(target string) *state {
	s, ok := c.states[target]
	if !ok {
		s = &state{phase: "prepare", phaseStart: c.now()}
		c.states[target] = s
	}
	return s
}

// Lines writes progress as text lines: at most one per target per interval,
// plus one at every phase change and one at the end.
type Lines struct {
	common
	w        io.Writer
	interval time.Duration
}

// NewLines reports to w every interval (default 2 s). now may be nil (time.Now).
func NewLines(w io.Writer, interval time.Duration, now func() time.Time) *Lines {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	return &Lines{common: common{now: now, states: map[string]*state{}}, w: w, interval: interval}
}

func (l *Lines) Update(target, phase string, done, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, changed := l.update(target, phase, done, total)
	now := l.now()
	if !changed && now.Sub(s.lastLine) < l.interval {
		return
	}
	s.lastLine = now
	fmt.Fprintf(l.w, "%s: %s\n", target, s.describe(now))
}

func (l *Lines) Finish(target string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.get(target)
	s.finished, s.err = true, err
	if err != nil {
		fmt.Fprintf(l.w, "%s: FAILED in %s: %v\n", target, s.phase, err)
		return
	}
	fmt.Fprintf(l.w, "%s: done\n", target)
}

func (l *Lines) Close() {}

// Bars draws one mpb bar per target.
type Bars struct {
	common
	p *mpb.Progress
}

// NewBars draws on w, which should be a terminal, width columns wide (0: mpb's default).
func NewBars(w io.Writer, width int) *Bars {
	// The caller decides that w is a terminal; WithAutoRefresh makes mpb draw
	// even when it cannot tell (and lets tests capture frames).
	opts := []mpb.ContainerOption{mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithRefreshRate(200 * time.Millisecond)}
	if width > 0 {
		opts = append(opts, mpb.WithWidth(width))
	}
	return &Bars{common: common{now: time.Now, states: map[string]*state{}}, p: mpb.New(opts...)}
}

// Update and Finish never call into mpb while holding b.mu: mpb renders from
// its own goroutine and the phase decorator takes b.mu, so holding it across
// a bar call could deadlock.
func (b *Bars) Update(target, phase string, done, total int64) {
	b.mu.Lock()
	s, _ := b.update(target, phase, done, total)
	bar, create := s.bar, s.bar == nil && !s.creating
	if create {
		s.creating = true
	}
	finished := s.finished
	b.mu.Unlock()
	if create {
		// Made with total 0 so that mpb does not complete the bar when a
		// phase reaches its total: the next phase starts over on the same bar,
		// and only Finish completes it.
		bar = b.p.AddBar(0,
			mpb.PrependDecorators(decor.Name(target, decor.WCSyncSpaceR)),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				b.mu.Lock()
				defer b.mu.Unlock()
				return s.describe(b.now())
			})),
		)
		b.mu.Lock()
		s.bar = bar
		b.mu.Unlock()
	}
	if bar == nil || finished {
		return
	}
	bar.SetTotal(max(total, 1), false)
	bar.SetCurrent(done)
}

func (b *Bars) Finish(target string, err error) {
	b.mu.Lock()
	s := b.get(target)
	s.finished, s.err = true, err
	bar := s.bar
	b.mu.Unlock()
	if bar == nil {
		return
	}
	if err != nil {
		bar.Abort(false)
		return
	}
	bar.SetTotal(-1, true)
}

// Close aborts any bar whose target never finished (so Wait cannot hang on
// it) and waits for the last frame.
func (b *Bars) Close() {
	b.mu.Lock()
	var open []*mpb.Bar
	for _, s := range b.states {
		if s.bar != nil && !s.finished {
			open = append(open, s.bar)
		}
	}
	b.mu.Unlock()
	for _, bar := range open {
		bar.Abort(false)
	}
	b.p.Wait()
}
