package bench

// Regression guard for control's memory per idle mTLS robot connection.
// Memory, not time: the figures come from the Go
// runtime after full collections, which are stable from run to run.
//
//	go test -tags libsqlite3 -run '^TestConnMemPerConnection$' -v ./testbench/bench
//	go test -tags libsqlite3 -run '^TestConnMemPerConnection$' -v ./testbench/bench -args -connmem.robots=5000 -connmem.profile=/tmp/connmem

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

var (
	connMemRobots  = flag.Int("connmem.robots", 1000, "idle mTLS robots in TestConnMemPerConnection")
	connMemProfile = flag.String("connmem.profile", "", "directory for the control child's heap and goroutine profiles (TestConnMemPerConnection)")
)

// Baselines recorded on the machine of docs/BENCHMARKS.md (2 vCPU Xeon,
// Go 1.26.8) with 1,000 robots, 2026-11-27; the guard fails at twice these.
// Before the gateway kept less per idle connection, the same run gave 51 KiB of Go heap and
// stacks, 93 KiB of RSS and 2.0 goroutines per connection.
const (
	// connMemGoBaseline is Go heap + goroutine stacks per connection
	// (measured 18.9 KiB: 16.3 heap, 2.6 stacks).
	connMemGoBaseline = 19 << 10
	// connMemRSSBaseline is control RSS per connection, dqlite's rows for
	// the robots included (measured 62.8–71.3 KiB; 14–21 KiB without them).
	connMemRSSBaseline = 64 << 10
	// connMemGoroutinesBaseline is goroutines per idle connection.
	connMemGoroutinesBaseline = 1.0
)

// TestConnMemChild is the control process of TestConnMemPerConnection: the
// test binary re-executes itself with EnvConnMemDir set.
func TestConnMemChild(t *testing.T) {
	dir := os.Getenv(EnvConnMemDir)
	if dir == "" {
		t.Skip("helper process of TestConnMemPerConnection (runs only when re-executed with " + EnvConnMemDir + ")")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ConnMemChild(ctx, dir, os.Getenv(EnvConnMemCA), os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

func TestConnMemPerConnection(t *testing.T) {
	if os.Getenv(EnvConnMemDir) != "" {
		t.Skip("inside the control child")
	}
	robots := *connMemRobots
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(3*robots+200) {
		t.Skipf("needs %d open files per process for %d robots (the simulator holds a socket and a queue file per robot); limit is %d", 3*robots+200, robots, lim.Cur)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	o := ConnMemOptions{
		Robots: robots, Dir: dir, Out: testWriter{t},
		Child: exec.CommandContext(ctx, os.Args[0], "-test.run=^TestConnMemChild$", "-test.count=1"),
	}
	if *connMemProfile != "" {
		if err := os.MkdirAll(*connMemProfile, 0o755); err != nil {
			t.Fatal(err)
		}
		o.HeapProfile = filepath.Join(*connMemProfile, "heap.pprof")
		o.GoroutineProfile = filepath.Join(*connMemProfile, "goroutine.txt")
	}
	res, err := RunConnMem(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res.Table())
	if got, limit := res.GoBytesPerConn(), 2.0*connMemGoBaseline; got > limit {
		t.Errorf("control holds %.1f KiB of Go heap and stacks per idle mTLS connection, over twice the recorded %.1f KiB: profile with -args -connmem.profile=DIR (go tool pprof -sample_index=inuse_space DIR/heap.pprof)", got/1024, float64(connMemGoBaseline)/1024)
	}
	if got, limit := res.RSSPerConn(), 2.0*connMemRSSBaseline; got > limit {
		t.Errorf("control RSS grew by %.1f KiB per idle mTLS connection, over twice the recorded %.1f KiB", got/1024, float64(connMemRSSBaseline)/1024)
	}
	if got, limit := res.GoroutinesPerConn(), 2*connMemGoroutinesBaseline; got > limit {
		t.Errorf("control runs %.2f goroutines per idle connection, over twice the recorded %.2f", got, connMemGoroutinesBaseline)
	}
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
