package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// Options configure Run.
type Options struct {
	Robots            int
	Duration          time.Duration // measurement window
	HeartbeatInterval time.Duration
	ControlBinary     string
	AgentBinary       string
	Dir               string // scratch space; default a temp dir, removed after
	Out               io.Writer
}

// Result holds the figures of one run.
type Result struct {
	Robots              int
	HeartbeatInterval   time.Duration
	Window              time.Duration
	OnlineAfter         time.Duration // fleet start to all robots connected
	HeartbeatsPerSecond float64       // control's counter over the window
	AckP50, AckP99      time.Duration // heartbeat send -> ack, seen by the robots
	AckMax              time.Duration
	AckSamples          int
	ControlRSSBase      uint64  // before any robot connected
	ControlRSSLoaded    uint64  // all robots connected, end of window
	ControlCPU          float64 // cores used over the window
	ControlHeapInuse    float64 // Go heap in use, loaded
	ControlStacks       float64 // goroutine stacks, loaded
	ControlGoroutines   float64
	SimulatorRSS        uint64
	SimulatorCPU        float64
	AgentRSS            uint64
	AgentHWM            uint64
	AgentCPU            float64 // fraction of one core
}

// PerConnection is control's memory per robot connection.
func (r Result) PerConnection() float64 {
	return float64(int64(r.ControlRSSLoaded)-int64(r.ControlRSSBase)) / float64(r.Robots)
}

