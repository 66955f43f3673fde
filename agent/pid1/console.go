package pid1

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Console writes what the init says to the technician's screen: every line
// prefixed with the time since boot in the kernel's own format
// ("[    4.512345] "), so the init's lines and the kernel's read as one log
// (the wall clock of a board without a set RTC says 1970). Lines written
// in several pieces get one prefix; writers in several goroutines (the
// factory run's progress, the DHCP renewals) do not split each other's
// lines as long as each writes whole lines.
type Console struct {
	mu      sync.Mutex
	w       io.Writer
	since   func() time.Duration
	midLine bool
}

// NewConsole prefixes the lines written to w with since() (nil: the time
// since boot, CLOCK_BOOTTIME).
func NewConsole(w io.Writer, since func() time.Duration) *Console {
	if since == nil {
		since = sinceBoot
	}
	return &Console{w: w, since: since}
}

func sinceBoot() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Write writes p, starting each line with the time prefix. It writes to
// the console once per call.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]byte, 0, len(p)+16)
	rest := p
	for len(rest) > 0 {
		if !c.midLine {
			d := c.since()
			out = fmt.Appendf(out, "[%5d.%06d] ", int64(d/time.Second), int64(d%time.Second/time.Microsecond))
			c.midLine = true
		}
		i := 0
		for i < len(rest) && rest[i] != '\n' {
			i++
		}
		if i < len(rest) {
			i++ // the newline ends the line
			c.midLine = false
		}
		out = append(out, rest[:i]...)
		rest = rest[i:]
	}
	if _, err := c.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Printf writes one line, tagged "init: ".
func (c *Console) Printf(format string, args ...any) {
	_, _ = fmt.Fprintf(c, "init: "+format+"\n", args...)
}

// openTerminals opens, under devRoot, every console the kernel prints its
// own messages on (sysRoot/class/tty/console/active: "ttyAMA10 tty1" for
// console=serial0,115200 console=tty1). /dev/console reaches only one of
// them, and the technician may be at the serial cable or at the screen.
func openTerminals(sysRoot, devRoot string) []io.Writer {
	b, err := os.ReadFile(filepath.Join(sysRoot, "class/tty/console/active"))
	if err != nil {
		return nil
	}
	var ws []io.Writer
	for _, name := range strings.Fields(string(b)) {
		if !filepath.IsLocal(name) {
			continue
		}
		if f, err := os.OpenFile(filepath.Join(devRoot, name), os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			ws = append(ws, f)
		}
	}
	return ws
}

// tee writes to every terminal and succeeds when one took the line: a
// serial adapter that went away must not silence the screen.
type tee []io.Writer

func (t tee) Write(p []byte) (int, error) {
	var errs []error
	for _, w := range t {
		if _, err := w.Write(p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == len(t) {
		return 0, errors.Join(errs...)
	}
	return len(p), nil
}
