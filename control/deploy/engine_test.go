package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lab is a store with robots and a simulated fleet answering update
// commands straight into the log, as the gateway would record them.
type lab struct {
	t     *testing.T
	st    *store.Store
	clock *clock
	ids   []string
	// behaviour of a robot on update: commit (default), fail, hang.
	behaviour map[string]string
	answered  map[string]bool // command ids answered
	seq       map[string]uint64
}

func newLab(t *testing.T, robots int) *lab {
	t.Helper()
	l := &lab{t: t, st: storetest.Open(t), clock: &clock{t: time.Date(2030, 1, 7, 10, 0, 0, 0, time.UTC)},
		behaviour: map[string]string{}, answered: map[string]bool{}, seq: map[string]uint64{}}
	var events []store.Event
	for i := range robots {
		id := fmt.Sprintf("r-%03d", i)
		typ := protocol.RobotLeKiwi
		if i%5 == 4 {
			typ = protocol.RobotXLE
		}
		l.ids = append(l.ids, id)
		data, _ := json.Marshal(store.ConnectedData{Session: "s-" + id, Node: "n1", Type: typ, Hardware: protocol.Hardware{Model: "Raspberry Pi 5 Model B Rev 1.0"}})
		events = append(events, store.Event{RobotID: id, Type: store.TypeRobotConnected, Time: l.clock.Now(), Data: data})
	}
	for start := 0; start < len(events); start += 32 {
		if _, err := l.st.Append(context.Background(), events[start:min(len(events), start+32)]); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func (l *lab) engine() *Engine {
	return New(l.st, Options{Now: l.clock.Now, IsLeader: func(context.Context) (bool, error) { return true, nil },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func (l *lab) create(spec Spec) *Deployment {
	l.t.Helper()
	if spec.Release == "" {
		spec.Release = "registry.local/lekiwi@sha256:" + strings.Repeat("ab", 32)
		spec.Version = "2.0.0"
	}
	d, err := Create(context.Background(), l.st, spec, "engineer:alice", l.clock.Now())
	if err != nil {
		l.t.Fatalf("create deployment: %v", err)
	}
	return d
}

// robotEvent records what a robot reports, with its own stream sequence.
func (l *lab) robotEvent(robot string, pe protocol.Event) {
	l.t.Helper()
	l.seq[robot]++
	data, _ := json.Marshal(pe)
	if _, err := l.st.Append(context.Background(), []store.Event{{RobotID: robot, Type: store.TypeRobotEvent, Time: l.clock.Now(), Data: data, Stream: "st-" + robot, RobotSeq: l.seq[robot]}}); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) report(robot, dep, state, reason string) {
	us, _ := json.Marshal(protocol.UpdateState{DeploymentID: dep, Version: "2.0.0", State: state, Reason: reason})
	l.robotEvent(robot, protocol.Event{Kind: protocol.EventUpdate, Data: us})
}

func (l *lab) teleop(robot string, active bool) {
	kind := protocol.EventTeleopStopped
	if active {
		kind = protocol.EventTeleopStarted
	}
	l.robotEvent(robot, protocol.Event{Kind: kind})
}

// commands lists the update commands queued for robots, oldest first.
func (l *lab) commands() []struct {
	Robot string
	Cmd   protocol.Command
	Args  protocol.UpdateArgs
} {
	l.t.Helper()
	evs, err := l.st.EventsOfTypes(context.Background(), 0, 10000, store.TypeCommandQueued)
	if err != nil {
		l.t.Fatal(err)
	}
	var out []struct {
		Robot string
		Cmd   protocol.Command
		Args  protocol.UpdateArgs
	}
	for _, e := range evs {
		var c protocol.Command
		var a protocol.UpdateArgs
		if json.Unmarshal(e.Data, &c) != nil || json.Unmarshal(c.Args, &a) != nil {
			l.t.Fatalf("bad queued command %s", e.Data)
		}
		out = append(out, struct {
			Robot string
			Cmd   protocol.Command
			Args  protocol.UpdateArgs
		}{e.RobotID, c, a})
	}
	return out
}

// sends counts update (not rollback) and rollback commands per robot.
func (l *lab) sends() (updates, rollbacks map[string]int) {
	updates, rollbacks = map[string]int{}, map[string]int{}
	for _, c := range l.commands() {
		if c.Args.Rollback {
			rollbacks[c.Robot]++
		} else {
			updates[c.Robot]++
		}
	}
	return updates, rollbacks
}

// answer makes every robot answer the commands it has not answered yet.
func (l *lab) answer() {
	for _, c := range l.commands() {
		if l.answered[c.Cmd.ID] {
			continue
		}
		l.answered[c.Cmd.ID] = true
		if c.Args.Rollback {
			l.report(c.Robot, c.Args.DeploymentID, protocol.UpdateRolledBack, "rollback requested")
			continue
		}
		l.report(c.Robot, c.Args.DeploymentID, protocol.UpdateDownloading, "")
		switch l.behaviour[c.Robot] {
		case "fail":
			l.report(c.Robot, c.Args.DeploymentID, protocol.UpdateFailed, "download refused: signature")
		case "hang":
			l.report(c.Robot, c.Args.DeploymentID, protocol.UpdateTrial, "")
		default:
			l.report(c.Robot, c.Args.DeploymentID, protocol.UpdateCommitted, "")
		}
	}
}

func (l *lab) step(e *Engine) {
	l.t.Helper()
	if err := e.Step(context.Background()); err != nil {
		l.t.Fatalf("engine step: %v", err)
	}
}

func (l *lab) get(id string) *Deployment {
	l.t.Helper()
	d, err := Get(context.Background(), l.st, id)
	if err != nil {
		l.t.Fatal(err)
	}
	return d
}

// run steps and answers until the deployment leaves the running state or
// n rounds passed.
func (l *lab) run(e *Engine, id string, n int) *Deployment {
	l.t.Helper()
	for range n {
		l.step(e)
		l.answer()
		l.clock.Add(time.Second)
		if d := l.get(id); d.State != StateRunning && !d.Active() {
			return d
		}
	}
	return l.get(id)
}

func eventTypes(t *testing.T, st *store.Store, id string) []string {
	t.Helper()
	evs, err := st.EventsOfTypes(context.Background(), 0, 10000, EventTypes()...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.CorrelationID == id {
			out = append(out, e.Type)
		}
	}
	return out
}

func TestRollingDeploymentInBatchesWithConcurrencyLimit(t *testing.T) {
	l := newLab(t, 10)
	d := l.create(Spec{BatchSize: Size{Count: 3}, MaxConcurrent: 2, Health: Health{TimeoutSeconds: 120, Retries: 2}})
	if got := []int{d.Batches[0].Size, d.Batches[1].Size, d.Batches[2].Size, d.Batches[3].Size}; fmt.Sprint(got) != "[3 3 3 1]" || len(d.Batches) != 4 {
		t.Fatalf("batches %+v", d.Batches)
	}
	e := l.engine()
	l.step(e)
	if d := l.get(d.ID); d.Counts.Sent != 2 || d.CurrentBatch != 0 {
		t.Fatalf("after one step: %+v current %d, want 2 sent in batch 0", d.Counts, d.CurrentBatch)
	}
	cmds := l.commands()
	if a := cmds[0].Args; a.Release != d.Spec.Release || a.Version != "2.0.0" || a.HealthTimeoutSeconds != 120 || a.HealthRetries != 2 || a.DeploymentID != d.ID || a.AllowDowngrade || cmds[0].Cmd.Name != protocol.CommandUpdate {
		t.Fatalf("update args %+v", cmds[0])
	}
	maxInFlight := 0
	for range 40 {
		l.step(l.engine())
		if c := l.get(d.ID).Counts; c.Sent > maxInFlight {
			maxInFlight = c.Sent
		}
		l.answer()
		if l.get(d.ID).State == StateCompleted {
			break
		}
	}
	d = l.get(d.ID)
	if d.State != StateCompleted || d.Counts.Succeeded != 10 {
		t.Fatalf("deployment %s %+v", d.State, d.Counts)
	}
	if maxInFlight > 2 {
		t.Fatalf("%d robots updating at once, max_concurrent is 2", maxInFlight)
	}
	updates, _ := l.sends()
	for _, id := range l.ids {
		if updates[id] != 1 {
			t.Fatalf("robot %s got %d updates", id, updates[id])
		}
	}
	types := strings.Join(eventTypes(t, l.st, d.ID), " ")
	if strings.Count(types, TypeBatchStarted) != 4 || strings.Count(types, TypeBatchCompleted) != 4 || !strings.HasSuffix(types, TypeCompleted) {
		t.Fatalf("events %s", types)
	}
	for _, b := range d.Batches {
		if b.State != BatchDone || b.Counts.Succeeded != b.Size {
			t.Fatalf("batch %+v", b)
		}
	}
}

func TestCanaryPausesAfterFirstBatchThenRolls(t *testing.T) {
	l := newLab(t, 10)
	d := l.create(Spec{Strategy: Canary, Canary: Size{Count: 2}, BatchSize: Size{Percent: 40}})
	if len(d.Batches) != 3 || d.Batches[0].Size != 2 || d.Batches[1].Size != 4 || d.Batches[2].Size != 4 {
		t.Fatalf("canary plan %+v", d.Batches)
	}
	d = l.run(l.engine(), d.ID, 10)
	if d.State != StatePaused || !strings.Contains(d.Reason, "first batch") || d.Counts.Succeeded != 2 || d.Counts.Pending != 8 {
		t.Fatalf("after canary: %s %q %+v", d.State, d.Reason, d.Counts)
	}
	if _, err := Resume(context.Background(), l.st, d.ID, "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	d = l.run(l.engine(), d.ID, 20)
	if d.State != StateCompleted || d.Counts.Succeeded != 10 {
		t.Fatalf("after resume: %s %+v", d.State, d.Counts)
	}
}

func TestBlueGreenIsTwoCohorts(t *testing.T) {
	s := Spec{Strategy: BlueGreen}.withDefaults()
	if got := fmt.Sprint(s.plan(7)); got != "[4 3]" {
		t.Fatalf("blue-green plan of 7: %s", got)
	}
	if !s.pausesAfterFirst() {
		t.Fatal("blue-green pauses after the blue cohort by default")
	}
}

// 30% of robots fail mid-update (stuck in their trial boot): the
// deployment stops at its 10% threshold, rolls back the failed robots and
// the committed ones, and never touches later batches.
func TestThresholdStopsAndRollsBackFailedAndCommitted(t *testing.T) {
	l := newLab(t, 20)
	for i, id := range l.ids {
		if i%10 < 3 {
			l.behaviour[id] = "hang"
		}
	}
	d := l.create(Spec{BatchSize: Size{Count: 5}, FailureThreshold: Size{Percent: 10}, AutoRollback: true, UpdateTimeoutSeconds: 60})
	e := l.engine()
	for range 3 {
		l.step(e)
		l.answer()
	}
	if d := l.get(d.ID); d.State != StateRunning || d.Counts.Succeeded != 2 || d.Counts.Sent != 3 {
		t.Fatalf("before the deadline: %s %+v", d.State, d.Counts)
	}
	l.clock.Add(61 * time.Second)
	d = l.run(e, d.ID, 10)
	if d.State != StateRolledBack || !strings.Contains(d.Reason, "rolled back") {
		t.Fatalf("deployment %s %q %+v", d.State, d.Reason, d.Counts)
	}
	if d.Counts.RolledBack != 5 || d.Counts.Pending != 15 {
		t.Fatalf("counts %+v", d.Counts)
	}
	updates, rollbacks := l.sends()
	for i, id := range l.ids {
		wantUpd, wantRb := 0, 0
		if i < 5 {
			wantUpd, wantRb = 1, 1
		}
		if updates[id] != wantUpd || rollbacks[id] != wantRb {
			t.Fatalf("robot %s: %d updates %d rollbacks, want %d %d", id, updates[id], rollbacks[id], wantUpd, wantRb)
		}
	}
	types := eventTypes(t, l.st, d.ID)
	if !strings.Contains(strings.Join(types, " "), TypeRollbackStarted) {
		t.Fatalf("events %v", types)
	}
}

// A robot that reports failed (nothing changed on it) is not rolled back;
// without auto rollback the threshold pauses, and a resume accepts the
// failures so far.
func TestThresholdPausesAndResumeAcceptsFailures(t *testing.T) {
	l := newLab(t, 10)
	l.behaviour["r-001"], l.behaviour["r-002"] = "fail", "fail"
	d := l.create(Spec{BatchSize: Size{Count: 5}, FailureThreshold: Size{Count: 2}, BatchFailureThreshold: Size{Percent: 100}})
	d = l.run(l.engine(), d.ID, 10)
	if d.State != StatePaused || !strings.Contains(d.Reason, "2 of 10 robots failed") {
		t.Fatalf("deployment %s %q %+v", d.State, d.Reason, d.Counts)
	}
	for _, r := range d.Robots {
		if r.RobotID == "r-001" && (r.State != RobotFailed || r.UpdateState != protocol.UpdateFailed || !strings.Contains(r.Reason, "signature")) {
			t.Fatalf("failed robot %+v", r)
		}
	}
	if _, err := Resume(context.Background(), l.st, d.ID, "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	d = l.run(l.engine(), d.ID, 20)
	if d.State != StateCompleted || d.Counts.Succeeded != 8 || d.Counts.Failed != 2 {
		t.Fatalf("after resume: %s %q %+v", d.State, d.Reason, d.Counts)
	}
	if _, rollbacks := l.sends(); len(rollbacks) != 0 {
		t.Fatalf("rollbacks sent: %v", rollbacks)
	}
}

func TestBatchThresholdAborts(t *testing.T) {
	l := newLab(t, 10)
	for _, id := range l.ids[:3] {
		l.behaviour[id] = "fail"
	}
	d := l.create(Spec{BatchSize: Size{Count: 5}, FailureThreshold: Size{Percent: 100}, BatchFailureThreshold: Size{Percent: 50}, OnFailure: OnFailureAbort})
	d = l.run(l.engine(), d.ID, 10)
	if d.State != StateAborted || !strings.Contains(d.Reason, "batch 0") {
		t.Fatalf("deployment %s %q %+v", d.State, d.Reason, d.Counts)
	}
	if updates, _ := l.sends(); len(updates) != 5 {
		t.Fatalf("%d robots updated, want only batch 0's 5", len(updates))
	}
}

func TestTeleoperatedRobotsAreDeferredAndRetried(t *testing.T) {
	l := newLab(t, 4)
	l.teleop("r-001", true)
	d := l.create(Spec{BatchSize: Size{Percent: 100}})
	e := l.engine()
	for range 5 {
		l.step(e)
		l.answer()
	}
	d = l.get(d.ID)
	if d.State != StateRunning || d.Counts.Succeeded != 3 || d.Counts.Deferred != 1 {
		t.Fatalf("during teleop: %s %+v", d.State, d.Counts)
	}
	if updates, _ := l.sends(); updates["r-001"] != 0 {
		t.Fatal("a teleoperated robot got an update")
	}
	if n := strings.Count(strings.Join(eventTypes(t, l.st, d.ID), " "), TypeRobotDeferred); n != 1 {
		t.Fatalf("%d deferral events, want 1 (not one per step)", n)
	}
	l.teleop("r-001", false)
	d = l.run(e, d.ID, 5)
	if d.State != StateCompleted || d.Counts.Succeeded != 4 {
		t.Fatalf("after teleop: %s %+v", d.State, d.Counts)
	}
}

func TestPerMinuteRateLimit(t *testing.T) {
	l := newLab(t, 6)
	d := l.create(Spec{BatchSize: Size{Percent: 100}, PerMinute: 3})
	e := l.engine()
	for range 5 {
		l.step(e)
		l.answer()
		l.clock.Add(5 * time.Second)
	}
	if u, _ := l.sends(); len(u) != 3 {
		t.Fatalf("%d sent within a minute, per_minute is 3", len(u))
	}
	l.clock.Add(time.Minute)
	d = l.run(e, d.ID, 5)
	if d.State != StateCompleted {
		t.Fatalf("%s %+v", d.State, d.Counts)
	}
}

func TestMaintenanceWindow(t *testing.T) {
	l := newLab(t, 3)
	// 10:00 UTC now; the window is 22:00-02:00.
	d := l.create(Spec{BatchSize: Size{Percent: 100}, Window: &Window{StartHour: 22, EndHour: 2}})
	e := l.engine()
	for range 3 {
		l.step(e)
	}
	if u, _ := l.sends(); len(u) != 0 {
		t.Fatalf("sent outside the window: %v", u)
	}
	l.clock.Add(13 * time.Hour) // 23:00
	d = l.run(e, d.ID, 5)
	if d.State != StateCompleted {
		t.Fatalf("%s %+v", d.State, d.Counts)
	}
}

func TestPauseResumeAbortByOperator(t *testing.T) {
	l := newLab(t, 6)
	ctx := context.Background()
	d := l.create(Spec{BatchSize: Size{Count: 2}})
	e := l.engine()
	l.step(e)
	if _, err := Pause(ctx, l.st, d.ID, "lunch", "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := Pause(ctx, l.st, d.ID, "again", "engineer:alice", l.clock.Now()); !errors.Is(err, ErrState) {
		t.Fatalf("pausing a paused deployment: %v", err)
	}
	for range 4 {
		l.step(e)
		l.answer()
	}
	// The batch in flight finished; nothing new was sent while paused.
	if d := l.get(d.ID); d.State != StatePaused || d.Counts.Succeeded != 2 || d.Counts.Pending != 4 || d.Reason != "lunch" {
		t.Fatalf("paused: %s %q %+v", d.State, d.Reason, d.Counts)
	}
	if _, err := Resume(ctx, l.st, d.ID, "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	l.step(e)
	if _, err := Abort(ctx, l.st, d.ID, "wrong release", "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		l.step(e)
		l.answer()
	}
	d = l.get(d.ID)
	if d.State != StateAborted || d.Counts.Succeeded != 4 || d.Counts.Pending != 2 || d.Active() {
		t.Fatalf("aborted: %s %+v", d.State, d.Counts)
	}
	if _, err := Resume(ctx, l.st, d.ID, "engineer:alice", l.clock.Now()); !errors.Is(err, ErrState) {
		t.Fatalf("resuming an aborted deployment: %v", err)
	}
	// A manual rollback of the aborted deployment returns the 4 updated robots.
	if _, err := Rollback(ctx, l.st, d.ID, "bad release", "engineer:alice", l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	d = l.run(e, d.ID, 5)
	if d.State != StateRolledBack || d.Counts.RolledBack != 4 {
		t.Fatalf("rolled back: %s %+v", d.State, d.Counts)
	}
	if _, err := Pause(ctx, l.st, "dep-nothere", "", "x", l.clock.Now()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pause unknown: %v", err)
	}
}

// The leader's engine stops right after sending a batch; a new engine (the
// next leader's) continues from the tables: nothing is sent twice and
// nothing is skipped. Two engines stepping at once also send once.
func TestLeaderChangeNeitherResendsNorSkips(t *testing.T) {
	l := newLab(t, 12)
	d := l.create(Spec{BatchSize: Size{Count: 4}})
	first := l.engine()
	l.step(first) // batch 0 started and sent
	if c := l.get(d.ID).Counts; c.Sent != 4 {
		t.Fatalf("first leader sent %d", c.Sent)
	}
	l.answer() // robots answer while no engine runs
	second := l.engine()
	third := l.engine()
	for range 20 {
		var wg sync.WaitGroup
		for _, e := range []*Engine{second, third} {
			wg.Add(1)
			go func() { defer wg.Done(); _ = e.Step(context.Background()) }()
		}
		wg.Wait()
		l.answer()
		if l.get(d.ID).State == StateCompleted {
			break
		}
	}
	d = l.get(d.ID)
	if d.State != StateCompleted || d.Counts.Succeeded != 12 {
		t.Fatalf("%s %+v", d.State, d.Counts)
	}
	updates, _ := l.sends()
	for _, id := range l.ids {
		if updates[id] != 1 {
			t.Fatalf("robot %s got %d update commands, want exactly 1", id, updates[id])
		}
	}
	for _, r := range d.Robots {
		if r.Sends != 1 {
			t.Fatalf("robot %s recorded %d sends", r.RobotID, r.Sends)
		}
	}
}

func TestCreateSelectsTargetsAndRefusesBusyRobots(t *testing.T) {
	l := newLab(t, 10)
	ctx := context.Background()
	d := l.create(Spec{Target: Target{Profile: "xle"}})
	if d.Counts.Total != 2 {
		t.Fatalf("xle targets %+v", d.Counts)
	}
	_, err := Create(ctx, l.st, Spec{Release: d.Spec.Release, Version: "2", Target: Target{RobotIDs: []string{"r-004", "r-000"}}}, "a", l.clock.Now())
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "r-004") {
		t.Fatalf("overlapping deployment: %v", err)
	}
	d2, err := Create(ctx, l.st, Spec{Release: d.Spec.Release, Version: "2", Target: Target{RobotIDs: []string{"r-001", "r-000"}, Model: "Pi 5"}}, "a", l.clock.Now())
	if err != nil || d2.Counts.Total != 2 || d2.Robots[0].RobotID != "r-000" {
		t.Fatalf("explicit robots: %v %+v", err, d2)
	}
	for name, s := range map[string]Spec{
		"unknown robot": {Target: Target{RobotIDs: []string{"nobody"}}},
		"no match":      {Target: Target{Model: "Pi 4"}},
		"labels":        {Target: Target{Labels: map[string]string{"site": "lab"}}},
		"bad release":   {Release: "registry.local/lekiwi:latest"},
	} {
		if s.Release == "" {
			s.Release = d.Spec.Release
		}
		s.Version = "2"
		if _, err := Create(ctx, l.st, s, "a", l.clock.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	list, err := List(ctx, l.st, "", 10)
	if err != nil || len(list) != 2 {
		t.Fatalf("list %d %v", len(list), err)
	}
}

// Two leaders deciding from the same read (a failover in the middle of a
// step): the second send of a robot is refused with its command, in one
// transaction.
func TestStaleSendIsRefusedWithItsCommand(t *testing.T) {
	l := newLab(t, 3)
	d := l.create(Spec{BatchSize: Size{Percent: 100}})
	e := l.engine()
	l.step(e) // batch started, all three sent
	stale := l.get(d.ID)
	stale.Robots[0].State, stale.Robots[0].Sends = RobotPending, 0
	stale.Robots[0].CommandID = ""
	cmd, sent, err := e.updateCommand(stale, RobotProgress{RobotID: "r-000", Batch: 0, Sends: 5}, false, l.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := write(context.Background(), l.st, cmd, sent); !errors.Is(err, ErrConflict) {
		t.Fatalf("second send of r-000: %v, want ErrConflict", err)
	}
	if u, _ := l.sends(); u["r-000"] != 1 {
		t.Fatalf("r-000 has %d update commands queued, want 1", u["r-000"])
	}
}

// TestAllowDowngradeReachesUpdateArgs: a deployment that allows a
// downgrade says so in every update command it sends; the agent refuses an
// older release without it.
func TestAllowDowngradeReachesUpdateArgs(t *testing.T) {
	l := newLab(t, 3)
	d := l.create(Spec{AllowDowngrade: true, BatchSize: Size{Count: 3}})
	if !l.get(d.ID).Spec.AllowDowngrade {
		t.Fatal("the stored spec lost allow_downgrade")
	}
	l.step(l.engine())
	cmds := l.commands()
	if len(cmds) != 3 {
		t.Fatalf("%d update commands sent, want 3", len(cmds))
	}
	for _, c := range cmds {
		if !c.Args.AllowDowngrade || c.Args.DeploymentID != d.ID {
			t.Fatalf("update args %+v: want allow_downgrade", c.Args)
		}
		if !strings.Contains(string(c.Cmd.Args), `"allow_downgrade":true`) {
			t.Fatalf("command args on the wire %s", c.Cmd.Args)
		}
	}
}
