package bench

// Memory per idle mTLS agent connection. A control node runs in a
// child process so that the simulated robots — the real agent runtime,
// which costs about as much as the server side — stay out of its numbers;
// the child answers "measure" requests with the Go runtime's own figures
// taken after full collections, plus its RSS.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// ConnMemSample is one measurement of a control process.
type ConnMemSample struct {
	Connected  int    `json:"connected"`   // robot sessions in the gateway
	HeapBytes  uint64 `json:"heap_bytes"`  // live heap objects after GC
	StackBytes uint64 `json:"stack_bytes"` // goroutine stacks in use
	Goroutines uint64 `json:"goroutines"`
	RSS        uint64 `json:"rss"` // VmRSS, bytes
}

// GoBytes is memory the Go runtime holds for live data: heap objects and
// goroutine stacks. It excludes dqlite's C heap and runtime slack, so it is
// the stable figure; RSS is the honest one.
func (s ConnMemSample) GoBytes() uint64 { return s.HeapBytes + s.StackBytes }

// connMemReady is the child's first line: where control listens.
type connMemReady struct {
	Listen string `json:"listen"`
	PID    int    `json:"pid"`
}

// ConnMemChild runs a control node for a connection-memory measurement on
// loopback (mTLS, the lab CA in caDir) and serves its parent line by line
// until in ends. It first prints {"listen":..,"pid":..}; then, per request:
//
//	measure        one ConnMemSample as JSON, after three full GCs
//	count          a ConnMemSample with only Connected set, no GC
//	heap PATH      a heap profile (inuse_space after a GC) to PATH
//	goroutine PATH a goroutine profile (debug=1) to PATH
//
// The heartbeat interval is production's 30 s, so connected robots are idle.
func ConnMemChild(ctx context.Context, dir, caDir string, in io.Reader, out io.Writer) error {
	// Fine-grained heap profile samples; the buckets live outside the heap.
	runtime.MemProfileRate = 4096
	n, err := lab.StartControl(ctx, lab.ControlOptions{Dir: filepath.Join(dir, "control"), CADir: caDir,
		HeartbeatInterval: 30 * time.Second, OfflineGrace: 15 * time.Second})
	if err != nil {
		return fmt.Errorf("connmem child: start control: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = n.Close(cctx)
	}()
	enc := json.NewEncoder(out)
	if err := enc.Encode(connMemReady{Listen: n.Config().Listen, PID: os.Getpid()}); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if cmd == "" {
			continue
		}
		var err error
		switch cmd {
		case "measure":
			err = enc.Encode(measureSelf(n))
		case "count":
			err = enc.Encode(ConnMemSample{Connected: n.Gateway().Connected()})
		case "heap":
			runtime.GC()
			err = writeProfile("heap", arg, 0)
			if err == nil {
				err = enc.Encode(map[string]string{"heap": arg})
			}
		case "goroutine":
			err = writeProfile("goroutine", arg, 1)
			if err == nil {
				err = enc.Encode(map[string]string{"goroutine": arg})
			}
		default:
			err = enc.Encode(map[string]string{"error": fmt.Sprintf("unknown request %q", cmd)})
		}
		if err != nil {
			return fmt.Errorf("connmem child: %s: %w", cmd, err)
		}
	}
	return sc.Err()
}

func writeProfile(name, path string, debug int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, debug); err != nil {
		f.Close()
		return fmt.Errorf("write %s profile to %s: %w", name, path, err)
	}
	return f.Close()
}

// measureSelf collects three times — the runtime shrinks an oversized
// goroutine stack by half per collection — and returns free pages to the
// OS, so RSS counts what is held, then reads the runtime's figures.
func measureSelf(n *node.Node) ConnMemSample {
	for range 2 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	metrics.Read(samples)
	s := ConnMemSample{Connected: n.Gateway().Connected()}
	s.HeapBytes = samples[0].Value.Uint64()
	s.StackBytes = samples[1].Value.Uint64()
	s.Goroutines = samples[2].Value.Uint64()
	if m, err := lab.ReadProcMemory(os.Getpid()); err == nil {
		s.RSS = m.RSS
	}
	return s
}

