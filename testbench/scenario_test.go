package testbench

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

func startControl(t *testing.T, o lab.ControlOptions) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := lab.StartControl(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeControl(t, n) })
	return n
}

func closeControl(t *testing.T, n *node.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Logf("close control: %v", err)
	}
}

func startFleet(t *testing.T, o robotsim.FleetOptions) *robotsim.Fleet {
	t.Helper()
	f, err := robotsim.NewFleet(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Stop(); err != nil {
			t.Errorf("stop fleet: %v", err)
		}
	})
	return f
}

// client returns an operator's API client for n.
func client(t *testing.T, n *node.Node) *lab.APIClient {
	t.Helper()
	c, err := lab.NewAPIClient(context.Background(), n, "operator")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func getJSON(t *testing.T, c *lab.APIClient, path string, into any) {
	t.Helper()
	if err := c.Get(context.Background(), path, into); err != nil {
		t.Fatal(err)
	}
}

// robotsByState lists robot ids in a state through the REST API.
func robotsByState(t *testing.T, c *lab.APIClient, state string) []string {
	t.Helper()
	var ids []string
	after := ""
	for {
		var page api.RobotList
		getJSON(t, c, fmt.Sprintf("/v1/robots?state=%s&limit=1000&after=%s", state, after), &page)
		for _, r := range page.Robots {
			ids = append(ids, r.ID)
		}
		if page.Next == "" {
			return ids
		}
		after = page.Next
	}
}

// robotEvents lists a robot's events through the REST API.
func robotEvents(t *testing.T, c *lab.APIClient, robot string) []store.Event {
	t.Helper()
	var out []store.Event
	var after int64
	for {
		var page api.EventPage
		getJSON(t, c, fmt.Sprintf("/v1/events?robot=%s&after=%d&limit=1000", robot, after), &page)
		out = append(out, page.Events...)
		if len(page.Events) == 0 {
			return out
		}
		after = page.Next
	}
}

// waitConnectedInControl waits until control's API (through c) lists every
// robot of ids as connected. An agent counts itself connected as soon as
// the gateway answers its hello, and the gateway answers before the
// robot's connection record commits: until then control does not know the
// robot (a command for it is a 404, a deployment refuses it, a robot
// listing misses it). A test that goes on to use control waits for this,
// not for the agents' view.
func waitConnectedInControl(t *testing.T, c *lab.APIClient, timeout time.Duration, ids ...string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d robots connected in control", len(ids)), func() bool {
		connected := map[string]bool{}
		after := ""
		for {
			var page api.RobotList
			getJSON(t, c, "/v1/robots?limit=1000&after="+after, &page)
			for _, r := range page.Robots {
				connected[r.ID] = r.Status.Connected
			}
			if page.Next == "" {
				break
			}
			after = page.Next
		}
		for _, id := range ids {
			if !connected[id] {
				return false
			}
		}
		return true
	})
}

