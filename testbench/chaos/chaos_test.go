package chaos

// Chaos acceptance of high availability, with real processes: a cluster of two
// control nodes and a witness (bin/control, mTLS from a lab CA) under load
// from simulated agents, each emitting numbered events.
//
//	go test -tags libsqlite3 -run Chaos ./testbench/chaos                           # 200 agents
//	go test -tags libsqlite3 -run Chaos ./testbench/chaos -args -chaos.agents=1000  # make chaos

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/testbench/lab"
)

var (
	chaosAgents = flag.Int("chaos.agents", 0, "simulated agents in the chaos tests (default: $LEKIWI_CHAOS_AGENTS, else 200, 100 with -short; make chaos: 1000)")
	chaosEvery  = flag.Duration("chaos.every", time.Second, "each agent emits one event this often in the chaos tests")
)

// envChaosNetns tells a re-executed test binary that it runs inside the
// network namespace its parent made for it.
const envChaosNetns = "LEKIWI_CHAOS_NETNS"

func chaosAgentCount(t *testing.T) int {
	if *chaosAgents > 0 {
		return *chaosAgents
	}
	if v := os.Getenv("LEKIWI_CHAOS_AGENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("LEKIWI_CHAOS_AGENTS=%q is not a positive number", v)
		}
		return n
	}
	if testing.Short() {
		return 100
	}
	return 200
}

var (
	chaosBinOnce sync.Once
	chaosBin     string
	chaosBinErr  error
)

// chaosControlBin builds bin/control once per test binary (or takes
// LEKIWI_CONTROL_BIN).
func chaosControlBin(t *testing.T) string {
	t.Helper()
	chaosBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lekiwi-chaos-bin-")
		if err != nil {
			chaosBinErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		chaosBin, chaosBinErr = lab.ControlBinary(ctx, dir)
	})
	if chaosBinErr != nil {
		t.Fatal(chaosBinErr)
	}
	return chaosBin
}

type chaosEnv struct {
	cluster *lab.ProcCluster
	fleet   *Fleet
	agents  int
}