// Run runs the benchmark described on Options.
func Run(ctx context.Context, o Options) (Result, error) {
	res := Result{Robots: o.Robots, HeartbeatInterval: o.HeartbeatInterval, Window: o.Duration}
	if o.Robots <= 0 || o.Duration <= 0 || o.HeartbeatInterval <= 0 {
		return res, errors.New("bench: robots, duration and heartbeat interval must be positive")
	}
	for _, b := range []string{o.ControlBinary, o.AgentBinary} {
		if _, err := os.Stat(b); err != nil {
			return res, fmt.Errorf("bench needs %s: %w (run `make build`)", b, err)
		}
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "lekiwi-bench-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }

	listen, dbAddr, err := lab.FreeNodeAddrs()
	if err != nil {
		return res, err
	}
	base := "https://" + listen
	caDir := filepath.Join(o.Dir, "ca")
	ca, err := lab.LabCA(caDir)
	if err != nil {
		return res, err
	}
	ctl := exec.CommandContext(ctx, o.ControlBinary, "run", "--discovery=false", "--ca-dir", caDir, "--data-dir", filepath.Join(o.Dir, "control"),
		"--listen", listen, "--db-address", dbAddr, "--heartbeat-interval", o.HeartbeatInterval.String(),
		"--offline-grace", o.HeartbeatInterval.String(), "--log-level", "warn")
	ctl.Stderr = os.Stderr
	if err := ctl.Start(); err != nil {
		return res, fmt.Errorf("start control: %w", err)
	}
	defer func() {
		_ = ctl.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = ctl.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = ctl.Process.Kill()
		}
	}()
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}}}
	if err := lab.WaitReady(ctx, httpc, base, 60*time.Second); err != nil {
		return res, err
	}
	token, err := lab.AdminToken(ctx, o.ControlBinary, filepath.Join(o.Dir, "control"))
	if err != nil {
		return res, err
	}
	scrape := func(series string) (float64, error) { return scrapeCounter(httpc, base, token, series) }
	time.Sleep(time.Second)
	if m, err := lab.ReadProcMemory(ctl.Process.Pid); err == nil {
		res.ControlRSSBase = m.RSS
	}
	say("control pid %d up at %s (RSS %s); starting %d robots", ctl.Process.Pid, base, lab.MiB(res.ControlRSSBase), o.Robots)

	var measuring atomic.Bool
	var mu sync.Mutex
	var lat []time.Duration
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, Servers: []string{base}, Dir: filepath.Join(o.Dir, "fleet"), CA: ca,
		TelemetrySampleInterval: 5 * time.Second, TelemetryMinInterval: 30 * time.Second,
		FirstReconnectJitter: time.Second,
		OnAck: func(_ *robotsim.Robot, _ uint64, t protocol.Type, d time.Duration) {
			if t == protocol.TypeHeartbeat && measuring.Load() {
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := fleet.Start(ctx, 0); err != nil {
		return res, err
	}
	defer fleet.Stop()
	for fleet.Connected() < o.Robots {
		if time.Since(start) > 2*time.Minute {
			return res, fmt.Errorf("only %d of %d robots connected after 2 minutes", fleet.Connected(), o.Robots)
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.OnlineAfter = time.Since(start)
	say("%d robots connected after %s", o.Robots, res.OnlineAfter.Round(time.Millisecond))

	agent, agentDone, err := startAgentProcess(ctx, o, base, ca)
	if err != nil {
		return res, err
	}
	defer func() {
		_ = agent.Process.Signal(os.Interrupt)
		<-agentDone
	}()
	time.Sleep(3 * time.Second) // settle: telemetry bursts, first heartbeats

	hb0, err := scrape(`lekiwi_control_messages_total{type="heartbeat"}`)
	if err != nil {
		return res, err
	}
	ctlCPU0, _ := lab.ReadProcCPU(ctl.Process.Pid)
	simCPU0, _ := lab.ReadProcCPU(os.Getpid())
	agentCPU0, _ := lab.ReadProcCPU(agent.Process.Pid)
	measuring.Store(true)
	t0 := time.Now()
	say("measuring for %s", o.Duration)
	select {
	case <-time.After(o.Duration):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	measuring.Store(false)
	elapsed := time.Since(t0)
	hb1, err := scrape(`lekiwi_control_messages_total{type="heartbeat"}`)
	if err != nil {
		return res, err
	}
	ctlCPU1, _ := lab.ReadProcCPU(ctl.Process.Pid)
	simCPU1, _ := lab.ReadProcCPU(os.Getpid())
	agentCPU1, _ := lab.ReadProcCPU(agent.Process.Pid)
	res.HeartbeatsPerSecond = (hb1 - hb0) / elapsed.Seconds()
	res.ControlCPU = (ctlCPU1 - ctlCPU0).Seconds() / elapsed.Seconds()
	res.SimulatorCPU = (simCPU1 - simCPU0).Seconds() / elapsed.Seconds()
	res.AgentCPU = (agentCPU1 - agentCPU0).Seconds() / elapsed.Seconds()
	if m, err := lab.ReadProcMemory(ctl.Process.Pid); err == nil {
		res.ControlRSSLoaded = m.RSS
	}
	res.ControlHeapInuse, _ = scrape("go_memstats_heap_inuse_bytes")
	res.ControlStacks, _ = scrape("go_memstats_stack_inuse_bytes")
	res.ControlGoroutines, _ = scrape("go_goroutines")
	if m, err := lab.ReadProcMemory(os.Getpid()); err == nil {
		res.SimulatorRSS = m.RSS
	}
	if m, err := lab.ReadProcMemory(agent.Process.Pid); err == nil {
		res.AgentRSS, res.AgentHWM = m.RSS, m.HWM
	}
	mu.Lock()
	res.AckSamples = len(lat)
	res.AckP50, res.AckP99, res.AckMax = lab.Percentile(lat, 50), lab.Percentile(lat, 99), lab.Percentile(lat, 100)
	mu.Unlock()
	if res.AckSamples == 0 {
		return res, errors.New("no heartbeat was acknowledged during the window")
	}
	return res, nil
}

// startAgentProcess runs the real agent binary against control with a
// fixture board, like one robot in the field.
func startAgentProcess(ctx context.Context, o Options, server string, ca *pki.CA) (*exec.Cmd, chan struct{}, error) {
	dir := filepath.Join(o.Dir, "agent")
	roots, err := lab.Pi5(999_999, "bench-agent").WriteTree(filepath.Join(dir, "board"))
	if err != nil {
		return nil, nil, err
	}
	// As if enrolled: the daemon finds its identity in the state dir.
	if _, err := robotsim.NewIdentity(ca, "bench-agent", 0, filepath.Join(dir, "state", "identity")); err != nil {
		return nil, nil, err
	}
	cfg := fmt.Sprintf("robot_id: bench-agent\nrobot_type: lekiwi\nservers: [%q]\nstate_dir: %q\nlog_level: warn\nmdns_enabled: false\nservices_enabled: false\nroots:\n  proc: %q\n  sys: %q\n  etc: %q\n",
		server, filepath.Join(dir, "state"), roots.Proc, roots.Sys, roots.Etc)
	path := filepath.Join(dir, "agent.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, o.AgentBinary, "run", "--config", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start agent %s: %w", o.AgentBinary, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return cmd, done, nil
}

// scrapeCounter reads one sample from a Prometheus text endpoint.
func scrapeCounter(c *http.Client, base, token, series string) (float64, error) {
	req, err := http.NewRequest("GET", base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, series+" ") {
			return strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
		}
	}
	return 0, fmt.Errorf("series %s not found at %s/metrics", series, base)
}

// Table renders the result as Markdown.
func (r Result) Table() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	b.WriteString("| metric | value |\n|---|---|\n")
	row("robots (simulated, real agent runtime)", strconv.Itoa(r.Robots))
	row("heartbeat interval told to robots", r.HeartbeatInterval.String())
	row("all robots connected after", r.OnlineAfter.Round(time.Millisecond).String())
	row("measurement window", r.Window.String())
	row("heartbeats ingested per second", fmt.Sprintf("%.0f", r.HeartbeatsPerSecond))
	row("heartbeat ack latency p50 / p99 / max", fmt.Sprintf("%s / %s / %s (%d samples)", r.AckP50.Round(time.Microsecond), r.AckP99.Round(time.Microsecond), r.AckMax.Round(time.Microsecond), r.AckSamples))
	row("control RSS idle → loaded", fmt.Sprintf("%s → %s", lab.MiB(r.ControlRSSBase), lab.MiB(r.ControlRSSLoaded)))
	row("control RSS per connection", fmt.Sprintf("%.1f KiB", r.PerConnection()/1024))
	row("control Go heap in use / goroutine stacks, loaded", fmt.Sprintf("%s / %s", lab.MiB(uint64(r.ControlHeapInuse)), lab.MiB(uint64(r.ControlStacks))))
	row("control goroutines per connection", fmt.Sprintf("%.2f", r.ControlGoroutines/float64(r.Robots)))
	row("control CPU (cores)", fmt.Sprintf("%.3f", r.ControlCPU))
	row("simulator RSS / CPU (cores)", fmt.Sprintf("%s / %.3f", lab.MiB(r.SimulatorRSS), r.SimulatorCPU))
	row("agent process RSS (peak)", fmt.Sprintf("%s (%s)", lab.MiB(r.AgentRSS), lab.MiB(r.AgentHWM)))
	row("agent process CPU", fmt.Sprintf("%.3f%% of one core", 100*r.AgentCPU))
	return b.String()
}
