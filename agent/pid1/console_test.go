package pid1

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestConsolePrefixesEveryLine(t *testing.T) {
	var out bytes.Buffer
	now := 1500 * time.Millisecond
	c := NewConsole(&out, func() time.Duration { return now })
	c.Printf("mounted /proc /sys")
	fmt.Fprint(c, "factory: two\nlines in one write\n")
	now = 12*time.Second + 345678*time.Microsecond
	fmt.Fprint(c, "a line ")
	fmt.Fprint(c, "in pieces")
	fmt.Fprint(c, "\n\n")
	want := "[    1.500000] init: mounted /proc /sys\n" +
		"[    1.500000] factory: two\n" +
		"[    1.500000] lines in one write\n" +
		"[   12.345678] a line in pieces\n" +
		"[   12.345678] \n"
	if out.String() != want {
		t.Errorf("console got\n%s\nwant\n%s", out.String(), want)
	}
}

func TestConsoleKeepsWholeLinesOfConcurrentWriters(t *testing.T) {
	var out bytes.Buffer
	c := NewConsole(&out, func() time.Duration { return 0 })
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				fmt.Fprintf(c, "writer %d line %d\n", g, i)
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for _, l := range lines {
		var g, i int
		if _, err := fmt.Sscanf(l, "[    0.000000] writer %d line %d", &g, &i); err != nil {
			t.Fatalf("line %q is not one whole prefixed line: %v", l, err)
		}
	}
}