// startChaos starts the three-process cluster and a fleet of agents split
// over the two control nodes, and waits for all of them to connect. Every
// process is killed when the test ends, whatever its outcome; on failure
// the members' log tails are printed.
func startChaos(t *testing.T, o lab.ProcClusterOptions) *chaosEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if o.Bin == "" {
		o.Bin = chaosControlBin(t)
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	start := time.Now()
	c, err := lab.StartProcCluster(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("member logs:\n%s", c.LogTail(40))
		}
	})
	t.Logf("cluster of 3 processes up in %s: c1 %s (db %s), c2 %s (db %s), witness (db %s)", time.Since(start).Round(time.Millisecond),
		c.Members[0].Listen, c.Members[0].DBAddress, c.Members[1].Listen, c.Members[1].DBAddress, c.Members[2].DBAddress)
	n := chaosAgentCount(t)
	start = time.Now()
	f, err := NewFleet(n, []string{c.Members[0].URL(), c.Members[1].URL()}, c.CA, filepath.Join(o.Dir, "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil { // the agents outlive this function

		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Stop(); err != nil {
			t.Logf("stop fleet: %v", err)
		}
		if t.Failed() {
			t.Logf("agent warnings (%s):\n%s", f.LogPath, f.LogTail(30))
		}
	})
	if _, err := f.WaitConnected(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitConnectedInControl(ctx, c.Members[0], time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d agents (mTLS) connected in %s", n, time.Since(start).Round(time.Millisecond))
	return &chaosEnv{cluster: c, fleet: f, agents: n}
}

// finish stops the load, waits for every queue to drain and checks the
// event log through via: every emitted and every acknowledged event
// exactly once.
func (e *chaosEnv) finish(t *testing.T, load *EventLoad, via *lab.Member) DeliveryReport {
	t.Helper()
	emitted := load.Stop()
	if n, err := load.Errors(); n > 0 {
		t.Logf("%d emits failed (not counted as emitted); last: %v", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	took, err := e.fleet.WaitDrained(ctx, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyDelivery(ctx, via, emitted, e.fleet)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("queues drained %s after the load stopped; %s", took.Round(time.Millisecond), rep)
	if !rep.OK() {
		t.Errorf("events lost or duplicated: %s", rep)
	}
	if rep.Emitted == 0 || rep.Acked < rep.Emitted {
		t.Errorf("load did not run as intended: %s", rep)
	}
	return rep
}

func otherControl(c *lab.ProcCluster, not *lab.Member) *lab.Member {
	for _, m := range c.Controls() {
		if m != not && m.Running() {
			return m
		}
	}
	return nil
}

// killLeader kills the leader with SIGKILL and measures how long until a
// write through a surviving control node succeeds and until every agent
// that lost its connection is back.
func killLeader(t *testing.T, e *chaosEnv, watch *ConnWatch) (victim *lab.Member, writeAfter, agentsAfter time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	victim, err := e.cluster.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	survivor := otherControl(e.cluster, victim)
	acked0 := e.fleet.Acked()
	t0 := time.Now()
	victim.Kill()
	done, err := survivor.WaitWrite(ctx, 2*time.Second, 60*time.Second)
	if err != nil {
		t.Fatalf("after kill -9 of leader %s: %v", victim.Name, err)
	}
	writeAfter = done.Sub(t0)
	// Wait until the fleet is whole again. Robots on the dead node notice
	// at once (their sockets are reset); robots on a survivor may be sent
	// away while it could not commit, which stops once writes work again.
	for {
		if time.Since(t0) > 90*time.Second {
			t.Fatalf("after kill -9 of %s only %d of %d agents connected after 90 s (%s)", victim.Name, e.fleet.Connected(), e.agents, e.fleet.States())
		}
		if time.Since(done) > time.Second && e.fleet.Connected() == e.agents {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the watcher samples every 20 ms: let it see the whole fleet up
	robots, stillDown, lastBack, longest := watch.Since(t0)
	switch {
	case stillDown > 0:
		agentsAfter = time.Since(t0) // not seen back yet: count until now, never zero
	case robots > 0:
		agentsAfter = lastBack.Sub(t0)
	}
	t.Logf("kill -9 of leader %s (witness: %v): first write through %s %s after the kill; %d agents lost their connection, all back %s after the kill (longest outage %s); %d events acknowledged meanwhile",
		victim.Name, victim.Witness, survivor.Name, writeAfter.Round(time.Millisecond), robots, agentsAfter.Round(time.Millisecond),
		longest.Round(time.Millisecond), e.fleet.Acked()-acked0)
	if writeAfter > 5*time.Second {
		t.Errorf("writes came back %s after the leader was killed, want within 5 s", writeAfter.Round(time.Millisecond))
	}
	if agentsAfter > 15*time.Second {
		t.Errorf("agents all back %s after the leader was killed, want within 15 s", agentsAfter.Round(time.Millisecond))
	}
	return victim, writeAfter, agentsAfter
}

// Kill -9 the leader under load. Writes succeed again within
// 5 s, every agent is reconnected within 15 s, and no event is lost or
// stored twice. Two rounds: whatever member leads first (the control node
// that started the cluster, as a rule; control nodes hold the agents), then,
// once it is back, the other kind (the witness made leader, or the control
// node leading if the witness died first).
func TestChaosLeaderKill(t *testing.T) {
	if !inNetns(t, false) {
		return
	}
	e := startChaos(t, lab.ProcClusterOptions{})
	load := StartEventLoad(e.fleet.Robots, *chaosEvery)
	defer load.Stop()
	watch := e.fleet.Watch(20 * time.Millisecond)
	defer watch.Stop()
	time.Sleep(3 * time.Second)

	// Round 1: whatever leads. Round 2, after the victim is back: the
	// other kind — the witness made leader if a control node died first,
	// else the control node that leads now.
	victim, _, _ := killLeader(t, e, watch)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t1 := time.Now()
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	if !victim.Witness {
		if err := e.cluster.WaitReady(ctx, victim, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.cluster.WaitInCluster(ctx, victim, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted with the same arguments: back in the cluster after %s", victim.Name, time.Since(t1).Round(time.Millisecond))
	if _, err := e.fleet.WaitConnected(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	wasWitness := victim.Witness
	if !wasWitness {
		if err := e.cluster.TransferLeadership(ctx, e.cluster.Witness(), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if victim, _, _ = killLeader(t, e, watch); victim.Witness == wasWitness {
		t.Fatalf("round 2 killed %s again; want the other kind of member", victim.Name)
	}
	time.Sleep(3 * time.Second) // more load on the survivors
	e.finish(t, load, otherControl(e.cluster, victim))
}

// Rolling restart of all three members (SIGTERM, wait,
// start with the same arguments) under load, leader last: no event lost.
func TestChaosRollingRestart(t *testing.T) {
	if !inNetns(t, false) {
		return
	}
	e := startChaos(t, lab.ProcClusterOptions{})
	c := e.cluster
	load := StartEventLoad(e.fleet.Robots, *chaosEvery)
	defer load.Stop()
	watch := e.fleet.Watch(20 * time.Millisecond)
	defer watch.Stop()
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	order := slices.DeleteFunc(slices.Clone(c.Members), func(m *lab.Member) bool { return m == leader })
	order = append(order, leader)
	for _, m := range order {
		t0 := time.Now()
		stopped, clean := m.Stop(30 * time.Second)
		if !clean {
			t.Errorf("%s did not exit within 30 s of SIGTERM (killed)", m.Name)
		}
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		if !m.Witness {
			if err := c.WaitReady(ctx, m, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.WaitInCluster(ctx, m, time.Minute); err != nil {
			t.Fatal(err)
		}
		back := time.Since(t0)
		if _, err := e.fleet.WaitConnected(ctx, time.Minute); err != nil {
			t.Fatalf("after restarting %s: %v", m.Name, err)
		}
		for _, w := range c.Controls() {
			if _, err := w.WaitWrite(ctx, 5*time.Second, 30*time.Second); err != nil {
				t.Fatalf("after restarting %s: %v", m.Name, err)
			}
		}
		robots, _, lastBack, longest := watch.Since(t0)
		t.Logf("restart %s (was leader: %v): exited %s after SIGTERM, back in the cluster %s after it; %d agents moved, all back after %s (longest outage %s)",
			m.Name, m == leader, stopped.Round(time.Millisecond), back.Round(time.Millisecond), robots,
			max(0, lastBack.Sub(t0)).Round(time.Millisecond), longest.Round(time.Millisecond))
		time.Sleep(2 * time.Second) // load on the whole cluster before the next one
	}
	e.finish(t, load, c.Members[0])
}

// writeStats is what writeRound saw.
type writeStats struct {
	writes  int
	first   time.Time // end of the first successful write
	slowest time.Duration
}

// writeRound writes through every control node in turn, every 100 ms, for
// 5 s from t0 (and at least until one write succeeded, at most 30 s).
func writeRound(ctx context.Context, t *testing.T, c *lab.ProcCluster, t0 time.Time, phase string) writeStats {
	t.Helper()
	var st writeStats
	for time.Since(t0) < 5*time.Second || st.first.IsZero() {
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("no write within 30 s %s", phase)
		}
		for _, m := range c.Controls() {
			s := time.Now()
			if err := m.Write(ctx); err != nil {
				t.Fatalf("write through %s %s: %v", m.Name, phase, err)
			}
			if st.first.IsZero() {
				st.first = time.Now()
			}
			st.writes++
			st.slowest = max(st.slowest, time.Since(s))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return st
}

// The witness is killed; the two control nodes keep serving
// writes. Restarted, it rejoins as a voter — and its vote counts: with one
// control node stopped, the other still writes.
func TestChaosWitnessLoss(t *testing.T) {
	if !inNetns(t, false) {
		return
	}
	e := startChaos(t, lab.ProcClusterOptions{})
	c := e.cluster
	w := c.Witness()
	load := StartEventLoad(e.fleet.Robots, *chaosEvery)
	defer load.Stop()
	watch := e.fleet.Watch(20 * time.Millisecond)
	defer watch.Stop()
	time.Sleep(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The same write loop before the kill is the baseline: under a busy
	// machine a write can take a second with every member alive (the
	// API's transaction and both committers take turns at the leader's
	// write lock), and that is not the witness's doing.
	before := writeRound(ctx, t, c, time.Now(), "with every member up")
	t0 := time.Now()
	w.Kill()
	// Both control nodes keep writing. If the witness led, the first
	// writes wait for an election (as when the leader is killed).
	after := writeRound(ctx, t, c, t0, "with the witness dead")
	robots, _, _, _ := watch.Since(t0)
	limit := max(time.Second, 2*before.slowest)
	t.Logf("witness killed (it led: %v): %d writes through both control nodes over %s, first %s after the kill, slowest %s (before the kill: %d writes, slowest %s); %d agents lost their connection",
		leader == w, after.writes, time.Since(t0).Round(time.Millisecond), after.first.Sub(t0).Round(time.Millisecond), after.slowest.Round(time.Millisecond),
		before.writes, before.slowest.Round(time.Millisecond), robots)
	if leader != w && (after.slowest > limit || robots > 0) {
		t.Errorf("losing a follower witness disturbed the cluster: slowest write %s (limit %s: 1 s or twice the slowest before the kill), %d agents disconnected",
			after.slowest.Round(time.Millisecond), limit, robots)
	}
	if n := e.fleet.Connected(); n != e.agents {
		t.Errorf("%d of %d agents connected with the witness dead", n, e.agents)
	}

	t1 := time.Now()
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitInCluster(ctx, w, time.Minute); err != nil {
		t.Fatal(err)
	}
	s, err := c.Status(ctx, c.Members[0])
	if err != nil {
		t.Fatal(err)
	}
	if role := s.Role(w.DBAddress); role != "voter" {
		t.Fatalf("restarted witness has role %q, want voter: %+v", role, s)
	}
	t.Logf("witness restarted: following leader %s and a voter %s after start", s.Leader, time.Since(t1).Round(time.Millisecond))

	// Its vote counts: stop the control node that does not lead; the
	// other one must keep writing (quorum = it + the witness).
	leader, err = c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Members[1]
	if leader == stop {
		stop = c.Members[0]
	}
	keep := otherControl(c, stop)
	if _, clean := stop.Stop(30 * time.Second); !clean {
		t.Errorf("%s did not exit within 30 s of SIGTERM", stop.Name)
	}
	if _, err := keep.WaitWrite(ctx, 5*time.Second, 15*time.Second); err != nil {
		t.Fatalf("with %s stopped, %s + the restarted witness must make a quorum: %v", stop.Name, keep.Name, err)
	}
	t.Logf("%s stopped: writes through %s go on with the witness's vote", stop.Name, keep.Name)
	if err := stop.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx, stop, time.Minute); err != nil {
		t.Fatal(err)
	}
	e.finish(t, load, keep)
}

// One control node is cut off from the other two members
// (iptables in a network namespace made for the test). The majority keeps
// serving writes; the minority refuses them with a clear error and its
// agents move to the majority; once healed it catches up: made leader, it
// holds the same event log and robots as the majority had.
//
// The test re-executes itself inside a fresh network namespace (created and
// deleted here, with every process in it), so the cluster, the agents and
// the iptables rules never touch the host's network.
func TestChaosPartition(t *testing.T) {
	if !inNetns(t, true) {
		return
	}
	chaosPartition(t)
}

// inNetns makes the calling test run inside a network namespace of its
// own. In the test process it creates the namespace, re-executes the test
// binary there for this one test, relays its output and its verdict,
// deletes the namespace (killing whatever still runs in it) and returns
// false: the caller returns. Inside the namespace it returns true: the
// caller runs the test body.
//
// The namespace keeps iptables rules, stray traffic and the processes a
// test leaves behind off the host. (It once also kept two TLS clusters'
// first nodes from colliding on dqlite's abstract socket name; store.Open
// now makes that name unique per address.)
//
// Without root or `ip` the test runs on the host's loopback, unless
// required (the partition test needs iptables), when it is skipped.
func inNetns(t *testing.T, required bool) bool {
	t.Helper()
	if os.Getenv(envChaosNetns) != "" {
		return true
	}
	var missing string
	switch {
	case os.Geteuid() != 0:
		missing = "root (it creates a network namespace)"
	default:
		tools := []string{"ip"}
		if required {
			tools = append(tools, "iptables")
		}
		for _, tool := range tools {
			if _, err := exec.LookPath(tool); err != nil {
				missing = tool + " (Debian: iproute2, iptables; `make deps-test` installs them)"
			}
		}
	}
	var ns *lab.Netns
	if missing == "" {
		var err error
		if ns, err = lab.NewNetns("lekiwi-chaos"); err != nil {
			missing = fmt.Sprintf("a network namespace (%v)", err)
		}
	}
	if missing != "" {
		if required {
			t.Skipf("%s needs %s", t.Name(), missing)
		}
		t.Logf("running on the host's loopback: no %s", missing)
		return true
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("delete namespace: %v", err)
		}
	})
	bin := chaosControlBin(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	timeout := 20 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - 30*time.Second
	}
	args := []string{"netns", "exec", ns.Name, self, "-test.run=^" + t.Name() + "$", "-test.count=1", "-test.v",
		"-test.timeout=" + timeout.String(), fmt.Sprintf("-chaos.agents=%d", chaosAgentCount(t)), "-chaos.every=" + chaosEvery.String()}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), envChaosNetns+"="+ns.Name, lab.EnvControlBin+"="+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	t.Logf("running inside network namespace %s", ns.Name)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	skipped := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "--- SKIP: "+t.Name()) {
			skipped = true
		}
		t.Log("netns| " + line)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s inside namespace %s failed: %v", t.Name(), ns.Name, err)
	}
	if skipped {
		t.Skip("skipped inside the namespace")
	}
	return false
}

func chaosPartition(t *testing.T) {
	// A long offline timeout keeps the offline sweep from writing while
	// the replicas are compared at the end.
	e := startChaos(t, lab.ProcClusterOptions{Gids: [3]uint32{42001, 42002, 42003}, HeartbeatInterval: 10 * time.Second, OfflineGrace: 30 * time.Second})
	c := e.cluster
	c1, c2, w := c.Members[0], c.Members[1], c.Members[2]
	load := StartEventLoad(e.fleet.Robots, *chaosEvery)
	defer load.Stop()
	watch := e.fleet.Watch(20 * time.Millisecond)
	defer watch.Stop()
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	p, err := lab.PartitionMember(c2, []*lab.Member{c1, w})
	if err != nil {
		t.Fatal(err)
	}
	healed := false
	t.Cleanup(func() {
		if !healed {
			_ = p.Heal()
		}
	})
	t.Logf("c2 partitioned from c1 and the witness (leader was %s)", leader.Name)

	// The majority serves writes: at once, unless the cut caught c2 in the
	// middle of a write transaction on the leader. That transaction keeps
	// the leader's write lock until the leader drops c2's silent
	// connection (DqliteDeadPeerTimeout), and every write of the majority
	// waits for it; the margin is for the commits queued meanwhile.
	done, err := c1.WaitWrite(ctx, 2*time.Second, lab.DqliteDeadPeerTimeout+15*time.Second)
	if err != nil {
		t.Fatalf("majority side: %v", err)
	}
	t.Logf("majority (c1 + witness): write through c1 %s after the partition", done.Sub(t0).Round(time.Millisecond))

	// The minority refuses: not ready, and a write fails with a reason.
	var notReady error
	waited := time.Now()
	for notReady == nil {
		if time.Since(waited) > 30*time.Second {
			t.Fatal("minority c2 still answers /readyz 200 30 s after the partition")
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		notReady = c.Ready(rctx, c2)
		cancel()
		if notReady == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("minority c2 /readyz %s after the partition: %v", time.Since(t0).Round(time.Millisecond), notReady)
	if !strings.Contains(notReady.Error(), "503") {
		t.Errorf("minority readiness: %v, want 503", notReady)
	}
	// A write on the minority, as `control enroll create` makes it (admin
	// socket, the CLI's 30 s patience), must come back refused.
	minorityWrite := make(chan error, 1)
	ws := time.Now()
	go func() { minorityWrite <- c2.Write(ctx) }()

	// Every agent is served by the majority: the ones on c2 must be sent
	// away (or leave) and have their events acknowledged elsewhere.
	servedBy := time.Now().Add(20 * time.Second)
	for len(e.fleet.Unserved(t0)) > 0 && time.Now().Before(servedBy) {
		time.Sleep(100 * time.Millisecond)
	}
	robots, _, lastBack, _ := watch.Since(t0)
	if un := e.fleet.Unserved(t0); len(un) > 0 {
		t.Errorf("%d agents had no event acknowledged in the 20 s after the partition (%d agents left the minority; states %s): the minority holds its agents without serving them",
			len(un), robots, e.fleet.States())
	} else {
		t.Logf("every agent served by the majority %s after the partition; %d agents moved off the minority, all connected %s after the partition",
			time.Since(t0).Round(time.Millisecond), robots, max(0, lastBack.Sub(t0)).Round(time.Millisecond))
	}
	werr := <-minorityWrite
	t.Logf("minority c2 answers a write after %s: %v", time.Since(ws).Round(time.Millisecond), werr)
	if werr == nil {
		t.Fatal("the minority accepted a write")
	}
	if !strings.Contains(werr.Error(), "(unavailable)") && !strings.Contains(werr.Error(), "(timeout)") && !strings.Contains(werr.Error(), "(not_ready)") {
		t.Errorf("the minority did not refuse the write with an API error within the CLI's 30 s: %v", werr)
	}
	if _, err := e.fleet.WaitConnected(ctx, 60*time.Second); err != nil {
		t.Fatalf("agents during the partition: %v", err)
	}
	if _, err := c1.WaitWrite(ctx, 5*time.Second, 10*time.Second); err != nil {
		t.Fatalf("majority during the partition: %v", err)
	}
	time.Sleep(3 * time.Second) // load on the majority alone

	// Heal: c2 becomes ready and writes again.
	th := time.Now()
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	if err := c.WaitReady(ctx, c2, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.WaitWrite(ctx, 5*time.Second, 30*time.Second); err != nil {
		t.Fatalf("healed c2: %v", err)
	}
	if err := c.WaitInCluster(ctx, c2, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("healed: c2 ready, writing and following the leader %s after the rules went", time.Since(th).Round(time.Millisecond))
	e.finish(t, load, c1)

	// c2's replica catches up at its own pace (TransferLeadership says
	// why): wait for it while the agents still run. Waited for after they
	// stop, it could outlast the offline timeout, and the sweep would
	// write between the two digests compared below.
	if leader, err = c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	tc := time.Now()
	if err := c.WaitCaughtUp(ctx, c2, leader, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("c2's replica caught up with %s's %s after the queues drained", leader.Name, time.Since(tc).Round(time.Millisecond))

	// Caught up: with the agents stopped and the log quiet, make c2 the
	// leader (reads are served by the leader's own replica) and compare.
	if err := e.fleet.Stop(); err != nil {
		t.Fatal(err)
	}
	var before LogDigest
	for quiet := 0; quiet < 3; {
		d, err := EventLogDigest(ctx, c1)
		if err != nil {
			t.Fatal(err)
		}
		if d == before {
			quiet++
		} else {
			quiet = 0
		}
		before = d
		time.Sleep(time.Second)
	}
	robotsBefore, err := RobotsSnapshot(ctx, c1)
	if err != nil {
		t.Fatal(err)
	}
	if leader, err = c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.TransferLeadership(ctx, c2, time.Minute); err != nil {
		t.Fatal(err)
	}
	if leader, err = c.Leader(ctx); err != nil || leader != c2 {
		t.Fatalf("after the transfer the leader is %v (%v), want c2", leader, err)
	}
	after, err := EventLogDigest(ctx, c2)
	if err != nil {
		t.Fatal(err)
	}
	robotsAfter, err := RobotsSnapshot(ctx, c2)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("c2's replica differs from the majority's: event log %+v, majority had %+v", after, before)
	}
	if len(robotsAfter) != len(robotsBefore) || len(robotsAfter) != e.agents {
		t.Errorf("robots: c2 has %d, majority had %d, fleet %d", len(robotsAfter), len(robotsBefore), e.agents)
	}
	for i := range min(len(robotsAfter), len(robotsBefore)) {
		if string(robotsAfter[i]) != string(robotsBefore[i]) {
			t.Errorf("robot differs on c2:\n c2       %s\n majority %s", robotsAfter[i], robotsBefore[i])
			break
		}
	}
	t.Logf("c2 caught up: as leader it holds the majority's %d events (last seq %d, sha256 %s…) and %d robots, identical",
		after.Events, after.LastSeq, after.SHA256[:12], len(robotsAfter))
}
