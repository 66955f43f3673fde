package testbench

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// 50 simulated robots on a 3-voter control
// cluster. A canary deployment pauses after its canary batch, then rolls
// on in batches; 30% of the robots hang in their trial boot; the
// deployment stops at its failure threshold and rolls back the failed and
// the committed robots; teleoperated robots are deferred; the dqlite
// leader stops in the middle and the new leader's engine continues —
// every robot is sent its update at most once, and nothing sent is lost.
func TestDeploymentCanaryRollingThresholdRollbackFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster scenario")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	n1 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c1")})
	n2 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c2"), Join: []string{n1.Config().DBAddress}})
	n3 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c3"), Join: []string{n1.Config().DBAddress, n2.Config().DBAddress}})
	nodes := []*node.Node{n1, n2, n3}
	waitFor(t, 20*time.Second, "three voters", func() bool {
		_, members, err := n1.Store().Cluster(ctx)
		voters := 0
		for _, m := range members {
			if m.Role == "voter" {
				voters++
			}
		}
		return err == nil && voters == 3
	})

	bots, err := robotsim.NewUpdateBots(50, []string{n1.URL(), n2.URL(), n3.URL()}, n1.CA(), filepath.Join(dir, "bots"))
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*robotsim.UpdateBot{}
	var ids []string
	for _, b := range bots {
		byID[b.ID] = b
		ids = append(ids, b.ID)
	}
	slices.Sort(ids) // the engine's batch order
	// Canary = ids[0:5]. ids[1] drives during the canary, ids[10] and
	// ids[20] for the whole deployment. 15 robots (30%) hang in trial.
	teleopCanary, teleopAlways := ids[1], []string{ids[10], ids[20]}
	var hangers []string
	for i := 6; i < 50; i += 3 {
		byID[ids[i]].Behaviour = robotsim.UpdateHangs
		hangers = append(hangers, ids[i])
	}
	botCtx, stopBots := context.WithCancel(ctx)
	wait := robotsim.StartUpdateBots(botCtx, bots)
	t.Cleanup(func() { stopBots(); wait() })
	waitFor(t, 20*time.Second, "50 robots connected", func() bool {
		n := 0
		for _, b := range bots {
			if b.Connected() {
				n++
			}
		}
		return n == 50
	})
	waitConnectedInControl(t, client(t, n1), 20*time.Second, ids...)
	for _, id := range append([]string{teleopCanary}, teleopAlways...) {
		byID[id].Teleop(ctx, true)
	}
	waitFor(t, 10*time.Second, "teleoperation recorded", func() bool {
		r, err := n1.Store().Robot(ctx, ids[20])
		return err == nil && r.Teleoperation.Active && r.Status.State == store.StateOnline
	})

	engineer, err := lab.NewAPIClient(ctx, n1, "engineer")
	if err != nil {
		t.Fatal(err)
	}
	spec := deploy.Spec{
		Release: "registry.lab/lekiwi/os@sha256:" + strings.Repeat("5a", 32), Version: "2.0.0",
		Strategy: deploy.Canary, Canary: deploy.Size{Count: 5}, BatchSize: deploy.Size{Count: 10},
		FailureThreshold: deploy.Size{Percent: 20}, BatchFailureThreshold: deploy.Size{Percent: 50},
		AutoRollback: true, UpdateTimeoutSeconds: 3, MaxConcurrent: 10, Health: deploy.Health{TimeoutSeconds: 60, Retries: 1},
	}
	var d deploy.Deployment
	if code := postJSON(t, engineer, "/v1/deployments", spec, &d); code != http.StatusCreated || len(d.Batches) != 6 {
		t.Fatalf("create deployment: %d %+v", code, d.Batches)
	}
	get := func(via *node.Node) deploy.Deployment {
		t.Helper()
		var got deploy.Deployment
		getJSON(t, client(t, via), "/v1/deployments/"+d.ID, &got)
		return got
	}

	// Canary: four robots commit, the teleoperated one is deferred, and
	// the deployment pauses for an engineer.
	waitFor(t, 20*time.Second, "canary done and paused", func() bool { return get(n2).State == deploy.StatePaused })
	d = get(n2)
	if c := d.Batches[0].Counts; c.Succeeded != 4 || c.Deferred != 1 || d.Counts.Sent != 0 {
		t.Fatalf("canary batch %+v, deployment %+v", c, d.Counts)
	}
	byID[teleopCanary].Teleop(ctx, false)
	if code := postJSON(t, engineer, "/v1/deployments/"+d.ID+"/resume", struct{}{}, nil); code != http.StatusOK {
		t.Fatalf("resume: %d", code)
	}

	// Stop the dqlite leader while batch 1 is in flight.
	leader := func() *node.Node {
		for _, n := range nodes {
			if addr, _, err := n.Store().Cluster(ctx); err == nil {
				for _, m := range nodes {
					if m.Config().DBAddress == addr {
						return m
					}
				}
			}
		}
		return nil
	}
	var survivor *node.Node
	waitFor(t, 20*time.Second, "batch 1 in flight", func() bool {
		g := get(n2)
		return g.CurrentBatch == 1 && g.Counts.Sent > 0
	})
	old := leader()
	if old == nil {
		t.Fatal("no leader")
	}
	sentBefore := get(n2).Counts
	closeControl(t, old)
	for _, n := range nodes {
		if n != old {
			survivor = n
		}
	}
	t.Logf("stopped leader %s with %+v", old.Config().DBAddress, sentBefore)

	// The new leader carries on until the threshold trips and the
	// rollback finishes.
	waitFor(t, 60*time.Second, "deployment rolled back", func() bool { return get(survivor).State == deploy.StateRolledBack })
	d = get(survivor)
	t.Logf("final: %s — %s; %+v", d.State, d.Reason, d.Counts)
	if !strings.Contains(d.Reason, "robots failed") || !strings.Contains(d.Reason, "threshold") {
		t.Fatalf("reason %q", d.Reason)
	}

	// Exactly-once: the log's update commands per robot, and what robots received.
	evs, err := survivor.Store().EventsOfTypes(ctx, 0, 10000, store.TypeCommandQueued)
	if err != nil {
		t.Fatal(err)
	}
	updates, rollbacks := map[string]int{}, map[string]int{}
	for _, e := range evs {
		var c protocol.Command
		var a protocol.UpdateArgs
		if json.Unmarshal(e.Data, &c) != nil || json.Unmarshal(c.Args, &a) != nil || a.DeploymentID != d.ID {
			continue
		}
		if a.Rollback {
			rollbacks[e.RobotID]++
		} else {
			updates[e.RobotID]++
		}
	}
	states := map[string]deploy.RobotProgress{}
	for _, r := range d.Robots {
		states[r.RobotID] = r
	}
	failedSeen := 0
	for _, id := range ids {
		b, r := byID[id], states[id]
		gotUpd, gotRb := b.Updates()
		if updates[id] > 1 || gotUpd > 1 || rollbacks[id] > 1 || r.Sends > 2 {
			t.Errorf("robot %s: %d update commands queued, %d received, %d rollbacks: sent twice", id, updates[id], gotUpd, rollbacks[id])
		}
		if len(b.UpdatedWhileTeleoperated()) > 0 {
			t.Errorf("robot %s was sent an update while teleoperated", id)
		}
		switch {
		case updates[id] == 0:
			if r.State != deploy.RobotPending && r.State != deploy.RobotDeferred {
				t.Errorf("robot %s never sent, state %s", id, r.State)
			}
		case r.State != deploy.RobotRolledBack || rollbacks[id] != 1 || gotRb != 1:
			// Every robot updated (committed or hung in trial) is rolled back.
			t.Errorf("robot %s: state %s, %d rollbacks queued, %d received", id, r.State, rollbacks[id], gotRb)
		}
		if updates[id] == 1 && slices.Contains(hangers, id) {
			failedSeen++
		}
	}
	for _, id := range teleopAlways {
		if updates[id] != 0 || states[id].State != deploy.RobotDeferred || states[id].Reason != "teleoperation in progress" {
			t.Errorf("teleoperated robot %s: %d updates, %+v", id, updates[id], states[id])
		}
	}
	if updates[teleopCanary] != 1 {
		t.Errorf("canary robot %s was not updated after its teleoperation ended", teleopCanary)
	}
	// The threshold is 10 robots (20% of 50); robots already updating
	// when it tripped finish, so at most MaxConcurrent-1 more fail.
	if failedSeen < 10 || failedSeen > 10+spec.MaxConcurrent-1 {
		t.Errorf("%d hanging robots were sent updates; the threshold is 10", failedSeen)
	}
	if d.Counts.Pending == 0 {
		t.Errorf("the deployment did not stop: no robot left pending (%+v)", d.Counts)
	}
	types, err := survivor.Store().EventsOfTypes(ctx, 0, 10000, deploy.TypeRollbackStarted, deploy.TypeBatchStarted)
	if err != nil || len(types) < 3 {
		t.Fatalf("deployment events %v %v", types, err)
	}
	t.Logf("%d robots updated, %d hanging robots failed, %d rollbacks; %d pending never sent", len(updates), failedSeen, len(rollbacks), d.Counts.Pending)
}