// ConnMemOptions configure RunConnMem.
type ConnMemOptions struct {
	Robots int
	// Child is the command that runs ConnMemChild (a test binary re-executing
	// itself, or a tool's hidden subcommand). RunConnMem adds to its
	// environment LEKIWI_CONNMEM_DIR and LEKIWI_CONNMEM_CA.
	Child *exec.Cmd
	Dir   string // scratch space (required)
	// Settle is the wait between the last robot connecting and the
	// measurement, for hellos, first telemetry and acks to finish (default 3 s).
	Settle time.Duration
	// HeapProfile, if set, is where the loaded child writes a heap profile.
	HeapProfile string
	// GoroutineProfile, likewise.
	GoroutineProfile string
	Out              io.Writer // progress; nil discards
}

// Environment of the child started by RunConnMem.
const (
	EnvConnMemDir = "LEKIWI_CONNMEM_DIR"
	EnvConnMemCA  = "LEKIWI_CONNMEM_CA"
)

// ConnMemResult is the outcome of RunConnMem.
type ConnMemResult struct {
	Robots       int
	ConnectAfter time.Duration
	// Base is before any robot, Loaded with every robot connected and
	// idle, After once they have all disconnected again: what After keeps
	// over Base belongs to the robots (their rows in dqlite), not to their
	// connections.
	Base, Loaded, After ConnMemSample
}

// GoBytesPerConn is the Go heap and stacks each connection holds.
func (r ConnMemResult) GoBytesPerConn() float64 {
	return (float64(r.Loaded.GoBytes()) - float64(r.Base.GoBytes())) / float64(r.Robots)
}

// HeapBytesPerConn is the live heap each connection holds.
func (r ConnMemResult) HeapBytesPerConn() float64 {
	return (float64(r.Loaded.HeapBytes) - float64(r.Base.HeapBytes)) / float64(r.Robots)
}

// StackBytesPerConn is the goroutine stack each connection holds.
func (r ConnMemResult) StackBytesPerConn() float64 {
	return (float64(r.Loaded.StackBytes) - float64(r.Base.StackBytes)) / float64(r.Robots)
}

// RSSPerConn is control's resident memory per connection, dqlite's rows
// for the robots included.
func (r ConnMemResult) RSSPerConn() float64 {
	return (float64(r.Loaded.RSS) - float64(r.Base.RSS)) / float64(r.Robots)
}

// RSSPerConnOnly is the RSS a connection holds beyond what its robot's
// rows keep after it is gone (zero when After was not measured).
func (r ConnMemResult) RSSPerConnOnly() float64 {
	if r.After.RSS == 0 {
		return 0
	}
	return (float64(r.Loaded.RSS) - float64(r.After.RSS)) / float64(r.Robots)
}

// GoroutinesPerConn counts goroutines per connection.
func (r ConnMemResult) GoroutinesPerConn() float64 {
	return (float64(r.Loaded.Goroutines) - float64(r.Base.Goroutines)) / float64(r.Robots)
}

// Table renders the result as Markdown rows.
func (r ConnMemResult) Table() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	b.WriteString("| metric | value |\n|---|---|\n")
	row("idle mTLS robots (simulated, real agent runtime)", fmt.Sprint(r.Robots))
	row("all connected after", r.ConnectAfter.Round(time.Millisecond).String())
	row("Go heap + stacks per connection", fmt.Sprintf("%.1f KiB", r.GoBytesPerConn()/1024))
	row("  of which heap / stacks", fmt.Sprintf("%.1f / %.1f KiB", r.HeapBytesPerConn()/1024, r.StackBytesPerConn()/1024))
	row("goroutines per connection", fmt.Sprintf("%.2f", r.GoroutinesPerConn()))
	row("control RSS per connection", fmt.Sprintf("%.1f KiB", r.RSSPerConn()/1024))
	row("control RSS per connection, robots' retained rows excluded", fmt.Sprintf("%.1f KiB", r.RSSPerConnOnly()/1024))
	row("control RSS idle → loaded → all disconnected", fmt.Sprintf("%s → %s → %s", lab.MiB(r.Base.RSS), lab.MiB(r.Loaded.RSS), lab.MiB(r.After.RSS)))
	return b.String()
}

// connMemChild is the parent's handle on a running child.
type connMemChild struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
	done  chan error
}

func (c *connMemChild) request(line string, v any) error {
	if _, err := fmt.Fprintln(c.in, line); err != nil {
		return fmt.Errorf("connmem child: send %q: %w", line, err)
	}
	return c.answer(line, v)
}

