package lab

// A control cluster of real processes (two control nodes and a witness,
// mTLS from a lab CA) that tests kill, stop, restart and partition.

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	dqclient "github.com/canonical/go-dqlite/client"
	_ "github.com/mattn/go-sqlite3" // reads a member's dumped replica

	"github.com/lekiwi/heartbeat/control/admin"
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
	// Binary is the control binary the member runs (see ControlBinary).
	Binary string
	// CA is the lab CA; LeaderSeen dials the member's dqlite node with it.
	CA *pki.CA

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
	fmt.Fprintf(f, "=== %s start %s: %s %s\n", time.Now().Format(time.RFC3339Nano), m.Name, m.Binary, strings.Join(m.Args, " "))
	cmd := exec.Command(m.Binary, m.Args...)
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
	cli, err := dqliteClient(ctx, m.CA, m.DBAddress)
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
			Gid: o.Gids[i], Binary: o.Bin, CA: c.CA}
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

// Write makes one small write through the member's admin socket (an
// enrollment token, which is an event plus a row): the probe of "writes
// work".
func (m *Member) Write(ctx context.Context) error {
	id := fmt.Sprintf("chaos-probe-%016x", rand.Uint64())
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

// WaitReady polls base/readyz with c until control answers 200, for at most
// timeout.
func WaitReady(ctx context.Context, c *http.Client, base string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("control at %s not ready after %s (last error: %v)", base, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AdminToken mints a token through the control binary's admin command, as
// an operator on the control host would.
func AdminToken(ctx context.Context, controlBinary, dataDir string) (string, error) {
	out, err := exec.CommandContext(ctx, controlBinary, "token", "create", "--data-dir", dataDir, "--name", "bench", "--role", "admin").Output()
	if err != nil {
		return "", fmt.Errorf("create a bench token with %s token create: %w", controlBinary, err)
	}
	return strings.TrimSpace(string(out)), nil
}
