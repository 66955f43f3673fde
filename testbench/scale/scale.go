package scale

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
	"github.com/lekiwi/heartbeat/testbench/sqlprof"
)

// Options configure Run: one control node under a
// growing mTLS fleet with the heartbeat interval ramped down until the node
// saturates, a reconnect storm after each restart, 100 dashboard
// subscribers, and a dqlite cluster holding a large fleet.
type Options struct {
	ControlBinary string
	// WorkerBinary runs `sim` and `subs` children (cmd/scalebench).
	WorkerBinary string
	Dir          string // scratch (default a temp dir, removed after)
	OutDir       string // results: scale.md, scale.json, scale.png
	Out          io.Writer

	// Single node.
	Sizes     []int           // fleet sizes (default 1000, 5000, 10000, 19000)
	Intervals []time.Duration // heartbeat intervals tried in order (default 30s down to 100ms)
	Window    time.Duration   // measurement window per step (default 20 s)
	Settle    time.Duration   // after the fleet is connected, before a window (default 5 s)
	// PerProcess robots per simulator process: two descriptors per robot
	// (socket, queue file) must stay under the 20,000 open-file limit.
	PerProcess int
	// SourceAddrs spreads simulator processes over 127.0.0.2 ... (0: none).
	SourceAddrs int
	// ConnectRate bounds robot connections per second, whole fleet.
	ConnectRate float64
	// ReconnectJitter of the robots (production 10 s).
	ReconnectJitter time.Duration
	// The ramp stops at the first interval where ack p99 exceeds
	// SaturationP99, where the machine's CPU (control + simulators) reaches
	// SaturationCPU of all cores, or where ingest falls below 90 % of the
	// offered heartbeat rate.
	SaturationP99 time.Duration
	SaturationCPU float64
	// Subscribers on /v1/stream during one extra window at the first
	// interval (0: skip), with SubscriberThrottle (JSON, "" none).
	Subscribers        int
	SubscriberThrottle string

	// Cluster: ClusterMembers nodes (first three voters, the rest standby
	// as dqlite assigns) holding ClusterRobots; 0 robots skips it.
	ClusterRobots      int
	ClusterMembers     int
	ClusterInterval    time.Duration
	ClusterConnectRate float64
	ClusterSample      int // robots looked up on every member (besides a full list count)
	// DBNetworkLatency is passed to every node (--db-network-latency; raft
	// elections start after 15x it): larger keeps a CPU-starved cluster
	// from losing its leader (0: the node's default).
	DBNetworkLatency time.Duration
	SkipSingle       bool
	// StormHogs busy-loop processes run during every reconnect storm: a
	// storm on a machine whose CPU is already taken (a shared host, a
	// neighbour's backup) must not collapse the node (0: none). The
	// simulators run at nice -10 meanwhile: they stand for other machines.
	StormHogs int
	// SimProfile writes a CPU and heap profile of every simulator process
	// under OutDir.
	SimProfile bool
	// SQLProfile loads testbench/sqlprof into every control node: time in
	// SQLite per statement, in --out/<scenario>-<node>.sqlprof.tsv.
	SQLProfile bool
	// SimNice runs the simulator processes at this nice value. The
	// simulators stand in for robots, each with its own CPU; on one host
	// their TLS handshakes compete with the control nodes for the same
	// cores, most of all in a reconnect storm. Niced, they take what the
	// nodes leave. Their own cost is reported either way.
	SimNice int
}