// answer reads the child's next JSON line into v.
func (c *connMemChild) answer(line string, v any) error {
	for c.lines.Scan() {
		text := c.lines.Text()
		if !strings.HasPrefix(text, "{") {
			continue // test framework chatter
		}
		if err := json.Unmarshal([]byte(text), v); err != nil {
			return fmt.Errorf("connmem child: answer to %q: %w (%s)", line, err, text)
		}
		return nil
	}
	return fmt.Errorf("connmem child ended before answering %q: %v", line, c.lines.Err())
}

func (c *connMemChild) stop() error {
	c.in.Close()
	select {
	case err := <-c.done:
		return err
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		return fmt.Errorf("connmem child pid %d did not stop within 30 s of its input closing; killed", c.cmd.Process.Pid)
	}
}

// RunConnMem starts the control child, measures it empty, connects
// o.Robots idle robots with mTLS from this process, lets them settle and
// measures it again.
func RunConnMem(ctx context.Context, o ConnMemOptions) (ConnMemResult, error) {
	res := ConnMemResult{Robots: o.Robots}
	if o.Robots <= 0 || o.Child == nil || o.Dir == "" {
		return res, errors.New("connmem: robots > 0, a child command and a directory are required")
	}
	if o.Settle <= 0 {
		o.Settle = 3 * time.Second
	}
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	caDir := filepath.Join(o.Dir, "ca")
	ca, err := lab.LabCA(caDir)
	if err != nil {
		return res, err
	}
	child, err := startConnMemChild(o.Child, o.Dir, caDir)
	if err != nil {
		return res, err
	}
	defer child.stop()
	var ready connMemReady
	if err := child.answer("start", &ready); err != nil {
		return res, err
	}
	say("control child pid %d listening on %s", ready.PID, ready.Listen)
	time.Sleep(time.Second) // background loops start, first presence tick
	if err := child.request("measure", &res.Base); err != nil {
		return res, err
	}
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, Servers: []string{"https://" + ready.Listen}, Dir: filepath.Join(o.Dir, "fleet"), CA: ca,
		TelemetrySampleInterval: time.Minute, TelemetryMinInterval: 10 * time.Minute,
		FirstReconnectJitter: 200 * time.Millisecond,
	})
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := fleet.Start(ctx, 0); err != nil {
		return res, err
	}
	defer fleet.Stop()
	if _, err := waitConnected(ctx, fleet, o.Robots, 2*time.Minute); err != nil {
		return res, err
	}
	res.ConnectAfter = time.Since(start)
	say("%d robots connected after %s; settling %s", o.Robots, res.ConnectAfter.Round(time.Millisecond), o.Settle)
	select {
	case <-time.After(o.Settle):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	if err := child.request("measure", &res.Loaded); err != nil {
		return res, err
	}
	if res.Loaded.Connected != o.Robots {
		return res, fmt.Errorf("connmem: control holds %d sessions, want %d (robots reconnecting?)", res.Loaded.Connected, o.Robots)
	}
	if o.HeapProfile != "" {
		var ack map[string]string
		if err := child.request("heap "+o.HeapProfile, &ack); err != nil {
			return res, err
		}
	}
	if o.GoroutineProfile != "" {
		var ack map[string]string
		if err := child.request("goroutine "+o.GoroutineProfile, &ack); err != nil {
			return res, err
		}
	}
	if err := fleet.Stop(); err != nil {
		return res, fmt.Errorf("connmem: stop fleet: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var c ConnMemSample
		if err := child.request("count", &c); err != nil {
			return res, err
		}
		if c.Connected == 0 {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("connmem: control still holds %d sessions 30 s after every robot stopped", c.Connected)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // disconnections committed, presence flushed
	if err := child.request("measure", &res.After); err != nil {
		return res, err
	}
	return res, nil
}

func startConnMemChild(cmd *exec.Cmd, dir, caDir string) (*connMemChild, error) {
	cmd.Env = append(cmd.Environ(), EnvConnMemDir+"="+dir, EnvConnMemCA+"="+caDir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start connmem child %s: %w", cmd.Path, err)
	}
	c := &connMemChild{cmd: cmd, in: in, lines: bufio.NewScanner(stdout), done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	return c, nil
}
