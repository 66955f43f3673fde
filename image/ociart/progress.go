package ociart

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// meter reports the progress of one phase: a bar on a terminal, a plain
// line at most every plainEvery otherwise (logs, CI). Safe for concurrent
// Add calls; a nil *meter is silent.
type meter struct {
	mu          sync.Mutex
	w           io.Writer
	bar         *progressbar.ProgressBar
	label       string
	total, done int64
	last        time.Time
}

const plainEvery = 5 * time.Second

func newMeter(w io.Writer, label string, total int64) *meter {
	if w == nil {
		return nil
	}
	m := &meter{w: w, label: label, total: total, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		m.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(label),
			progressbar.OptionShowBytes(true), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }))
	}
	return m
}

func (m *meter) Add(n int64) {
	if m == nil || n == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.done += n
	if m.bar != nil {
		_ = m.bar.Add64(n)
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
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bar != nil {
		_ = m.bar.Finish()
		return
	}
	m.line()
}

// Note prints one line of text to the progress writer.
func (m *meter) Note(format string, args ...any) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(m.w, format+"\n", args...)
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
