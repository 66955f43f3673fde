package progress

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestLinesRateLimitedPerTargetWithPhaseSpeed(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	var out bytes.Buffer
	l := NewLines(&out, 2*time.Second, c.now)
	l.Update("a.img", "write", 0, 100<<20) // first line: phase change
	c.t = c.t.Add(time.Second)
	l.Update("a.img", "write", 10<<20, 100<<20) // within the interval: silent
	c.t = c.t.Add(time.Second)
	l.Update("a.img", "write", 20<<20, 100<<20) // 2 s: a line, 10 MiB/s, 8 s left
	l.Update("b.img", "write", 0, 100<<20)      // another target has its own clock
	c.t = c.t.Add(time.Second)
	l.Update("a.img", "verify", 0, 50<<20) // phase change: a line, speed restarts
	c.t = c.t.Add(time.Second)
	l.Update("a.img", "verify", 25<<20, 50<<20)
	l.Finish("a.img", nil)
	l.Finish("b.img", errors.New("write bytes 0–4095: no space left on device"))
	l.Close()
	want := []string{
		"a.img: write   0 B/100.0 MiB  0 B/s  ETA --",
		"a.img: write   20.0 MiB/100.0 MiB  10.0 MiB/s  ETA 8s",
		"b.img: write   0 B/100.0 MiB  0 B/s  ETA --",
		"a.img: verify  0 B/50.0 MiB  0 B/s  ETA --",
		"a.img: done",
		"b.img: FAILED in write: write bytes 0–4095: no space left on device",
	}
	got := strings.Split(strings.TrimSpace(out.String()), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSize(t *testing.T) {
	for _, c := range []struct {
		in   int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {3 << 29, "1.5 GiB"}, {4 << 40, "4.0 TiB"}} {
		if got := size(c.in); got != c.want {
			t.Errorf("size(%d) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Bars from many goroutines at once, one failing, one never finished: Close
// returns (no deadlock between the renderer and updates) and the last frame
// names every target.
func TestBarsConcurrentTargets(t *testing.T) {
	var out syncBuffer
	b := NewBars(&out, 60)
	var wg sync.WaitGroup
	for i, name := range []string{"card1", "card2", "card3", "card4"} {
		wg.Go(func() {
			for done := int64(0); done <= 64<<20; done += 1 << 20 {
				b.Update(name, "write", done, 64<<20)
				if done%(8<<20) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			switch i {
			case 1:
				b.Finish(name, errors.New("verify failed"))
			case 3: // never finished: Close must not hang
			default:
				b.Finish(name, nil)
			}
		})
	}
	wg.Wait()
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
	s := out.String()
	for _, want := range []string{"card1", "card2", "card3", "card4", "FAILED in write", "done"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