func (o *Options) defaults() {
	if len(o.Sizes) == 0 {
		o.Sizes = []int{1000, 5000, 10000, 19000}
	}
	if len(o.Intervals) == 0 {
		o.Intervals = []time.Duration{30 * time.Second, 10 * time.Second, 5 * time.Second, 2 * time.Second, time.Second,
			500 * time.Millisecond, 250 * time.Millisecond, 100 * time.Millisecond}
	}
	if o.Window == 0 {
		o.Window = 20 * time.Second
	}
	if o.Settle == 0 {
		o.Settle = 5 * time.Second
	}
	if o.PerProcess == 0 {
		o.PerProcess = 8000
	}
	if o.ConnectRate == 0 {
		o.ConnectRate = 500
	}
	if o.SaturationP99 == 0 {
		o.SaturationP99 = 250 * time.Millisecond
	}
	if o.SaturationCPU == 0 {
		o.SaturationCPU = 0.9
	}
	if o.ClusterMembers == 0 {
		o.ClusterMembers = 4
	}
	if o.ClusterInterval == 0 {
		o.ClusterInterval = 30 * time.Second
	}
	if o.ClusterConnectRate == 0 {
		o.ClusterConnectRate = 100
	}
	if o.ClusterSample == 0 {
		o.ClusterSample = 200
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// Step is one measured step.
type Step struct {
	Scenario  string        `json:"scenario"` // single, single+subscribers, cluster
	Robots    int           `json:"robots"`
	Members   int           `json:"members"`
	Interval  time.Duration `json:"interval_ns"`
	Window    time.Duration `json:"window_ns"`
	LoadAvg   string        `json:"loadavg"` // /proc/loadavg at the end of the window
	Connected int           `json:"connected"`
	// Connect: fleet start (or node restart) to every robot connected.
	Connect time.Duration `json:"connect_ns"`
	// Storm after a restart of a node (zero on a cold start).
	StormFromReady time.Duration `json:"storm_from_ready_ns,omitempty"`
	StormPeakCPU   float64       `json:"storm_peak_cores,omitempty"` // control, 500 ms samples
	StormSimPeak   float64       `json:"storm_sim_peak_cores,omitempty"`

	OfferedPerSec   float64 `json:"offered_heartbeats_per_s"`
	HeartbeatPerSec float64 `json:"heartbeats_per_s"`
	MessagesPerSec  float64 `json:"messages_per_s"`
	AckP50          time.Duration
	AckP99          time.Duration
	AckMax          time.Duration
	AckSamples      uint64

	ControlCPU     float64 `json:"control_cores"`
	CPUPer1000Msgs float64 `json:"control_cpu_ms_per_1000_messages"`
	ControlRSSBase uint64  `json:"control_rss_base"`
	ControlRSS     uint64  `json:"control_rss"`
	RSSPerConn     float64 `json:"control_rss_per_connection"` // bytes, from the cold step
	HeapInuse      float64 `json:"control_heap_inuse"`
	StackInuse     float64 `json:"control_stack_inuse"`
	// HeapUnreleased is Go heap idle but not yet returned to the OS: RSS
	// minus heap in use, stacks and this is C memory (dqlite, SQLite).
	HeapUnreleased float64 `json:"control_heap_idle_unreleased"`
	Goroutines     float64 `json:"control_goroutines"`

	SimProcs int     `json:"simulator_processes"`
	SimRSS   uint64  `json:"simulator_rss"`
	SimCPU   float64 `json:"simulator_cores"`

	GetP50, GetP99   time.Duration
	ListP50, ListP99 time.Duration
	Queries          int
	QueryErrors      int

	Subscribers   int           `json:"subscribers,omitempty"`
	SubFramesSec  float64       `json:"subscriber_frames_per_s,omitempty"`
	SubP50        time.Duration `json:"subscriber_p50_ns,omitempty"`
	SubP99        time.Duration `json:"subscriber_p99_ns,omitempty"`
	SubCPU        float64       `json:"subscriber_cores,omitempty"`
	SubErrors     int           `json:"subscriber_errors,omitempty"`
	SubLastError  string        `json:"subscriber_last_error,omitempty"`
	Visible       string        `json:"visible,omitempty"` // cluster: per member, listed/expected and sample found
	Saturated     string        `json:"saturated,omitempty"`
	Note          string        `json:"note,omitempty"`
	MemberRSS     []uint64      `json:"member_rss,omitempty"`
	MemberCPU     []float64     `json:"member_cores,omitempty"`
	MemberConnect []int         `json:"member_connections,omitempty"`
}

// scaleRun is the state shared by the scenarios of one Run.
type scaleRun struct {
	o     Options
	ca    *pki.CA
	caDir string
	httpc *http.Client
	say   func(string, ...any)
	// sqlprof is the built SQL profiler library, when SQLProfile.
	sqlprof string

	mu    sync.Mutex
	steps []Step
}

// Run runs the scenarios and writes results to o.OutDir as each step
// completes, so an interrupted run keeps what it measured.
func Run(ctx context.Context, o Options) ([]Step, error) {
	o.defaults()
	if o.SimNice < -20 || o.SimNice > 19 {
		return nil, fmt.Errorf("simulator nice value %d: want -20 to 19 (see nice(1))", o.SimNice)
	}
	for _, b := range []string{o.ControlBinary, o.WorkerBinary} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("scale needs %s: %w (run `make build`)", b, err)
		}
	}
	if o.OutDir == "" {
		return nil, errors.New("scale: an output directory is required")
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "lekiwi-scale-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	r := &scaleRun{o: o, caDir: filepath.Join(o.Dir, "ca")}
	r.say = func(format string, args ...any) {
		fmt.Fprintf(o.Out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	var err error
	if r.ca, err = lab.LabCA(r.caDir); err != nil {
		return nil, err
	}
	r.httpc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: r.ca.Pool(), MinVersion: tls.VersionTLS13}, MaxIdleConnsPerHost: 4}}
	var errs []error
	if !o.SkipSingle {
		for _, n := range o.Sizes {
			if err := r.single(ctx, n); err != nil {
				r.say("single node, %d robots: %v", n, err)
				errs = append(errs, fmt.Errorf("single node with %d robots: %w", n, err))
				if ctx.Err() != nil {
					break
				}
			}
		}
	}
	if o.ClusterRobots > 0 && ctx.Err() == nil {
		if err := r.cluster(ctx); err != nil {
			r.say("cluster: %v", err)
			errs = append(errs, fmt.Errorf("cluster with %d robots: %w", o.ClusterRobots, err))
		}
	}
	return r.steps, errors.Join(append(errs, r.write())...)
}

func (r *scaleRun) record(s Step) {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
	r.say("step: %s", s.summary())
	if err := r.write(); err != nil {
		r.say("write results: %v", err)
	}
}

// write saves the table, the JSON and the plot.
func (r *scaleRun) write() error {
	r.mu.Lock()
	steps := append([]Step(nil), r.steps...)
	r.mu.Unlock()
	b, err := json.MarshalIndent(steps, "", "  ")
	if err != nil {
		return err
	}
	var errs []error
	errs = append(errs, os.WriteFile(filepath.Join(r.o.OutDir, "scale.json"), b, 0o644))
	errs = append(errs, os.WriteFile(filepath.Join(r.o.OutDir, "scale.md"), []byte(Table(steps)), 0o644))
	// No plot before the first single-node step (or with --skip-single).
	if png, err := Plot(steps); err == nil {
		errs = append(errs, os.WriteFile(filepath.Join(r.o.OutDir, "scale.png"), png, 0o644))
	}
	return errors.Join(errs...)
}

// simulators is a fleet split over child processes.
type simulators struct {
	procs []*childProc
	total int
}

// startSimulators starts robots [first, first+n) in processes of at most
// per robots, each given its servers by serversFor(process index).
// The number of processes is rounded up to a multiple of multipleOf, so
// that processes split evenly over that many servers.
// minProcs is the least number of processes.
func (r *scaleRun) startSimulators(tag string, first, n int, rate float64, multipleOf, minProcs int, serversFor func(i int) []string) (*simulators, error) {
	nproc := max((n+r.o.PerProcess-1)/r.o.PerProcess, minProcs)
	nproc = (nproc + multipleOf - 1) / multipleOf * multipleOf
	per := (n + nproc - 1) / nproc
	s := &simulators{total: n}
	for i := range nproc {
		count := min(per, n-i*per)
		if count <= 0 {
			break
		}
		w := WorkerOptions{FirstIndex: first + i*per, Robots: count, Servers: serversFor(i), CADir: r.caDir,
			Dir: filepath.Join(r.o.Dir, tag, fmt.Sprintf("sim%d", i)), ConnectRate: rate / float64(nproc),
			ReconnectJitter: r.o.ReconnectJitter}
		if r.o.SimProfile {
			w.ProfileDir = filepath.Join(r.o.OutDir, fmt.Sprintf("%s-sim%d", tag, i))
		}
		if r.o.SourceAddrs > 0 {
			w.LocalAddr = netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i%r.o.SourceAddrs)})
		}
		if err := os.MkdirAll(w.Dir, 0o755); err != nil {
			s.stop()
			return nil, err
		}
		bin, args := r.o.WorkerBinary, workerArgs(w)
		if r.o.SimNice != 0 {
			// The whole process niced from its start: setpriority on a
			// running Go process reaches only the threads made after it.
			bin, args = "nice", append([]string{"-n", strconv.Itoa(r.o.SimNice), bin}, args...)
		}
		p, err := startChild(fmt.Sprintf("sim%d", i), bin, filepath.Join(r.o.OutDir, tag+"-sim.log"), args...)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.procs = append(s.procs, p)
	}
	return s, nil
}

func (s *simulators) stop() {
	var wg sync.WaitGroup
	for _, p := range s.procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(2 * time.Minute) }()
	}
	wg.Wait()
}

// snapshot sums the children's latest status.
func (s *simulators) snapshot() (connected int, hist LatencyHist, errs []string) {
	connected, hist, errs, _ = s.snapshotAt()
	return
}

// snapshotAt is snapshot and the time of the oldest status in it.
func (s *simulators) snapshotAt() (connected int, hist LatencyHist, errs []string, oldest time.Time) {
	for i, p := range s.procs {
		var st WorkerStatus
		if !p.alive() {
			errs = append(errs, p.name+" exited")
		}
		if p.status(&st) {
			connected += st.Connected
			hist.Merge(st.Heartbeat)
			if i == 0 || st.At.Before(oldest) {
				oldest = st.At
			}
			if st.Err != "" {
				errs = append(errs, p.name+": "+st.Err)
			}
		}
	}
	return
}

func (s *simulators) cpu() (total time.Duration) {
	for _, p := range s.procs {
		c, _ := lab.ReadProcCPU(p.pid())
		total += c
	}
	return
}

func (s *simulators) rss() (total uint64) {
	for _, p := range s.procs {
		if m, err := lab.ReadProcMemory(p.pid()); err == nil {
			total += m.RSS
		}
	}
	return
}

// waitPrepared waits until every simulator has prepared its robots (state
// directories, fixture trees, certificates) and reports: connection times
// count from there.
func (s *simulators) waitPrepared(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ready := 0
		for _, p := range s.procs {
			var st WorkerStatus
			if !p.alive() {
				return fmt.Errorf("simulator %s exited while preparing its robots", p.name)
			}
			if p.status(&st) {
				ready++
			}
		}
		if ready == len(s.procs) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d simulators prepared after %s", ready, len(s.procs), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitConnected waits until want robots are connected; it samples the CPU
// of pids (control) and of the simulators every 500 ms for the peaks.
func (s *simulators) waitConnected(ctx context.Context, want int, timeout time.Duration, pids func() []int) (took time.Duration, peakCtl, peakSim float64, err error) {
	start := time.Now()
	prevT := start
	prevCtl := cpuOf(pids())
	prevSim := s.cpu()
	for {
		select {
		case <-ctx.Done():
			return time.Since(start), peakCtl, peakSim, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		now := time.Now()
		ctl, sim := cpuOf(pids()), s.cpu()
		dt := now.Sub(prevT).Seconds()
		peakCtl = max(peakCtl, (ctl-prevCtl).Seconds()/dt)
		peakSim = max(peakSim, (sim-prevSim).Seconds()/dt)
		prevT, prevCtl, prevSim = now, ctl, sim
		c, _, errs, at := s.snapshotAt()
		// Status lines are a second apart: one taken before start (say,
		// before a node was stopped) would count robots no longer connected.
		if c >= want && at.After(start) {
			return time.Since(start), peakCtl, peakSim, nil
		}
		if len(errs) > 0 {
			return time.Since(start), peakCtl, peakSim, fmt.Errorf("simulator: %s", strings.Join(errs, "; "))
		}
		if time.Since(start) > timeout {
			return time.Since(start), peakCtl, peakSim, fmt.Errorf("only %d of %d robots connected after %s", c, want, timeout)
		}
	}
}

func cpuOf(pids []int) (total time.Duration) {
	for _, pid := range pids {
		if pid > 0 {
			c, _ := lab.ReadProcCPU(pid)
			total += c
		}
	}
	return
}

// node is a control process of a scenario.
type scaleNode struct {
	m     *lab.Member
	token string
}

func (r *scaleRun) newMember(name, dir string) (*lab.Member, error) {
	m := &lab.Member{Name: name, DataDir: filepath.Join(dir, name), LogPath: filepath.Join(r.o.OutDir, filepath.Base(dir)+"-"+name+".log"), Binary: r.o.ControlBinary, CA: r.ca}
	var err error
	if r.o.SQLProfile {
		if r.sqlprof == "" {
			if r.sqlprof, err = sqlprof.Build(r.o.OutDir); err != nil {
				return nil, err
			}
		}
		m.Env = sqlprof.Env(r.sqlprof, filepath.Join(r.o.OutDir, filepath.Base(dir)+"-"+name+".sqlprof.tsv"))
	}
	if m.Listen, err = lab.FreeAddr(); err != nil {
		return nil, err
	}
	if m.DBAddress, err = lab.FreeAddr(); err != nil {
		return nil, err
	}
	return m, nil
}

// nodeArgs is the command line of a control node after its subcommand.
func (r *scaleRun) nodeArgs(m *lab.Member, interval time.Duration) []string {
	args := []string{"--ca-dir", r.caDir, "--data-dir", m.DataDir, "--db-address", m.DBAddress, "--node-id", m.Name,
		"--listen", m.Listen, "--heartbeat-interval", interval.String(), "--offline-grace", "10s", "--log-level", "warn",
		"--registry-dir", "off", "--retention-interval", "0"}
	if r.o.DBNetworkLatency > 0 {
		args = append(args, "--db-network-latency", r.o.DBNetworkLatency.String())
	}
	return args
}

// waitReady waits for /readyz on m.
func (r *scaleRun) waitReady(ctx context.Context, m *lab.Member, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !m.Running() {
			return fmt.Errorf("%s exited while starting; see %s", m.Name, m.LogPath)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := lab.WaitReady(rctx, r.httpc, m.URL(), 2*time.Second)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready after %s: %w", m.Name, timeout, err)
		}
	}
}

// window measures one step: counters of control (pids, scraped at bases)
// and of the simulators over r.o.Window, with state queries running.
func (r *scaleRun) window(ctx context.Context, s *Step, sims *simulators, nodes []*scaleNode, ids func() string) error {
	scrapeAll := func(series string) (float64, error) {
		var sum float64
		for _, n := range nodes {
			v, err := scrapeSum(r.httpc, n.m.URL(), n.token, series)
			if err != nil && !errors.Is(err, errNoSeries) {
				return 0, err
			}
			sum += v
		}
		return sum, nil
	}
	pids := func() []int {
		var p []int
		for _, n := range nodes {
			p = append(p, n.m.Pid())
		}
		return p
	}
	msg0, err := scrapeAll("lekiwi_control_messages_total")
	if err != nil {
		return err
	}
	hb0, _ := scrapeAll(`lekiwi_control_messages_total{type="heartbeat"}`)
	_, hist0, _ := sims.snapshot()
	memberCPU0 := make([]time.Duration, len(nodes))
	for i, n := range nodes {
		memberCPU0[i], _ = lab.ReadProcCPU(n.m.Pid())
	}
	ctl0, sim0 := cpuOf(pids()), sims.cpu()
	t0 := time.Now()

	qctx, stopQueries := context.WithCancel(ctx)
	var get, list []time.Duration
	var qerr int
	qdone := make(chan struct{})
	go func() {
		defer close(qdone)
		// 5 requests per second in all: under the API's default rate limit
		// of 20/s per token.
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-qctx.Done():
				return
			case <-tick.C:
			}
			n := nodes[i%len(nodes)]
			path := "/v1/robots/" + ids()
			if i%2 == 1 {
				path = "/v1/robots?limit=100&after=" + url.QueryEscape(ids())
			}
			q0 := time.Now()
			if err := apiGet(qctx, r.httpc, n.m.URL(), n.token, path, nil); err != nil {
				if qctx.Err() == nil {
					qerr++
				}
				continue
			}
			if i%2 == 1 {
				list = append(list, time.Since(q0))
			} else {
				get = append(get, time.Since(q0))
			}
		}
	}()
	select {
	case <-ctx.Done():
		stopQueries()
		<-qdone
		return ctx.Err()
	case <-time.After(max(r.o.Window, 2*s.Interval)):
		// At least two intervals: robots that connected together beat
		// together, and a shorter window would catch a phase, not the rate.
	}
	elapsed := time.Since(t0)
	ctl1, sim1 := cpuOf(pids()), sims.cpu()
	stopQueries()
	<-qdone
	connected, hist1, _ := sims.snapshot()
	msg1, err := scrapeAll("lekiwi_control_messages_total")
	if err != nil {
		return err
	}
	hb1, _ := scrapeAll(`lekiwi_control_messages_total{type="heartbeat"}`)

	s.Window = elapsed
	s.Connected = connected
	s.OfferedPerSec = float64(s.Robots) / s.Interval.Seconds()
	s.MessagesPerSec = (msg1 - msg0) / elapsed.Seconds()
	s.HeartbeatPerSec = (hb1 - hb0) / elapsed.Seconds()
	s.ControlCPU = (ctl1 - ctl0).Seconds() / elapsed.Seconds()
	if msg1 > msg0 {
		s.CPUPer1000Msgs = (ctl1 - ctl0).Seconds() * 1000 / ((msg1 - msg0) / 1000)
	}
	s.SimProcs, s.SimRSS = len(sims.procs), sims.rss()
	s.SimCPU = (sim1 - sim0).Seconds() / elapsed.Seconds()
	w := hist1.Since(hist0)
	s.AckP50, s.AckP99, s.AckMax, s.AckSamples = w.Quantile(50), w.Quantile(99), w.Max, w.Count()
	s.GetP50, s.GetP99 = lab.Percentile(get, 50), lab.Percentile(get, 99)
	s.ListP50, s.ListP99 = lab.Percentile(list, 50), lab.Percentile(list, 99)
	s.Queries, s.QueryErrors = len(get)+len(list), qerr
	s.ControlRSS = 0
	s.MemberRSS, s.MemberCPU = nil, nil
	for i, n := range nodes {
		if m, err := lab.ReadProcMemory(n.m.Pid()); err == nil {
			s.ControlRSS += m.RSS
			s.MemberRSS = append(s.MemberRSS, m.RSS)
		}
		c, _ := lab.ReadProcCPU(n.m.Pid())
		s.MemberCPU = append(s.MemberCPU, (c-memberCPU0[i]).Seconds()/elapsed.Seconds())
	}
	s.HeapInuse, _ = scrapeAll("go_memstats_heap_inuse_bytes")
	s.StackInuse, _ = scrapeAll("go_memstats_stack_inuse_bytes")
	idle, _ := scrapeAll("go_memstats_heap_idle_bytes")
	released, _ := scrapeAll("go_memstats_heap_released_bytes")
	s.HeapUnreleased = idle - released
	s.Goroutines, _ = scrapeAll("go_goroutines")
	s.LoadAvg = loadAvg()
	cores := float64(runtime.NumCPU())
	switch {
	case s.AckP99 > r.o.SaturationP99:
		s.Saturated = fmt.Sprintf("ack p99 %s > %s", s.AckP99.Round(time.Millisecond), r.o.SaturationP99)
	case s.ControlCPU+s.SimCPU >= r.o.SaturationCPU*cores:
		s.Saturated = fmt.Sprintf("CPU: control %.2f + simulators %.2f of %.0f cores", s.ControlCPU, s.SimCPU, cores)
	case s.HeartbeatPerSec < 0.9*s.OfferedPerSec:
		s.Saturated = fmt.Sprintf("ingest %.0f/s < 90%% of offered %.0f/s", s.HeartbeatPerSec, s.OfferedPerSec)
	}
	return nil
}

// single runs the single-node scenario for n robots.
func (r *scaleRun) single(ctx context.Context, n int) error {
	tag := fmt.Sprintf("single-%d", n)
	dir := filepath.Join(r.o.Dir, tag)
	defer os.RemoveAll(dir)
	m, err := r.newMember("control", dir)
	if err != nil {
		return err
	}
	interval := r.o.Intervals[0]
	m.Args = append([]string{"run"}, r.nodeArgs(m, interval)...)
	r.say("single node, %d robots: starting control (heartbeat interval %s)", n, interval)
	if err := m.Start(); err != nil {
		return err
	}
	defer m.Stop(time.Minute)
	if err := r.waitReady(ctx, m, time.Minute); err != nil {
		return err
	}
	token, err := lab.AdminToken(ctx, r.o.ControlBinary, m.DataDir)
	if err != nil {
		return err
	}
	node := &scaleNode{m: m, token: token}
	time.Sleep(time.Second)
	base, err := lab.ReadProcMemory(m.Pid())
	if err != nil {
		return err
	}
	sims, err := r.startSimulators(tag, 0, n, r.o.ConnectRate, 1, 1, func(int) []string { return []string{m.URL()} })
	if err != nil {
		return err
	}
	defer sims.stop()
	pids := func() []int { return []int{m.Pid()} }
	if err := sims.waitPrepared(ctx, time.Duration(n)*50*time.Millisecond+time.Minute); err != nil {
		return err
	}
	connectTimeout := time.Duration(float64(n)/r.o.ConnectRate*float64(time.Second))*3 + 2*time.Minute
	took, _, _, err := sims.waitConnected(ctx, n, connectTimeout, pids)
	if err != nil {
		return err
	}
	r.say("%d robots connected in %s", n, took.Round(time.Millisecond))
	ids := func() string { id, _ := robotsim.RobotID(rand.IntN(n)); return id }
	for i, iv := range r.o.Intervals {
		step := Step{Scenario: "single", Robots: n, Members: 1, Interval: iv, ControlRSSBase: base.RSS, Connect: took}
		if i > 0 {
			// A new interval reaches robots in the hello reply: restart the
			// node, which is also the reconnect storm under measurement.
			m.Stop(time.Minute)
			m.Args = append([]string{"run"}, r.nodeArgs(m, iv)...)
			restart := time.Now()
			if err := m.Start(); err != nil {
				return err
			}
			if err := r.waitReady(ctx, m, time.Minute); err != nil {
				return err
			}
			stopProfile := r.profile(ctx, m, fmt.Sprintf("%s-storm-%s", tag, iv), 30*time.Second)
			stopHogs := startHogs(r.o.StormHogs, sims)
			storm, peak, simPeak, err := sims.waitConnected(ctx, n, connectTimeout, pids)
			step.Connect = time.Since(restart)
			stopHogs()
			stopProfile()
			if r.o.StormHogs > 0 {
				step.Note = fmt.Sprintf("storm with %d busy-loop processes", r.o.StormHogs)
			}
			if err != nil {
				return fmt.Errorf("reconnect after restart with interval %s: %w", iv, err)
			}
			step.StormFromReady, step.StormPeakCPU, step.StormSimPeak = storm, peak, simPeak
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(max(r.o.Settle, min(2*iv, 30*time.Second))):
		}
		// The window's CPU profile: what a message costs the node.
		stopProfile := r.profile(ctx, m, fmt.Sprintf("%s-window-%s", tag, iv), r.o.Window)
		if err := r.window(ctx, &step, sims, []*scaleNode{node}, ids); err != nil {
			return err
		}
		stopProfile()
		if i == 0 {
			step.RSSPerConn = float64(int64(step.ControlRSS)-int64(base.RSS)) / float64(n)
		}
		r.record(step)
		if i == 0 && r.o.Subscribers > 0 {
			if err := r.subscribersStep(ctx, step, sims, node, ids); err != nil {
				r.say("subscribers: %v", err)
			}
		}
		if step.Saturated != "" {
			r.say("saturated at interval %s: %s", iv, step.Saturated)
			break
		}
	}
	return nil
}

// subscribersStep repeats the window of base with dashboard subscribers.
func (r *scaleRun) subscribersStep(ctx context.Context, base Step, sims *simulators, node *scaleNode, ids func() string) error {
	sub := `{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"]}`
	if r.o.SubscriberThrottle != "" {
		sub = `{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"],"throttle":` + r.o.SubscriberThrottle + `}`
	}
	wsURL := "wss://" + node.m.Listen + "/v1/stream"
	p, err := startChild("subs", r.o.WorkerBinary, filepath.Join(r.o.OutDir, "subscribers.log"),
		"subs", "--url", wsURL, "--token", node.token, "--ca-dir", r.caDir, "--n", strconv.Itoa(r.o.Subscribers), "--subscribe", sub)
	if err != nil {
		return err
	}
	defer p.stop(30 * time.Second)
	var st SubscribersStatus
	deadline := time.Now().Add(time.Minute)
	for !(p.status(&st) && st.Connected >= r.o.Subscribers) {
		if time.Now().After(deadline) || !p.alive() {
			return fmt.Errorf("only %d of %d subscribers connected (%d errors, last: %s)", st.Connected, r.o.Subscribers, st.Errors, st.LastError)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	p.status(&st)
	st0 := st
	cpu0, _ := lab.ReadProcCPU(p.pid())
	step := Step{Scenario: "single+subscribers", Robots: base.Robots, Members: 1, Interval: base.Interval, ControlRSSBase: base.ControlRSSBase}
	if err := r.window(ctx, &step, sims, []*scaleNode{node}, ids); err != nil {
		return err
	}
	cpu1, _ := lab.ReadProcCPU(p.pid())
	// A fresh value: decoding into st would reuse the slice st0 shares.
	st = SubscribersStatus{}
	p.status(&st)
	lat := st.Latency.Since(st0.Latency)
	step.Subscribers = st.Connected
	step.SubFramesSec = float64(st.Frames-st0.Frames) / step.Window.Seconds()
	step.SubP50, step.SubP99 = lat.Quantile(50), lat.Quantile(99)
	step.SubCPU = (cpu1 - cpu0).Seconds() / step.Window.Seconds()
	step.SubErrors, step.SubLastError = st.Errors, st.LastError
	step.Note = "throttle " + r.o.SubscriberThrottle
	r.record(step)
	return nil
}

// cluster runs the scale-out scenario.
func (r *scaleRun) cluster(ctx context.Context) error {
	o := r.o
	dir := filepath.Join(o.Dir, "cluster")
	defer os.RemoveAll(dir)
	var members []*lab.Member
	defer func() {
		for i := len(members) - 1; i >= 0; i-- {
			members[i].Stop(time.Minute)
		}
	}()
	var nodes []*scaleNode
	for i := range o.ClusterMembers {
		m, err := r.newMember(fmt.Sprintf("c%d", i+1), dir)
		if err != nil {
			return err
		}
		if i == 0 {
			m.Args = append([]string{"init"}, r.nodeArgs(m, o.ClusterInterval)...)
		} else {
			m.Args = append([]string{"join", members[0].DBAddress}, r.nodeArgs(m, o.ClusterInterval)...)
		}
		if err := m.Start(); err != nil {
			return err
		}
		members = append(members, m)
		if err := r.waitReady(ctx, m, 2*time.Minute); err != nil {
			return err
		}
		token, err := lab.AdminToken(ctx, o.ControlBinary, m.DataDir)
		if err != nil {
			return err
		}
		nodes = append(nodes, &scaleNode{m: m, token: token})
	}
	r.say("cluster of %d members ready; connecting %d robots at %.0f/s", len(members), o.ClusterRobots, o.ClusterConnectRate)
	var base uint64
	for _, m := range members {
		if mem, err := lab.ReadProcMemory(m.Pid()); err == nil {
			base += mem.RSS
		}
	}
	// Simulator i connects first to member i mod M; after a lost
	// connection the agent goes round-robin through the rest of its list.
	// The rest is rotated by i / M, so that the robots of a restarted member
	// spread over all the others instead of piling onto the next one (which
	// could not hold them under the open-file limit): hence at least
	// M x (M-1) processes.
	M := len(members)
	sims, err := r.startSimulators("cluster", 0, o.ClusterRobots, o.ClusterConnectRate, M, M*(M-1), func(i int) []string {
		return clusterServers(members, i)
	})
	if err != nil {
		return err
	}
	defer sims.stop()
	pids := func() []int {
		var p []int
		for _, m := range members {
			p = append(p, m.Pid())
		}
		return p
	}
	if err := sims.waitPrepared(ctx, time.Duration(o.ClusterRobots)*50*time.Millisecond+time.Minute); err != nil {
		return err
	}
	timeout := time.Duration(float64(o.ClusterRobots)/o.ClusterConnectRate*float64(time.Second))*2 + 5*time.Minute
	took, _, _, err := sims.waitConnected(ctx, o.ClusterRobots, timeout, pids)
	if err != nil {
		c, _, _ := sims.snapshot()
		r.record(Step{Scenario: "cluster", Robots: o.ClusterRobots, Members: len(members), Interval: o.ClusterInterval,
			Connected: c, Connect: took, LoadAvg: loadAvg(), Note: "incomplete: " + err.Error(), SimProcs: len(sims.procs), SimRSS: sims.rss()})
		return err
	}
	r.say("%d robots connected to the cluster in %s", o.ClusterRobots, took.Round(time.Second))
	time.Sleep(o.Settle)
	ids := func() string { id, _ := robotsim.RobotID(rand.IntN(o.ClusterRobots)); return id }
	step := Step{Scenario: "cluster", Robots: o.ClusterRobots, Members: len(members), Interval: o.ClusterInterval, Connect: took, ControlRSSBase: base}
	if err := r.window(ctx, &step, sims, nodes, ids); err != nil {
		return err
	}
	step.RSSPerConn = float64(int64(step.ControlRSS)-int64(base)) / float64(o.ClusterRobots)
	step.MemberConnect = r.memberConnections(nodes)
	step.Visible = r.visibility(ctx, nodes, o.ClusterRobots, o.ClusterSample)
	r.record(step)

	// Reconnect storm: restart the second member (a voter, not the first
	// seed); its robots fail over to the others and the fleet must be whole
	// again.
	victim := members[min(1, len(members)-1)]
	r.say("restarting %s under %d robots", victim.Name, o.ClusterRobots)
	storm := Step{Scenario: "cluster restart", Robots: o.ClusterRobots, Members: len(members), Interval: o.ClusterInterval}
	t0 := time.Now()
	stopHogs := startHogs(o.StormHogs, sims)
	defer stopHogs()
	if o.StormHogs > 0 {
		storm.Note = fmt.Sprintf("storm with %d busy-loop processes; ", o.StormHogs)
	}
	victim.Stop(time.Minute)
	if err := victim.Start(); err != nil {
		return err
	}
	// Robots that lost their connection come back on other members while
	// the victim starts; wait for both.
	started := time.Now()
	back, peak, simPeak, err := sims.waitConnected(ctx, o.ClusterRobots, timeout, pids)
	// From the restart command (the member's robots are told to go away
	// as it begins to stop) to every robot connected; not including the
	// wait for the member's readiness below, when it comes later.
	storm.Connect = started.Sub(t0) + back
	stopHogs()
	if err != nil {
		storm.Note += "incomplete: " + err.Error()
	}
	if err := r.waitReady(ctx, victim, 2*time.Minute); err != nil {
		storm.Note += " restarted member not ready: " + err.Error()
	}
	storm.StormFromReady = back
	storm.StormPeakCPU, storm.StormSimPeak = peak, simPeak
	storm.LoadAvg = loadAvg()
	c, _, _ := sims.snapshot()
	storm.Connected = c
	storm.MemberConnect = r.memberConnections(nodes)
	r.record(storm)
	return nil
}

// clusterServers is simulator i's server list: member i mod M first, the
// others rotated by i / M.
func clusterServers(members []*lab.Member, i int) []string {
	M := len(members)
	p := i % M
	var others []string
	for k := 1; k < M; k++ {
		others = append(others, members[(p+k)%M].URL())
	}
	if len(others) > 0 {
		rot := (i / M) % len(others)
		others = append(others[rot:], others[:rot]...)
	}
	return append([]string{members[p].URL()}, others...)
}

// memberConnections reads each member's connected-robots gauge.
func (r *scaleRun) memberConnections(nodes []*scaleNode) []int {
	var out []int
	for _, n := range nodes {
		v, _ := scrapeSum(r.httpc, n.m.URL(), n.token, "lekiwi_control_websocket_connections")
		out = append(out, int(v))
	}
	return out
}

// visibility checks every member's API: the full robot list is counted by
// paging, and sample robots are looked up one by one.
func (r *scaleRun) visibility(ctx context.Context, nodes []*scaleNode, want, sample int) string {
	var parts []string
	for _, n := range nodes {
		listed, after := 0, ""
		var err error
		for pages := 0; pages < want/1000+10; pages++ {
			var page struct {
				Robots []json.RawMessage `json:"robots"`
				Next   string            `json:"next"`
			}
			path := "/v1/robots?limit=1000"
			if after != "" {
				path += "&after=" + url.QueryEscape(after)
			}
			if err = apiGet(ctx, r.httpc, n.m.URL(), n.token, path, &page); err != nil {
				break
			}
			listed += len(page.Robots)
			if page.Next == "" {
				break
			}
			after = page.Next
			time.Sleep(60 * time.Millisecond) // under the API's 20 requests/s
		}
		found := 0
		for i := range sample {
			id, _ := robotsim.RobotID(i * want / sample)
			if apiGet(ctx, r.httpc, n.m.URL(), n.token, "/v1/robots/"+id, nil) == nil {
				found++
			}
			time.Sleep(60 * time.Millisecond)
		}
		p := fmt.Sprintf("%s: listed %d/%d, sample %d/%d", n.m.Name, listed, want, found, sample)
		if err != nil {
			p += " (list: " + err.Error() + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// apiGet GETs path with the token; out, when not nil, receives the JSON.
func apiGet(ctx context.Context, c *http.Client, base, token, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// scrapeSum adds every sample of a metric family (name) or one series
// (name{labels}) on a Prometheus text endpoint.
func scrapeSum(c *http.Client, base, token, series string) (float64, error) {
	req, err := http.NewRequest("GET", base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape %s/metrics: %w", base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return sumSeries(string(b), series)
}

// errNoSeries: a labelled counter has no series until its first
// increment (a member no robot has connected to yet).
var errNoSeries = errors.New("not found")

// sumSeries sums the samples of series in Prometheus text exposition.
func sumSeries(text, series string) (float64, error) {
	var sum float64
	found := false
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		// Label values may hold spaces; the value is the last field (the
		// Go client writes no timestamps).
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, value := line[:i], line[i+1:]
		if name != series && (strings.Contains(series, "{") || !strings.HasPrefix(name, series+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("series %s: bad value %q", name, value)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("series %s: %w", series, errNoSeries)
	}
	return sum, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// profile records a CPU profile of m for d, from now, into
// OutDir/name.pprof through the admin socket's profiler: what the node
// spends a storm or a window on. stop waits for the profile (the profiler
// writes nothing when its request is cancelled).
func (r *scaleRun) profile(ctx context.Context, m *lab.Member, name string, d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.Create(filepath.Join(r.o.OutDir, name+".pprof"))
		if err != nil {
			r.say("profile %s: %v", name, err)
			return
		}
		defer f.Close()
		path := fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(1, int(d.Seconds())))
		if err := m.Admin().Stream(ctx, path, f); err != nil {
			r.say("profile %s: %v", name, err)
		}
	}()
	return func() { <-done }
}

// startHogs starts n busy-loop processes (sh spinning) and raises the
// simulators (sims' pids) to nice -10 until stop: the hogs load the control
// node's host, and the robots stand for other machines. stop may be called
// more than once.
func startHogs(n int, sims *simulators) (stop func()) {
	if n <= 0 {
		return func() {}
	}
	var cmds []*exec.Cmd
	for range n {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if c.Start() == nil {
			cmds = append(cmds, c)
		}
	}
	sims.renice(-10)
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, c := range cmds {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
			sims.renice(0)
		})
	}
}

// renice sets every thread of every simulator to nice n (a process's nice
// value is per thread on Linux).
func (s *simulators) renice(n int) {
	for _, p := range s.procs {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid()))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				_ = syscall.Setpriority(syscall.PRIO_PROCESS, tid, n)
			}
		}
	}
}
