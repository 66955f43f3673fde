package pid1

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
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

// TestConsoleReachesEveryKernelConsole: with console=serial0,115200
// console=tty1 the kernel prints on both, and so does the init.
func TestConsoleReachesEveryKernelConsole(t *testing.T) {
	root := t.TempDir()
	for path, body := range map[string]string{"sys/class/tty/console/active": "ttyAMA10 tty1\n", "dev/ttyAMA10": "", "dev/tty1": "", "dev/console": ""} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, path), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	openConsole(Options{Root: root}).Printf("mode factory")
	for _, term := range []string{"ttyAMA10", "tty1"} {
		b, err := os.ReadFile(filepath.Join(root, "dev", term))
		if err != nil || !strings.HasSuffix(string(b), "] init: mode factory\n") {
			t.Errorf("%s got %q (%v), want the line", term, b, err)
		}
	}
}

func TestTeeGoesOnWithoutOneTerminal(t *testing.T) {
	var screen bytes.Buffer
	gone := failingWriter{}
	if n, err := (tee{gone, &screen}).Write([]byte("line\n")); n != 5 || err != nil || screen.String() != "line\n" {
		t.Errorf("tee with one terminal gone = %d, %v; screen %q", n, err, screen.String())
	}
	if _, err := (tee{gone, gone}).Write([]byte("line\n")); err == nil {
		t.Error("tee with every terminal gone reported success")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }
