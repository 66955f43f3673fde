package testbench

// Chaos helpers: a control cluster of real processes (two control nodes and
// a witness, mTLS from a lab CA) that tests kill, stop, restart and
// partition; simulated fleets that fail over between the control nodes;
// an event load whose every event is numbered, and the exactly-once check
// of the event log that ends each scenario.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dqclient "github.com/canonical/go-dqlite/client"
	_ "github.com/mattn/go-sqlite3" // reads a member's dumped replica

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/control/admin"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// EnvControlBin names a prebuilt control binary for tests that run it as a
// process; unset, they build one.
const EnvControlBin = "LEKIWI_CONTROL_BIN"

// ControlBinary returns the control binary named by LEKIWI_CONTROL_BIN, or
// builds cmd/control (cgo, -tags libsqlite3) into dir.
func ControlBinary(ctx context.Context, dir string) (string, error) {
	if p := os.Getenv(EnvControlBin); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvControlBin, p, err)
		}
		return p, nil
	}
	out := filepath.Join(dir, "control")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "libsqlite3", "-o", out, "github.com/lekiwi/heartbeat/cmd/control")
	cmd.Env = append(os.Environ(), "CGO_LDFLAGS_ALLOW=-Wl,-z,now")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build control (set %s to use a prebuilt one): %w\n%s", EnvControlBin, err, b)
	}
	return out, nil
}

// Member is one process of a ProcCluster: a control node or the witness.
type Member struct {
	Name    string
	Witness bool
	DataDir string
	// Listen is the HTTPS address (unused by the witness); DBAddress the
	// dqlite peer address.
	Listen, DBAddress string
	// Gid, when not zero, is the process's group id: iptables can then
	// match its packets by owner (the test must run as root).
	Gid uint32
	// Args are the command line, the same at every start.
	Args []string
	// Env is added to the test's environment at every start.
	Env     []string
	LogPath string

	bin string
	ca  *pki.CA

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// URL is the control node's base URL.
func (m *Member) URL() string { return "https://" + m.Listen }

// Admin is a client of the node's admin socket (the API as admin, no
// token, no rate limit).
func (m *Member) Admin() *admin.Client { return admin.New(filepath.Join(m.DataDir, "control.sock")) }

// Start runs the member's process; its output goes to LogPath.
func (m *Member) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		select {
		case <-m.done:
		default:
			return fmt.Errorf("%s is already running (pid %d)", m.Name, m.cmd.Process.Pid)
		}
	}
	f, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== %s start %s: %s %s\n", time.Now().Format(time.RFC3339Nano), m.Name, m.bin, strings.Join(m.Args, " "))
	cmd := exec.Command(m.bin, m.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(m.Env) > 0 {
		cmd.Env = append(os.Environ(), m.Env...)
	}
	// Die with the test process, whatever becomes of it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if m.Gid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: m.Gid, NoSetGroups: true}
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(f, "=== %s %s exited: %v\n", time.Now().Format(time.RFC3339Nano), m.Name, err)
		f.Close()
		close(done)
	}()
	m.cmd, m.done, m.log = cmd, done, f
	return nil
}

// Running reports whether the process is alive.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Pid is the running process's id (0 when not running).
func (m *Member) Pid() int {
	if !m.Running() {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to be gone.
func (m *Member) Kill() {
	m.signalAndWait(syscall.SIGKILL, 0)
}

// Stop sends SIGTERM and waits up to timeout (then SIGKILL). It returns
// how long the process took to exit and whether it did so by itself.
func (m *Member) Stop(timeout time.Duration) (time.Duration, bool) {
	return m.signalAndWait(syscall.SIGTERM, timeout)
}

func (m *Member) signalAndWait(sig syscall.Signal, timeout time.Duration) (time.Duration, bool) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return 0, true
	}
	start := time.Now()
	_ = cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-done
		return time.Since(start), true
	}
	select {
	case <-done:
		return time.Since(start), true
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return time.Since(start), false
	}
}

// LeaderSeen asks the member's own dqlite node (over mTLS, as a peer would)
// which node it follows. A member that answers with the cluster's leader
// is back in the cluster.
func (m *Member) LeaderSeen(ctx context.Context) (string, error) {
	cli, err := dqliteClient(ctx, m.ca, m.DBAddress)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	info, err := cli.Leader(ctx)
	if err != nil {
		return "", err
	}
	if info == nil {
		return "", nil
	}
	return info.Address, nil
}

// dqliteClient connects to a dqlite node with a node certificate of ca.
func dqliteClient(ctx context.Context, ca *pki.CA, addr string) (*dqclient.Client, error) {
	cert, err := ca.NodeTLSCertificate(pki.NodeRequest{Name: "chaos-test-db", DNS: []string{"localhost"}}, time.Now())
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // members are dialed by address; the chain is checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := ca.VerifyNode(cs.PeerCertificates, time.Now())
			return err
		},
	}
	return dqclient.New(ctx, addr, dqclient.WithDialFunc(dqclient.DialFuncWithTLS(dqclient.DefaultDialFunc, cfg)),
		dqclient.WithLogFunc(func(dqclient.LogLevel, string, ...any) {}))
}

// ProcClusterOptions describe a ProcCluster.
type ProcClusterOptions struct {
	Bin string // control binary (ControlBinary)
	Dir string // everything goes under it
	// HeartbeatInterval and OfflineGrace are passed to the control nodes.
	HeartbeatInterval, OfflineGrace time.Duration
	// Gids, when set, are the three members' group ids (see Member.Gid).
	Gids [3]uint32
	// LogLevel of the members (default warn).
	LogLevel string
}

// ProcCluster is two control nodes (c1 started with `control init`, c2
// with `control join`) and a witness, each a child process, on loopback.
type ProcCluster struct {
	CA    *pki.CA
	CADir string
	// Members are c1, c2 and the witness, in that order.
	Members []*Member
	HTTP    *http.Client // trusts the fleet CA
}

// Controls are the members serving robots and the API.
func (c *ProcCluster) Controls() []*Member { return c.Members[:2] }

// Witness is the dqlite-only member.
func (c *ProcCluster) Witness() *Member { return c.Members[2] }

// StartProcCluster starts the three members one after the other and waits
// until all three are voters with a leader.
func StartProcCluster(ctx context.Context, o ProcClusterOptions) (*ProcCluster, error) {
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 5 * time.Second
	}
	if o.OfflineGrace == 0 {
		o.OfflineGrace = 10 * time.Second
	}
	c := &ProcCluster{CADir: filepath.Join(o.Dir, "ca")}
	var err error
	if c.CA, err = LabCA(c.CADir); err != nil {
		return nil, err
	}
	c.HTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13},
	}}
	names := []string{"c1", "c2", "witness"}
	for i, name := range names {
		m := &Member{Name: name, Witness: i == 2, DataDir: filepath.Join(o.Dir, name), LogPath: filepath.Join(o.Dir, name+".log"),
			Gid: o.Gids[i], bin: o.Bin, ca: c.CA}
		if m.Listen, err = FreeAddr(); err != nil {
			return nil, err
		}
		if m.DBAddress, err = FreeAddr(); err != nil {
			return nil, err
		}
		c.Members = append(c.Members, m)
	}
	c1, c2, w := c.Members[0], c.Members[1], c.Members[2]
	common := func(m *Member) []string {
		return []string{"--ca-dir", c.CADir, "--data-dir", m.DataDir, "--db-address", m.DBAddress, "--node-id", m.Name, "--log-level", o.LogLevel}
	}
	node := func(m *Member) []string {
		return append(common(m), "--listen", m.Listen,
			"--heartbeat-interval", o.HeartbeatInterval.String(), "--offline-grace", o.OfflineGrace.String())
	}
	c1.Args = append([]string{"init"}, node(c1)...)
	c2.Args = append([]string{"join", c1.DBAddress}, node(c2)...)
	w.Args = append([]string{"witness", "--join", c1.DBAddress + "," + c2.DBAddress}, common(w)...)
	fail := func(err error) (*ProcCluster, error) {
		c.Close()
		return nil, fmt.Errorf("%w\nmember logs:\n%s", err, c.LogTail(30))
	}
	for _, m := range c.Members {
		if err := m.Start(); err != nil {
			return fail(err)
		}
		if !m.Witness {
			if err := c.WaitReady(ctx, m, time.Minute); err != nil {
				return fail(err)
			}
		}
	}
	if err := c.WaitVoters(ctx, time.Minute); err != nil {
		return fail(err)
	}
	return c, nil
}

