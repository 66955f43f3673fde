package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// ReconnectOptions configure RunReconnect.
type ReconnectOptions struct {
	Robots        int
	ControlBinary string
	// NoResumption makes robots forget TLS sessions (full handshakes only),
	// for comparison.
	NoResumption bool
	Dir          string
	Out          io.Writer
}

// ReconnectResult holds the figures of one reconnect storm.
type ReconnectResult struct {
	Robots         int
	NoResumption   bool
	FirstConnect   time.Duration // cold start: every handshake full
	Reconnect      time.Duration // after a control restart: node ready → all connected
	ControlCPUSecs float64       // control CPU seconds from ready to all connected
	ControlCores   float64       // the same over the window's length
	Resumed, Full  float64       // client-certificate handshakes after the restart
	PeakControlRSS uint64
}

// controlProc is a control node run as a child process.
type controlProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startControlProc(ctx context.Context, bin string, args ...string) (*controlProc, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &controlProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *controlProc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	start := time.Now()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		fmt.Fprintf(os.Stderr, "control pid %d did not stop within 60 s of SIGINT; killing it\n", p.cmd.Process.Pid)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	fmt.Fprintf(os.Stderr, "control pid %d stopped %s after SIGINT\n", p.cmd.Process.Pid, time.Since(start).Round(time.Millisecond))
}

// RunReconnect connects a fleet with mTLS, restarts the control node
// under it and measures how long the whole fleet takes to come back, and
// what it costs the node.
func RunReconnect(ctx context.Context, o ReconnectOptions) (ReconnectResult, error) {
	res := ReconnectResult{Robots: o.Robots, NoResumption: o.NoResumption}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "lekiwi-reconnect-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }
	caDir := filepath.Join(o.Dir, "ca")
	ca, err := lab.LabCA(caDir)
	if err != nil {
		return res, err
	}
	listen, dbAddr, err := lab.FreeNodeAddrs()
	if err != nil {
		return res, err
	}
	base := "https://" + listen
	dataDir := filepath.Join(o.Dir, "control")
	args := []string{"run", "--discovery=false", "--ca-dir", caDir, "--data-dir", dataDir, "--listen", listen, "--db-address", dbAddr, "--log-level", "warn"}
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}}}

	ctl, err := startControlProc(ctx, o.ControlBinary, args...)
	if err != nil {
		return res, err
	}
	if err := lab.WaitReady(ctx, httpc, base, time.Minute); err != nil {
		ctl.stop()
		return res, err
	}
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, Servers: []string{base}, Dir: filepath.Join(o.Dir, "fleet"), CA: ca,
		TelemetrySampleInterval: 30 * time.Second, TelemetryMinInterval: time.Minute,
		// Everyone comes back at once: no first-reconnect jitter, short
		// backoff — the worst case the jitter exists to soften.
		FirstReconnectJitter: -1, Backoff: backoff.Policy{Base: 250 * time.Millisecond, Cap: 2 * time.Second},
		NoResumption: o.NoResumption,
	})
	if err != nil {
		ctl.stop()
		return res, err
	}
	defer fleet.Stop()
	start := time.Now()
	if err := fleet.Start(ctx, 0); err != nil {
		ctl.stop()
		return res, err
	}
	if res.FirstConnect, err = waitConnected(ctx, fleet, o.Robots, 5*time.Minute); err != nil {
		ctl.stop()
		return res, err
	}
	res.FirstConnect = time.Since(start)
	say("%d robots connected (cold, full handshakes) in %s; restarting control", o.Robots, res.FirstConnect.Round(time.Millisecond))

	ctl.stop()
	ctl, err = startControlProc(ctx, o.ControlBinary, args...)
	if err != nil {
		return res, err
	}
	defer ctl.stop()
	if err := lab.WaitReady(ctx, httpc, base, time.Minute); err != nil {
		return res, err
	}
	ready := time.Now()
	cpu0, _ := lab.ReadProcCPU(ctl.cmd.Process.Pid)
	if _, err := waitConnected(ctx, fleet, o.Robots, 5*time.Minute); err != nil {
		return res, err
	}
	res.Reconnect = time.Since(ready)
	cpu1, _ := lab.ReadProcCPU(ctl.cmd.Process.Pid)
	res.ControlCPUSecs = (cpu1 - cpu0).Seconds()
	res.ControlCores = res.ControlCPUSecs / res.Reconnect.Seconds()
	if m, err := lab.ReadProcMemory(ctl.cmd.Process.Pid); err == nil {
		res.PeakControlRSS = m.HWM
	}
	token, err := lab.AdminToken(ctx, o.ControlBinary, dataDir)
	if err != nil {
		return res, err
	}
	res.Resumed, _ = scrapeCounter(httpc, base, token, `lekiwi_control_tls_client_handshakes_total{resumed="true"}`)
	res.Full, _ = scrapeCounter(httpc, base, token, `lekiwi_control_tls_client_handshakes_total{resumed="false"}`)
	say("all %d robots back %s after the restarted node was ready", o.Robots, res.Reconnect.Round(time.Millisecond))
	return res, nil
}

func waitConnected(ctx context.Context, f *robotsim.Fleet, n int, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for f.Connected() < n {
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("only %d of %d robots connected after %s", f.Connected(), n, timeout)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), nil
}

// Table renders the result as Markdown rows.
func (r ReconnectResult) Table() string {
	var b strings.Builder
	mode := "on"
	if r.NoResumption {
		mode = "off"
	}
	fmt.Fprintf(&b, "| metric | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| robots (mTLS, TLS 1.3) | %d |\n", r.Robots)
	fmt.Fprintf(&b, "| session resumption | %s |\n", mode)
	fmt.Fprintf(&b, "| cold connect of the whole fleet (full handshakes) | %s |\n", r.FirstConnect.Round(time.Millisecond))
	fmt.Fprintf(&b, "| after control restart: node ready → all connected | %s |\n", r.Reconnect.Round(time.Millisecond))
	fmt.Fprintf(&b, "| control CPU in that window | %.1f s (%.2f cores) |\n", r.ControlCPUSecs, r.ControlCores)
	fmt.Fprintf(&b, "| handshakes after restart: resumed / full | %.0f / %.0f |\n", r.Resumed, r.Full)
	fmt.Fprintf(&b, "| control peak RSS | %s |\n", lab.MiB(r.PeakControlRSS))
	return b.String()
}