// robotIDs lists the ids of robots.
func robotIDs(robots []*robotsim.Robot) []string {
	ids := make([]string, len(robots))
	for i, r := range robots {
		ids[i] = r.ID
	}
	return ids
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// 100 robots online within 5 s; stopped ones go offline after
// the timeout, with their events in the log and both states in the API.
func TestFleetComesOnlineAndStoppedRobotsGoOffline(t *testing.T) {
	dir := t.TempDir()
	ctl := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control"), HeartbeatInterval: time.Second, OfflineGrace: 500 * time.Millisecond})
	api := client(t, ctl)
	// The clock starts when the agents do. Provisioning the simulated
	// robots before (a board tree and an identity signed by control's CA
	// each) is the bench's setup, not the robots coming online.
	setup := time.Now()
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{Robots: 100, Servers: []string{ctl.URL()}, Dir: filepath.Join(dir, "fleet"), CA: ctl.CA()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := fleet.Start(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fleet.Stop(); err != nil {
			t.Errorf("stop fleet: %v", err)
		}
	})
	t.Logf("100 simulated robots provisioned in %s, their agents started in %s", start.Sub(setup).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	waitFor(t, 5*time.Second-time.Since(start), "100 robots online in the API within 5 s of start", func() bool {
		return len(robotsByState(t, api, store.StateOnline)) == 100
	})
	t.Logf("100 robots online %s after start", time.Since(start).Round(time.Millisecond))

	stopped := fleet.Robots()[:10]
	for _, r := range stopped {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	stoppedAt := time.Now()
	timeout := ctl.Gateway().Config().OfflineTimeout()
	waitFor(t, timeout+5*time.Second, "10 robots offline", func() bool {
		return len(robotsByState(t, api, store.StateOffline)) == 10
	})
	if took := time.Since(stoppedAt); took < timeout {
		t.Fatalf("robots went offline after %s, before the %s timeout", took, timeout)
	}
	offline := robotsByState(t, api, store.StateOffline)
	for _, r := range stopped {
		if !slices.Contains(offline, r.ID) {
			t.Fatalf("stopped robot %s not offline (offline: %v)", r.ID, offline)
		}
		var types []string
		for _, e := range robotEvents(t, api, r.ID) {
			types = append(types, e.Type)
		}
		for _, want := range []string{store.TypeRobotRegistered, store.TypeRobotConnected, store.TypeRobotDisconnected, store.TypeRobotOffline} {
			if !slices.Contains(types, want) {
				t.Fatalf("robot %s events %v lack %s", r.ID, types, want)
			}
		}
	}
	if n := len(robotsByState(t, api, store.StateOnline)); n != 90 {
		t.Fatalf("online robots = %d, want 90", n)
	}
	var one store.Robot
	getJSON(t, api, "/v1/robots/"+stopped[0].ID, &one)
	if one.Status.State != store.StateOffline || one.Hardware.Serial != stopped[0].Board.Serial || one.Network.Hostname != stopped[0].ID {
		t.Fatalf("robot %s in the API: %+v", stopped[0].ID, one)
	}
}

// Control goes away while robots keep producing events;
// after it restarts on the same data every event is in the log exactly once.
func TestControlRestartLosesNothingAndDuplicatesNothing(t *testing.T) {
	dir := t.TempDir()
	listen, _ := lab.FreeAddr()
	dbAddr, _ := lab.FreeAddr()
	opts := lab.ControlOptions{Dir: filepath.Join(dir, "control"), Listen: listen, DBAddress: dbAddr}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctl, err := lab.StartControl(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	fleet := startFleet(t, robotsim.FleetOptions{Robots: 20, Servers: []string{ctl.URL()}, Dir: filepath.Join(dir, "fleet"), CA: ctl.CA()})
	waitConnectedInControl(t, client(t, ctl), 10*time.Second, robotIDs(fleet.Robots())...)

	const perRobot = 60
	emit := func(from, to int) {
		for n := from; n < to; n++ {
			for _, r := range fleet.Robots() {
				data, _ := json.Marshal(map[string]int{"n": n})
				if err := r.Emit(ctx, protocol.Event{Kind: "sim.tick", Data: data}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	emit(0, 20)
	closeControl(t, ctl) // robots lose the server mid-stream
	emit(20, 40)         // produced while control is down: queued on the robots
	ctl, err = lab.StartControl(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeControl(t, ctl) })
	emit(40, perRobot) // produced while robots reconnect
	waitFor(t, 30*time.Second, "every robot's queue drained", func() bool {
		for _, r := range fleet.Robots() {
			if r.Stats().Queue.Pending > 0 || r.State().String() != "connected" {
				return false
			}
		}
		return true
	})
	api := client(t, ctl)
	for _, r := range fleet.Robots() {
		seen := map[int]int{}
		robotSeqs := map[uint64]bool{}
		for _, e := range robotEvents(t, api, r.ID) {
			if e.Type != store.TypeRobotEvent {
				continue
			}
			var ev protocol.Event
			var d struct{ N int }
			if json.Unmarshal(e.Data, &ev) != nil || ev.Kind != "sim.tick" || json.Unmarshal(ev.Data, &d) != nil {
				continue
			}
			if robotSeqs[e.RobotSeq] {
				t.Fatalf("robot %s: sequence %d stored twice", r.ID, e.RobotSeq)
			}
			robotSeqs[e.RobotSeq] = true
			seen[d.N]++
		}
		for n := range perRobot {
			if seen[n] != 1 {
				t.Fatalf("robot %s: event %d stored %d times, want exactly once", r.ID, n, seen[n])
			}
		}
	}
	mm, err := ctl.Store().Verify(ctx)
	if err != nil || len(mm) != 0 {
		t.Fatalf("projection after restart: %v %+v", err, mm)
	}
}

// Three control nodes in one dqlite cluster; what robots
// write through one node is read from the others.
func TestThreeControlNodesShareState(t *testing.T) {
	dir := t.TempDir()
	n1 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c1")})
	db1 := n1.Config().DBAddress
	n2 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c2"), Join: []string{db1}})
	n3 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c3"), Join: []string{db1, n2.Config().DBAddress}})
	nodes := []*node.Node{n1, n2, n3}
	var fleets []*robotsim.Fleet
	for i, n := range nodes {
		f, err := robotsim.NewFleet(robotsim.FleetOptions{Robots: 3, FirstIndex: 3 * i, Servers: []string{n.URL()}, Dir: filepath.Join(dir, fmt.Sprintf("fleet%d", i)), CA: n.CA()})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Stop() })
		fleets = append(fleets, f)
	}
	clients := []*lab.APIClient{client(t, n1), client(t, n2), client(t, n3)}
	for i, c := range clients {
		waitFor(t, 15*time.Second, fmt.Sprintf("node %d sees 9 online robots", i+1), func() bool {
			return len(robotsByState(t, c, store.StateOnline)) == 9
		})
	}
	// A robot connected to node 1 is visible, with its connection details,
	// through node 3's API.
	id := fleets[0].Robots()[0].ID
	var r store.Robot
	getJSON(t, clients[2], "/v1/robots/"+id, &r)
	if r.Status.Node != n1.Config().DBAddress || !r.Status.Connected {
		t.Fatalf("robot %s through node 3: %+v", id, r.Status)
	}
	var cluster struct {
		Members []store.Member `json:"members"`
	}
	getJSON(t, clients[1], "/v1/cluster", &cluster)
	if len(cluster.Members) != 3 {
		t.Fatalf("cluster members %+v", cluster.Members)
	}
}

// After a mixed workload — connects, telemetry changes,
// teleoperation, disconnects, offline sweeps, reconnects — the projection
// rebuilt from the event log equals the live one.
func TestRebuiltProjectionEqualsLiveAfterMixedWorkload(t *testing.T) {
	dir := t.TempDir()
	ctl := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control"), HeartbeatInterval: 300 * time.Millisecond, OfflineGrace: 200 * time.Millisecond, FlushInterval: 100 * time.Millisecond})
	fleet := startFleet(t, robotsim.FleetOptions{Robots: 30, Servers: []string{ctl.URL()}, Dir: filepath.Join(dir, "fleet"), CA: ctl.CA(),
		TelemetrySampleInterval: 100 * time.Millisecond, TelemetryMinInterval: 200 * time.Millisecond})
	api := client(t, ctl)
	waitConnectedInControl(t, api, 10*time.Second, robotIDs(fleet.Robots())...)
	ctx := context.Background()
	robots := fleet.Robots()
	for round := 0; round < 3; round++ {
		for i, r := range robots {
			switch (i + round) % 5 {
			case 0:
				data, _ := json.Marshal(protocol.TeleopData{Operator: fmt.Sprintf("op%d", round)})
				if err := r.Emit(ctx, protocol.Event{Kind: protocol.EventTeleopStarted, Data: data}); err != nil {
					t.Fatal(err)
				}
			case 1:
				if err := r.Emit(ctx, protocol.Event{Kind: protocol.EventTeleopStopped}); err != nil {
					t.Fatal(err)
				}
			case 2: // the board heats up and gets busy: a meaningful telemetry change
				b := r.Board
				b.TempMilliC += 10_000 * (round + 1)
				b.CPUBusy += 500_000
				b.UptimeSecs += 100
				if _, err := b.WriteTree(filepath.Join(dir, "fleet", r.ID, "board")); err != nil {
					t.Fatal(err)
				}
			case 3:
				if err := r.Emit(ctx, protocol.Event{Kind: "service.down", Severity: "warning", Message: "camera"}); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Some robots leave long enough to be swept offline, then return.
		gone := robots[round*5 : round*5+5]
		for _, r := range gone {
			if err := r.Stop(); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "stopped robots offline", func() bool {
			off := robotsByState(t, api, store.StateOffline)
			for _, r := range gone {
				if !slices.Contains(off, r.ID) {
					return false
				}
			}
			return true
		})
		for _, r := range gone {
			if err := r.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 15*time.Second, "all robots back and queues drained", func() bool {
		for _, r := range robots {
			if r.State().String() != "connected" || r.Stats().Queue.Pending > 0 {
				return false
			}
		}
		return true
	})
	waitConnectedInControl(t, api, 15*time.Second, robotIDs(robots)...)
	live := robotsByState(t, api, store.StateOnline)
	if len(live) != 30 {
		t.Fatalf("online after workload: %d", len(live))
	}
	var teleop, hot int
	for _, id := range live {
		var r store.Robot
		getJSON(t, api, "/v1/robots/"+id, &r)
		if r.Teleoperation.Active {
			teleop++
		}
		if r.Resources.TemperatureC != nil && *r.Resources.TemperatureC > 55 {
			hot++
		}
	}
	if teleop == 0 || hot == 0 {
		t.Fatalf("workload left no trace: %d robots in teleop, %d hot", teleop, hot)
	}
	mm, err := ctl.Store().Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mm {
		t.Errorf("robot %s differs:\n live    %s\n rebuilt %s", m.RobotID, m.Live, m.Rebuilt)
	}
}
