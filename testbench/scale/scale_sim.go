package scale

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// The scale scenarios run their load in child processes: simulated robots
// (RunWorker) and dashboard subscribers (RunSubscribers). Each process
// stays under the per-process open-file limit, and its CPU and memory are
// measured on its own, apart from control's. A child reports a status line
// of JSON on stdout every second with cumulative counters; the parent
// subtracts two snapshots to get a window. A child exits when its stdin
// closes (the parent is gone) or on SIGTERM/SIGINT.

// WorkerOptions describe one simulator process.
type WorkerOptions struct {
	FirstIndex, Robots int
	Servers            []string
	CADir              string // fleet CA (the robots' certificates are signed with it)
	Dir                string // robots' state and fixtures
	LocalAddr          netip.Addr
	// ConnectRate bounds robot starts per second (0: all at once).
	ConnectRate float64
	// ReconnectJitter is the robots' first-reconnect jitter (production: 10 s).
	ReconnectJitter time.Duration
	// ProfileDir, when set, gets cpu.pprof (the whole run) and heap.pprof
	// (at exit): the simulator's own costs, apart from control's.
	ProfileDir string
	Status     io.Writer
}

// WorkerStatus is a simulator process's status line.
type WorkerStatus struct {
	Robots    int         `json:"robots"`
	Started   int         `json:"started"`
	Connected int         `json:"connected"`
	Heartbeat LatencyHist `json:"heartbeat_ack"` // cumulative
	At        time.Time   `json:"at"`            // when the counts were taken
	Err       string      `json:"error,omitempty"`
}

// RunWorker runs one simulator process's fleet until ctx ends.
func RunWorker(ctx context.Context, o WorkerOptions) error {
	ca, err := lab.LabCA(o.CADir)
	if err != nil {
		return fmt.Errorf("scale worker: load fleet CA from %s: %w", o.CADir, err)
	}
	if o.ProfileDir != "" {
		stop, err := profileRun(o.ProfileDir)
		if err != nil {
			return fmt.Errorf("scale worker: %w", err)
		}
		defer stop()
	}
	var mu sync.Mutex
	var hist LatencyHist
	jitter := o.ReconnectJitter
	if jitter == 0 {
		jitter = -1 // FleetOptions: 0 means the lab default, negative none
	}
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, FirstIndex: o.FirstIndex, Servers: o.Servers, Dir: o.Dir, CA: ca, LocalAddr: o.LocalAddr,
		// Heartbeats are the load under study; telemetry is kept to what a
		// quiet fleet sends (sampled every 10 s, reported at most every
		// minute). One board is sampled for the whole process and the
		// robots' identities stay in memory: the simulator's files and
		// their kernel caches would otherwise take gigabytes at 50,000.
		TelemetrySampleInterval: 10 * time.Second, TelemetryMinInterval: time.Minute, SharedBoard: true, MemoryIdentity: true,
		FirstReconnectJitter: jitter, Backoff: backoff.Policy{Base: 250 * time.Millisecond, Cap: 5 * time.Second},
		OnAck: func(_ *robotsim.Robot, _ uint64, t protocol.Type, d time.Duration) {
			if t == protocol.TypeHeartbeat {
				mu.Lock()
				hist.Add(d)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("scale worker: prepare %d robots: %w", o.Robots, err)
	}
	enc := json.NewEncoder(o.Status)
	// The first line says the robots are prepared (fixtures, certificates):
	// connection times count from here.
	if err := enc.Encode(WorkerStatus{Robots: o.Robots}); err != nil {
		return fmt.Errorf("scale worker: report status: %w", err)
	}
	var started atomic.Int64
	startDone := make(chan error, 1)
	go func() {
		robots := fleet.Robots()
		var every time.Duration
		if o.ConnectRate > 0 {
			every = time.Duration(float64(time.Second) / o.ConnectRate)
		}
		t0 := time.Now()
		for i, r := range robots {
			if err := r.Start(ctx); err != nil {
				startDone <- err
				return
			}
			started.Add(1)
			// Paced by the clock, so a slow start is not added to the gap.
			if wait := time.Until(t0.Add(every * time.Duration(i+1))); wait > 0 {
				select {
				case <-ctx.Done():
					startDone <- nil
					return
				case <-time.After(wait):
				}
			}
		}
		startDone <- nil
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var startErr error
	for {
		select {
		case startErr = <-startDone:
			startDone = nil
		case <-tick.C:
		case <-ctx.Done():
			stopErr := fleet.Stop()
			if errors.Is(stopErr, context.Canceled) {
				stopErr = nil
			}
			return errors.Join(startErr, stopErr)
		}
		st := WorkerStatus{Robots: o.Robots, Started: int(started.Load()), Connected: fleet.Connected(), At: time.Now()}
		mu.Lock()
		st.Heartbeat = LatencyHist{Counts: append([]uint64(nil), hist.Counts...), Max: hist.Max}
		mu.Unlock()
		if startErr != nil {
			st.Err = startErr.Error()
		}
		if err := enc.Encode(st); err != nil {
			fleet.Stop()
			return fmt.Errorf("scale worker: report status: %w", err)
		}
	}
}

// SubscribersOptions describe a dashboard-subscriber process.
type SubscribersOptions struct {
	URL   string // wss://host:port/v1/stream
	Token string
	CADir string
	N     int
	// Subscribe is the subscription frame every subscriber sends.
	Subscribe string
	Status    io.Writer
}

// SubscribersStatus is a subscriber process's status line.
type SubscribersStatus struct {
	Connected int         `json:"connected"`
	Frames    uint64      `json:"frames"`
	Latency   LatencyHist `json:"latency"` // message time -> decoded here
	Errors    int         `json:"errors"`
	LastError string      `json:"last_error,omitempty"`
}

// RunSubscribers keeps o.N subscribers on /v1/stream until ctx ends.
func RunSubscribers(ctx context.Context, o SubscribersOptions) error {
	ca, err := lab.LabCA(o.CADir)
	if err != nil {
		return fmt.Errorf("subscribers: load fleet CA from %s: %w", o.CADir, err)
	}
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}}}
	var (
		mu        sync.Mutex
		st        SubscribersStatus
		connected atomic.Int64
		wg        sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		st.Errors++
		st.LastError = err.Error()
		mu.Unlock()
	}
	for range o.N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := http.Header{"Authorization": {"Bearer " + o.Token}}
			c, _, err := websocket.Dial(ctx, o.URL, &websocket.DialOptions{HTTPClient: httpc, HTTPHeader: h})
			if err != nil {
				if ctx.Err() == nil {
					fail(fmt.Errorf("dial %s: %w", o.URL, err))
				}
				return
			}
			defer c.CloseNow()
			c.SetReadLimit(1 << 20)
			if err := c.Write(ctx, websocket.MessageText, []byte(o.Subscribe)); err != nil {
				fail(fmt.Errorf("subscribe: %w", err))
				return
			}
			connected.Add(1)
			defer connected.Add(-1)
			var f struct {
				Type string    `json:"type"`
				Time time.Time `json:"time"`
			}
			for {
				_, b, err := c.Read(ctx)
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("read: %w", err))
					}
					return
				}
				now := time.Now()
				f.Type = ""
				if json.Unmarshal(b, &f) != nil || (f.Type != "message" && f.Type != "aggregate") {
					continue
				}
				mu.Lock()
				st.Frames++
				if !f.Time.IsZero() {
					st.Latency.Add(now.Sub(f.Time))
				}
				mu.Unlock()
			}
		}()
	}
	enc := json.NewEncoder(o.Status)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-tick.C:
		}
		mu.Lock()
		out := st
		out.Latency = LatencyHist{Counts: append([]uint64(nil), st.Latency.Counts...), Max: st.Latency.Max}
		mu.Unlock()
		out.Connected = int(connected.Load())
		if err := enc.Encode(out); err != nil {
			return fmt.Errorf("subscribers: report status: %w", err)
		}
	}
}