// Close kills every member still running.
func (c *ProcCluster) Close() {
	for _, m := range c.Members {
		m.Kill()
	}
}

// Ready reports whether a control node answers /readyz with 200; otherwise
// the error carries the node's answer.
func (c *ProcCluster) Ready(ctx context.Context, m *Member) error {
	req, err := http.NewRequestWithContext(ctx, "GET", m.URL()+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz %s: %s", resp.Status, strings.Join(strings.Fields(string(body)), " "))
	}
	return nil
}

// WaitReady waits until the control node is ready (its process alive).
func (c *ProcCluster) WaitReady(ctx context.Context, m *Member, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if !m.Running() {
			return fmt.Errorf("%s exited while starting; see %s", m.Name, m.LogPath)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = c.Ready(rctx, m)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s: %v (log %s)", m.Name, timeout, last, m.LogPath)
}

// ClusterStatus is GET /v1/cluster.
type ClusterStatus struct {
	Leader  string         `json:"leader"`
	This    string         `json:"this"`
	Members []store.Member `json:"members"`
}

// Role is the role of the member at addr ("" if not a member).
func (s ClusterStatus) Role(addr string) string {
	for _, m := range s.Members {
		if m.Address == addr {
			return m.Role
		}
	}
	return ""
}

// Status asks a control node for the cluster's membership and leader.
func (c *ProcCluster) Status(ctx context.Context, via *Member) (ClusterStatus, error) {
	var s ClusterStatus
	err := via.Admin().Do(ctx, "GET", "/v1/cluster", nil, &s)
	return s, err
}

// Leader finds the leader through any running control node.
func (c *ProcCluster) Leader(ctx context.Context) (*Member, error) {
	var errs []error
	for _, m := range c.Controls() {
		if !m.Running() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		s, err := c.Status(sctx, m)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, x := range c.Members {
			if x.DBAddress == s.Leader {
				return x, nil
			}
		}
		errs = append(errs, fmt.Errorf("leader %q is not one of the members", s.Leader))
	}
	return nil, fmt.Errorf("no leader known: %w", errors.Join(errs...))
}

// WaitVoters waits until every member is a voter and a leader is known.
func (c *ProcCluster) WaitVoters(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		for _, via := range c.Controls() {
			if !via.Running() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			s, err := c.Status(sctx, via)
			cancel()
			if err != nil {
				last = err.Error()
				continue
			}
			voters := 0
			for _, m := range c.Members {
				if s.Role(m.DBAddress) == "voter" {
					voters++
				}
			}
			if voters == len(c.Members) && s.Leader != "" {
				return nil
			}
			last = fmt.Sprintf("%+v", s)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("members not all voters within %s: %s", timeout, last)
}

// WaitInCluster waits until m's own dqlite node follows the leader the
// control nodes report: it is back in the cluster and receiving its log.
func (c *ProcCluster) WaitInCluster(ctx context.Context, m *Member, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if !m.Running() {
			return fmt.Errorf("%s exited; see %s", m.Name, m.LogPath)
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		seen, err := m.LeaderSeen(lctx)
		var leader *Member
		if err == nil {
			leader, err = c.Leader(lctx)
		}
		cancel()
		if err == nil && seen != "" && seen == leader.DBAddress {
			return nil
		}
		last = fmt.Errorf("%s follows %q: %v", m.Name, seen, err)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not back in the cluster within %s: %v", m.Name, timeout, last)
}

// TransferLeadership makes `to` the leader, once its replica has caught
// up with the leader's (within timeout).
//
// Raft hands leadership only to a member whose log is up to date, and the
// leader gives a transfer one election timeout (15 x the network latency:
// 900 ms by default) for the target to catch up and win; after that dqlite
// answers "leadership transfer failed" and the old leader keeps leading.
// A member that was cut off (a partition, a restart) is far behind when it
// comes back: what the leader sent it during the outage waits in a TCP
// connection in exponential retransmission backoff, then arrives one entry
// per message. So the transfer is asked for only once `to` holds every
// event the leader held when we looked.
func (c *ProcCluster) TransferLeadership(ctx context.Context, to *Member, timeout time.Duration) error {
	leader, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	if leader == to {
		return nil
	}
	if err := c.WaitCaughtUp(ctx, to, leader, timeout); err != nil {
		return fmt.Errorf("transfer leadership from %s to %s: %w", leader.Name, to.Name, err)
	}
	s, err := c.Status(ctx, c.Controls()[0])
	if err != nil {
		return err
	}
	var id uint64
	for _, m := range s.Members {
		if m.Address == to.DBAddress {
			id = m.ID
		}
	}
	cli, err := dqliteClient(ctx, c.CA, leader.DBAddress)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := cli.Transfer(ctx, id); err != nil {
		return fmt.Errorf("transfer leadership from %s to %s: %w", leader.Name, to.Name, err)
	}
	return nil
}

// WaitCaughtUp waits until m's replica holds every event that of's replica
// holds now.
func (c *ProcCluster) WaitCaughtUp(ctx context.Context, m, of *Member, timeout time.Duration) error {
	want, err := c.ReplicaLastSeq(ctx, of)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.ReplicaLastSeq(ctx, m)
		if err == nil && got >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's replica not caught up with %s's within %s: it holds events up to %d of %d (%v)", m.Name, of.Name, timeout, got, want, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ReplicaLastSeq is the newest event sequence in m's own copy of the
// database. SQL always reads through the leader, so a follower's progress
// shows only in its local files: dqlite dumps them (the database and its
// WAL) and SQLite reads them here.
func (c *ProcCluster) ReplicaLastSeq(ctx context.Context, m *Member) (int64, error) {
	cli, err := dqliteClient(ctx, c.CA, m.DBAddress)
	if err != nil {
		return 0, fmt.Errorf("connect to %s's dqlite node: %w", m.Name, err)
	}
	defer cli.Close()
	files, err := cli.Dump(ctx, store.DatabaseName)
	if err != nil {
		return 0, fmt.Errorf("dump %s's replica: %w", m.Name, err)
	}
	dir, err := os.MkdirTemp("", "lekiwi-replica-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o600); err != nil {
			return 0, err
		}
	}
	db, err := sql.Open("sqlite3", filepath.Join(dir, store.DatabaseName))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var seq int64
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read %s's replica: %w", m.Name, err)
	}
	return seq, nil
}

// DqliteDeadPeerTimeout is how long a dqlite node keeps a connection whose
// peer went silent (packets dropped, no reset): go-dqlite gives every
// connection it proxies TCP keepalives every 3 s and a 30 s TCP user
// timeout, and dqlite has no transaction timeout of its own. A member cut
// off between taking the leader's write lock and committing holds that
// lock, and stops every other writer, this long.
const DqliteDeadPeerTimeout = 30 * time.Second

var probeSeq atomic.Int64

// Write makes one small write through the member's admin socket (an
// enrollment token, which is an event plus a row): the probe of "writes
// work".
func (m *Member) Write(ctx context.Context) error {
	id := fmt.Sprintf("chaos-probe-%d", probeSeq.Add(1))
	return m.Admin().Do(ctx, "POST", protocol.EnrollmentsPath, protocol.EnrollmentRequest{RobotID: id, TTL: "1h"}, nil)
}

// WaitWrite retries Write (each attempt bounded by per) until one succeeds
// or timeout passes; it returns when the successful write finished.
func (m *Member) WaitWrite(ctx context.Context, per, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		wctx, cancel := context.WithTimeout(ctx, per)
		last = m.Write(wctx)
		cancel()
		if last == nil {
			return time.Now(), nil
		}
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		time.Sleep(25 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no write through %s succeeded within %s: %w", m.Name, timeout, last)
}

// LogTail returns the last n lines of every member's log.
func (c *ProcCluster) LogTail(n int) string {
	var b strings.Builder
	for _, m := range c.Members {
		data, _ := os.ReadFile(m.LogPath)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s (%s)\n%s\n", m.Name, m.LogPath, strings.Join(lines, "\n"))
	}
	return b.String()
}

// ChaosFleet is simulated robots split over the control nodes: robot i
// lists the servers rotated by i, so each node starts with its share and
// every robot can fail over to every node.
type ChaosFleet struct {
	Fleets  []*Fleet
	Robots  []*SimRobot
	LogPath string // the agents' warnings

	logFile *os.File

	mu      sync.Mutex
	acked   map[string]map[uint64]bool // event sequences acknowledged, per robot
	lastAck map[string]time.Time       // when each robot last had an event acknowledged
}

// NewChaosFleet prepares n robots (mTLS identities from ca) under dir; the
// agents' warnings go to dir/agents.log.
func NewChaosFleet(n int, servers []string, ca *pki.CA, dir string) (*ChaosFleet, error) {
	cf := &ChaosFleet{acked: map[string]map[uint64]bool{}, lastAck: map[string]time.Time{}, LogPath: filepath.Join(dir, "agents.log")}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(cf.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cf.logFile = logf
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	k := len(servers)
	for i := range k {
		count := n/k + min(1, max(0, n%k-i))
		if count == 0 {
			continue
		}
		rot := append(slices.Clone(servers[i:]), servers[:i]...)
		f, err := NewFleet(FleetOptions{
			Robots: count, FirstIndex: len(cf.Robots), Servers: rot, Dir: dir, CA: ca, Seed: uint64(i) << 20,
			// Telemetry stays quiet: the load is the numbered events.
			TelemetrySampleInterval: 30 * time.Second, TelemetryMinInterval: time.Minute,
			// Production backoff shape, shortened like the other labs: a
			// reconnect after losing a server waits [0, 2 s] extra.
			FirstReconnectJitter: 2 * time.Second,
			Backoff:              backoff.Policy{Base: 100 * time.Millisecond, Cap: 2 * time.Second},
			OnAck:                cf.onAck,
			Logger:               logger,
		})
		if err != nil {
			return nil, err
		}
		cf.Fleets = append(cf.Fleets, f)
		cf.Robots = append(cf.Robots, f.Robots()...)
	}
	return cf, nil
}

func (cf *ChaosFleet) onAck(r *SimRobot, seq uint64, t protocol.Type, _ time.Duration) {
	if t != protocol.TypeEvent {
		return
	}
	cf.mu.Lock()
	m := cf.acked[r.ID]
	if m == nil {
		m = map[uint64]bool{}
		cf.acked[r.ID] = m
	}
	m[seq] = true
	cf.lastAck[r.ID] = time.Now()
	cf.mu.Unlock()
}

// Unserved lists robots that have had no event acknowledged since t.
func (cf *ChaosFleet) Unserved(t time.Time) []string {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	var ids []string
	for _, r := range cf.Robots {
		if cf.lastAck[r.ID].Before(t) {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// Acked is how many events control acknowledged, over all robots.
func (cf *ChaosFleet) Acked() int {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	n := 0
	for _, m := range cf.acked {
		n += len(m)
	}
	return n
}

// Start starts every robot.
func (cf *ChaosFleet) Start(ctx context.Context) error {
	for _, f := range cf.Fleets {
		if err := f.Start(ctx, 0); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops every robot.
func (cf *ChaosFleet) Stop() error {
	var errs []error
	for _, f := range cf.Fleets {
		errs = append(errs, f.Stop())
	}
	return errors.Join(errs...)
}

// LogTail is the last n lines of the agents' warnings.
func (cf *ChaosFleet) LogTail(n int) string {
	data, _ := os.ReadFile(cf.LogPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Connected counts robots in state Connected.
func (cf *ChaosFleet) Connected() int {
	n := 0
	for _, f := range cf.Fleets {
		n += f.Connected()
	}
	return n
}

// States counts robots by agent state ("connected: 998, reconnecting: 2").
func (cf *ChaosFleet) States() string {
	counts := map[string]int{}
	for _, r := range cf.Robots {
		counts[r.State().String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// WaitConnected waits until every robot is connected.
func (cf *ChaosFleet) WaitConnected(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for cf.Connected() < len(cf.Robots) {
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("%d of %d robots connected after %s (%s)", cf.Connected(), len(cf.Robots), timeout, cf.States())
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), nil
}

// WaitConnectedInControl waits until control, read through via's admin
// socket, lists every robot as connected. The agents' own state is not
// enough: the gateway answers a hello before the robot's connection record
// commits, so an agent is connected a moment before control knows it.
func (cf *ChaosFleet) WaitConnectedInControl(ctx context.Context, via *Member, timeout time.Duration) error {
	start := time.Now()
	for {
		robots, err := RobotsSnapshot(ctx, via)
		missing := len(cf.Robots)
		if err == nil {
			connected := map[string]bool{}
			for _, raw := range robots {
				var r struct {
					ID     string `json:"id"`
					Status struct {
						Connected bool `json:"connected"`
					} `json:"status"`
				}
				if json.Unmarshal(raw, &r) == nil {
					connected[r.ID] = r.Status.Connected
				}
			}
			missing = 0
			for _, r := range cf.Robots {
				if !connected[r.ID] {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("%d of %d robots not connected in control (read through %s) after %s (last read error: %v)", missing, len(cf.Robots), via.Name, timeout, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitDrained waits until every robot is connected with nothing left
// unacknowledged in its queue.
func (cf *ChaosFleet) WaitDrained(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		pending, down := 0, 0
		for _, r := range cf.Robots {
			if r.State() != agent.Connected {
				down++
			}
			pending += r.Stats().Queue.Pending
		}
		if pending == 0 && down == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("queues not drained after %s: %d items pending, %d robots not connected", timeout, pending, down)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ConnWatch samples every robot's connection state and records outages
// (from the first sample not Connected to the next sample Connected).
type ConnWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	down    map[string]time.Time // robots down now, since
	outages []Outage
}

// Outage is one robot's time away from control.
type Outage struct {
	Robot      string
	Start, End time.Time
}

// Watch starts sampling every period.
func (cf *ChaosFleet) Watch(period time.Duration) *ConnWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &ConnWatch{cancel: cancel, done: make(chan struct{}), down: map[string]time.Time{}}
	go func() {
		defer close(w.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			now := time.Now()
			w.mu.Lock()
			for _, r := range cf.Robots {
				up := r.State() == agent.Connected
				since, wasDown := w.down[r.ID]
				switch {
				case !up && !wasDown:
					w.down[r.ID] = now
				case up && wasDown:
					delete(w.down, r.ID)
					w.outages = append(w.outages, Outage{Robot: r.ID, Start: since, End: now})
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends sampling.
func (w *ConnWatch) Stop() { w.cancel(); <-w.done }

// Since summarises outages that began at or after t0: how many robots had
// one, how many are still down, and when the last of them came back.
func (w *ConnWatch) Since(t0 time.Time) (robots, stillDown int, lastBack time.Time, longest time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string]bool{}
	for _, o := range w.outages {
		if o.Start.Before(t0) {
			continue
		}
		seen[o.Robot] = true
		if o.End.After(lastBack) {
			lastBack = o.End
		}
		longest = max(longest, o.End.Sub(o.Start))
	}
	for id, since := range w.down {
		if !since.Before(t0) {
			seen[id] = true
		}
		stillDown++
	}
	return len(seen), stillDown, lastBack, longest
}

// EventLoad makes every robot emit numbered events ("chaos.tick", data
// {"n": k} with k = 0, 1, 2 … per robot) at a steady rate.
type EventLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	emitted map[string]int
	errs    int
	lastErr error
}

// ChaosEventKind is the kind of the load's events.
const ChaosEventKind = "chaos.tick"

// StartEventLoad starts one emitter per robot, each emitting every period
// (first one at a random offset so the fleet's events spread evenly).
func StartEventLoad(robots []*SimRobot, every time.Duration) *EventLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &EventLoad{cancel: cancel, emitted: map[string]int{}}
	for _, r := range robots {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(every)):
			}
			t := time.NewTicker(every)
			defer t.Stop()
			for n := 0; ; {
				data, _ := json.Marshal(map[string]int{"n": n})
				if err := r.Emit(ctx, protocol.Event{Kind: ChaosEventKind, Data: data}); err != nil {
					if ctx.Err() != nil {
						return
					}
					l.mu.Lock()
					l.errs++
					l.lastErr = err
					l.mu.Unlock()
				} else {
					n++
					l.mu.Lock()
					l.emitted[r.ID] = n
					l.mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	return l
}

// Stop ends the load and returns how many events each robot emitted.
func (l *EventLoad) Stop() map[string]int {
	l.cancel()
	l.wg.Wait()
	return l.Emitted()
}

// Emitted is the number of events each robot has emitted so far.
func (l *EventLoad) Emitted() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.emitted))
	for k, v := range l.emitted {
		out[k] = v
	}
	return out
}

// Errors is how many emits failed, and the last failure.
func (l *EventLoad) Errors() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs, l.lastErr
}

// DeliveryReport is what the event log holds of a load.
type DeliveryReport struct {
	Emitted    int // events the robots emitted (durably queued)
	Acked      int // of those, acknowledged by control
	Stored     int // chaos events found in the log
	Lost       int // emitted but not in the log
	LostAcked  int // acknowledged but not in the log
	Duplicates int // stored more than once (same number or same robot sequence)
	Examples   []string
	LogEvents  int // every event in the log
}

func (r *DeliveryReport) example(format string, args ...any) {
	if len(r.Examples) < 10 {
		r.Examples = append(r.Examples, fmt.Sprintf(format, args...))
	}
}

// OK is true when nothing was lost and nothing duplicated.
func (r DeliveryReport) OK() bool { return r.Lost == 0 && r.LostAcked == 0 && r.Duplicates == 0 }

func (r DeliveryReport) String() string {
	return fmt.Sprintf("emitted %d, acknowledged %d, stored %d, lost %d (acknowledged %d), duplicates %d; %d events in the log%s",
		r.Emitted, r.Acked, r.Stored, r.Lost, r.LostAcked, r.Duplicates, r.LogEvents, strings.Join(append([]string{""}, r.Examples...), "\n  "))
}

// VerifyDelivery reads the whole event log through a control node's API
// (admin socket: no rate limit) and checks that every event the load
// emitted, and every event control acknowledged, is there exactly once.
func VerifyDelivery(ctx context.Context, via *Member, emitted map[string]int, cf *ChaosFleet) (DeliveryReport, error) {
	var rep DeliveryReport
	type key struct {
		robot string
		n     int
	}
	count := map[key]int{}
	seqs := map[string]map[uint64]bool{}
	var after int64
	for {
		var page api.EventPage
		if err := via.Admin().Do(ctx, "GET", fmt.Sprintf("/v1/events?after=%d&limit=%d", after, api.MaxLimit), nil, &page); err != nil {
			return rep, fmt.Errorf("read the event log through %s: %w", via.Name, err)
		}
		if len(page.Events) == 0 {
			break
		}
		after = page.Next
		for _, e := range page.Events {
			rep.LogEvents++
			if e.Type != store.TypeRobotEvent {
				continue
			}
			var ev protocol.Event
			var d struct {
				N *int `json:"n"`
			}
			if json.Unmarshal(e.Data, &ev) != nil || ev.Kind != ChaosEventKind || json.Unmarshal(ev.Data, &d) != nil || d.N == nil {
				continue
			}
			rep.Stored++
			count[key{e.RobotID, *d.N}]++
			s := seqs[e.RobotID]
			if s == nil {
				s = map[uint64]bool{}
				seqs[e.RobotID] = s
			}
			if s[e.RobotSeq] {
				rep.Duplicates++
				rep.example("robot %s sequence %d stored twice", e.RobotID, e.RobotSeq)
			}
			s[e.RobotSeq] = true
		}
	}
	for robot, n := range emitted {
		rep.Emitted += n
		for i := range n {
			switch c := count[key{robot, i}]; {
			case c == 0:
				rep.Lost++
				rep.example("robot %s event %d missing", robot, i)
			case c > 1:
				rep.Duplicates += c - 1
				rep.example("robot %s event %d stored %d times", robot, i, c)
			}
		}
	}
	for k, c := range count {
		if k.n >= emitted[k.robot] && c > 0 {
			// Stored but never counted as emitted: Emit failed after
			// queueing? Report it; it is neither loss nor duplicate.
			rep.example("robot %s event %d stored but not counted as emitted", k.robot, k.n)
		}
	}
	cf.mu.Lock()
	for robot, m := range cf.acked {
		for seq := range m {
			rep.Acked++
			if !seqs[robot][seq] {
				rep.LostAcked++
				rep.example("robot %s sequence %d acknowledged but not in the log", robot, seq)
			}
		}
	}
	cf.mu.Unlock()
	return rep, nil
}

// RobotsSnapshot lists every robot through a control node's API (admin
// socket), sorted by id, as JSON for comparison.
func RobotsSnapshot(ctx context.Context, via *Member) ([]json.RawMessage, error) {
	var out []json.RawMessage
	after := ""
	for {
		var page struct {
			Robots []json.RawMessage `json:"robots"`
			Next   string            `json:"next"`
		}
		if err := via.Admin().Do(ctx, "GET", "/v1/robots?limit=1000&after="+after, nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Robots...)
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// LogDigest summarises the whole event log read through a control node:
// how many events, the newest sequence, and a SHA-256 over all of them.
type LogDigest struct {
	Events  int
	LastSeq int64
	SHA256  string
}

// EventLogDigest reads the event log through via's API (admin socket).
func EventLogDigest(ctx context.Context, via *Member) (LogDigest, error) {
	var d LogDigest
	h := sha256.New()
	for {
		var page struct {
			Events []json.RawMessage `json:"events"`
			Next   int64             `json:"next"`
		}
		if err := via.Admin().Do(ctx, "GET", fmt.Sprintf("/v1/events?after=%d&limit=%d", d.LastSeq, api.MaxLimit), nil, &page); err != nil {
			return d, err
		}
		if len(page.Events) == 0 {
			d.SHA256 = hex.EncodeToString(h.Sum(nil))
			return d, nil
		}
		for _, e := range page.Events {
			h.Write(e)
			h.Write([]byte{'\n'})
		}
		d.Events += len(page.Events)
		d.LastSeq = page.Next
	}
}

// Netns is a network namespace created for a test.
type Netns struct{ Name string }

// NewNetns creates a namespace named prefix-<random> with loopback up.
func NewNetns(prefix string) (*Netns, error) {
	n := &Netns{Name: fmt.Sprintf("%s-%08x", prefix, rand.Uint32())}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", n.Name, err, out)
	}
	if out, err := exec.Command("ip", "netns", "exec", n.Name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		n.Delete()
		return nil, fmt.Errorf("bring up lo in %s: %w: %s", n.Name, err, out)
	}
	return n, nil
}

// Pids lists the processes inside the namespace.
func (n *Netns) Pids() []int {
	out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Delete kills what still runs inside the namespace (all of it started by
// the test that made it) and deletes it, iptables rules included.
func (n *Netns) Delete() error {
	for range 50 {
		pids := n.Pids()
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// Partition cuts one member's dqlite traffic inside the current network
// namespace with iptables: packets its process sends to the other
// members' db ports, and packets anyone else sends to its db port, are
// dropped. The member must run with its own Gid (owner match; all
// members share 127.0.0.1, so addresses cannot tell them apart). Its HTTPS
// port stays reachable, so clients and robots still talk to the minority.
type Partition struct {
	chain string
}

// PartitionMember installs the rules.
func PartitionMember(m *Member, others []*Member) (*Partition, error) {
	if m.Gid == 0 {
		return nil, fmt.Errorf("member %s has no group id of its own to match", m.Name)
	}
	_, port, _ := net.SplitHostPort(m.DBAddress)
	var otherPorts []string
	for _, o := range others {
		_, p, _ := net.SplitHostPort(o.DBAddress)
		otherPorts = append(otherPorts, p)
	}
	p := &Partition{chain: "LEKIWI-CHAOS"}
	gid := strconv.FormatUint(uint64(m.Gid), 10)
	for _, args := range [][]string{
		{"-N", p.chain},
		{"-A", p.chain, "-p", "tcp", "-m", "owner", "--gid-owner", gid, "-m", "multiport", "--dports", strings.Join(otherPorts, ","), "-j", "DROP"},
		{"-A", p.chain, "-p", "tcp", "--dport", port, "-m", "owner", "!", "--gid-owner", gid, "-j", "DROP"},
		{"-I", "OUTPUT", "-j", p.chain},
	} {
		if err := iptables(args...); err != nil {
			p.Heal()
			return nil, err
		}
	}
	return p, nil
}

// Heal removes the rules.
func (p *Partition) Heal() error {
	var errs []error
	for iptables("-D", "OUTPUT", "-j", p.chain) == nil {
	}
	for _, args := range [][]string{{"-F", p.chain}, {"-X", p.chain}} {
		if err := iptables(args...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
