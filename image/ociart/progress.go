package ociart

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// meter reports the progress of one phase: a bar on a terminal, a plain
// line at most every plainEvery otherwise (logs, CI). Safe for concurrent
// Add calls; a nil *meter is silent.
type meter struct {
	mu          sync.Mutex
	w           io.Writer
	bars        *mpb.Progress // nil when w is not a terminal
	bar         *mpb.Bar
	label       string
	total, done int64
	last        time.Time
	stopped     bool
}

const plainEvery = 5 * time.Second

func newMeter(w io.Writer, label string, total int64) *meter {
	if w == nil {
		return nil
	}
	m := &meter{w: w, label: label, total: total, last: time.Now()}
	if f, ok := w.(*os.File); ok && wideTerminal(f) {
		m.bars = mpb.New(mpb.WithOutput(w), mpb.WithRefreshRate(100*time.Millisecond))
		m.bar = m.bars.AddBar(total,
			mpb.PrependDecorators(decor.Name(label, decor.WCSyncSpaceR), decor.Percentage(decor.WCSyncSpace)),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.AverageSpeed(decor.SizeB1024(0), "  % .1f")))
	}
	return m
}

// wideTerminal says whether f is a terminal wide enough for a bar. A
// terminal that reports no size (some CI runners, serial consoles) gets
// plain lines: mpb would draw nothing there.
func wideTerminal(f *os.File) bool {
	if !term.IsTerminal(int(f.Fd())) {
		return false
	}
	width, _, err := term.GetSize(int(f.Fd()))
	return err == nil && width >= 40
}

func (m *meter) Add(n int64) {
	if m == nil || n == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.done += n
	if m.bar != nil {
		m.bar.IncrInt64(n)
		return
	}
	if time.Since(m.last) >= plainEvery {
		m.last = time.Now()
		m.line()
	}
}

func (m *meter) line() {
	pct := 100.0
	if m.total > 0 {
		pct = float64(m.done) * 100 / float64(m.total)
	}
	fmt.Fprintf(m.w, "%s: %s / %s (%.0f%%)\n", m.label, human(m.done), human(m.total), pct)
}

// Finish prints the final state.
func (m *meter) Finish() {
	m.end(func() {
		if m.bar != nil {
			m.bar.SetTotal(-1, true) // complete at what was done, even if the total was a guess
			m.bars.Wait()
			return
		}
		m.line()
	})
}

// Stop ends an unfinished bar where it is, so that the terminal is free
// for the error that follows; defer it after newMeter. It does nothing
// after Finish, and prints nothing when there is no bar.
func (m *meter) Stop() {
	m.end(func() {
		if m.bar != nil {
			m.bar.Abort(false)
			m.bars.Wait()
		}
	})
}

// end runs last under the lock for whichever of Finish and Stop comes
// first: a bar can be completed or aborted only once, and the deferred
// Stop must not undo a Finish.
func (m *meter) end(last func()) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	m.stopped = true
	last()
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// countingReader feeds a meter as it is read.
type countingReader struct {
	r io.Reader
	m *meter
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.m.Add(int64(n))
	return n, err
}