// childProc is a scale child process (simulator or subscribers) whose
// latest status line is kept.
type childProc struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	done chan struct{}

	mu   sync.Mutex
	last []byte
}

// startChild runs bin args with stdout parsed as status lines and stderr
// appended to logPath. The child gets SIGKILL if this process dies.
func startChild(name, bin, logPath string, args ...string) (*childProc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &childProc{name: name, cmd: cmd, in: in, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.last = append(p.last[:0], sc.Bytes()...)
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// status decodes the latest status line into v; false if none yet.
func (p *childProc) status(v any) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.last) > 0 && json.Unmarshal(p.last, v) == nil
}

func (p *childProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *childProc) pid() int { return p.cmd.Process.Pid }

// stop asks the child to end (stdin closed, SIGTERM) and kills it after
// timeout.
func (p *childProc) stop(timeout time.Duration) {
	_ = p.in.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// workerArgs is the command line of a simulator child (see cmd/scalebench).
func workerArgs(o WorkerOptions) []string {
	args := []string{"sim", "--first-index", strconv.Itoa(o.FirstIndex), "--robots", strconv.Itoa(o.Robots),
		"--ca-dir", o.CADir, "--dir", o.Dir, "--connect-rate", strconv.FormatFloat(o.ConnectRate, 'f', -1, 64),
		"--reconnect-jitter", o.ReconnectJitter.String()}
	if o.LocalAddr.IsValid() {
		args = append(args, "--local-addr", o.LocalAddr.String())
	}
	if o.ProfileDir != "" {
		args = append(args, "--profile-dir", o.ProfileDir)
	}
	for _, s := range o.Servers {
		args = append(args, "--server", s)
	}
	return args
}

// WatchStdin cancels when stdin reaches EOF: a child whose parent is gone
// stops by itself.
func WatchStdin(cancel context.CancelFunc) {
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
}

// profileRun starts a CPU profile into dir/cpu.pprof; the returned stop
// ends it and writes dir/heap.pprof.
func profileRun(dir string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile directory: %w", err)
	}
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		cpu.Close()
		return nil, fmt.Errorf("start CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		if heap, err := os.Create(filepath.Join(dir, "heap.pprof")); err == nil {
			_ = pprof.Lookup("heap").WriteTo(heap, 0)
			heap.Close()
		}
	}, nil
}
