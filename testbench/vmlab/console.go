package vmlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Line is one line of the serial console.
type Line struct {
	Text string
	At   time.Duration // since QEMU started
}

// Console is a VM's serial console (ttyAMA0) split into lines: every byte
// also goes to a log file, and WaitFor finds lines as they arrive. Carriage
// returns are dropped; a last line without a newline counts once the
// console closes.
type Console struct {
	start time.Time

	mu      sync.Mutex
	lines   []Line
	next    int           // WaitFor's cursor: the first line not yet consumed
	changed chan struct{} // closed and replaced on every new line or close
	closed  bool
	why     string // why the console closed
}

func newConsole(start time.Time) *Console {
	return &Console{start: start, changed: make(chan struct{})}
}

// consume reads r (QEMU's serial output) to its end, copying it to log.
func (c *Console) consume(r io.Reader, log io.Writer) {
	br := bufio.NewReaderSize(io.TeeReader(r, log), 64<<10)
	for {
		s, err := br.ReadString('\n')
		if s != "" && (err == nil || strings.TrimRight(s, "\r\n") != "") {
			c.add(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"))
		}
		if err != nil {
			return
		}
	}
}

func (c *Console) add(text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines = append(c.lines, Line{Text: text, At: time.Since(c.start)})
	close(c.changed)
	c.changed = make(chan struct{})
}

// close marks the end of the output, with the reason shown to waiters.
func (c *Console) close(why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed, c.why = true, why
	close(c.changed)
	c.changed = make(chan struct{})
}

// WaitFor returns the first line after the last one WaitFor returned that
// matches re, waiting for the VM to print it. Lines are consumed in order,
// as a boot prints them: a later WaitFor never returns an earlier line. On
// timeout (ctx), or when the VM exits first, the error holds the console's
// last lines.
func (c *Console) WaitFor(ctx context.Context, re *regexp.Regexp) (Line, error) {
	for {
		c.mu.Lock()
		for i := c.next; i < len(c.lines); i++ {
			if re.MatchString(c.lines[i].Text) {
				c.next = i + 1
				l := c.lines[i]
				c.mu.Unlock()
				return l, nil
			}
		}
		c.next = len(c.lines)
		closed, why, changed := c.closed, c.why, c.changed
		c.mu.Unlock()
		if closed {
			return Line{}, fmt.Errorf("vmlab: no console line matched %q before %s; last lines:\n%s", re, why, c.tailText(TailLines))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("vmlab: no console line matched %q within the deadline (%w); last lines:\n%s", re, ctx.Err(), c.tailText(TailLines))
		}
	}
}

// TailLines is how many console lines errors show.
const TailLines = 30

// Lines returns every line so far.
func (c *Console) Lines() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.lines...)
}

// Tail returns the last n lines.
func (c *Console) Tail(n int) []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.lines[max(0, len(c.lines)-n):]...)
}

func (c *Console) tailText(n int) string {
	var b strings.Builder
	for _, l := range c.Tail(n) {
		fmt.Fprintf(&b, "  [%7.3fs] %s\n", l.At.Seconds(), l.Text)
	}
	if b.Len() == 0 {
		return "  (nothing on the console)\n"
	}
	return b.String()
}
