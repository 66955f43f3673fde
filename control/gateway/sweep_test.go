package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
)

// silentFleet appends n robots that connected at t and were not heard of
// since.
func silentFleet(t *testing.T, st *store.Store, n int, at time.Time) {
	t.Helper()
	var evs []store.Event
	for i := range n {
		evs = append(evs, store.Event{RobotID: fmt.Sprintf("old-%03d", i), Type: store.TypeRobotConnected, Time: at, Data: []byte(`{"session":"x"}`)})
		if len(evs) == 32 || i == n-1 {
			if _, err := st.Append(context.Background(), evs); err != nil {
				t.Fatal(err)
			}
			evs = nil
		}
	}
}

// A sweep of many robots lets the messages waiting for the committer in
// between its transactions: a hello queued before the sweep is durable
// before the sweep's last transaction, not after all of them.
func TestSweepLetsWaitingCommitsThrough(t *testing.T) {
	st := storetest.Open(t)
	now := time.Now()
	silentFleet(t, st, 3*store.MaxAppendBatch, now.Add(-time.Hour))
	g, err := New(st, Config{NodeID: "n1", Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	g.commits <- commitReq{event: store.Event{RobotID: "newcomer", Type: store.TypeRobotConnected, Time: now, Data: []byte(`{"session":"y"}`)}, result: result, received: now}
	if err := g.sweep(context.Background(), now, time.Minute); err != nil {
		t.Fatal(err)
	}
	// The committer loop is not running: only the sweep can have
	// committed the hello.
	committed(t, result, "the hello queued before the sweep")
	evs, err := st.Events(context.Background(), 0, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	var hello, lastOffline int64
	offline := 0
	for _, e := range evs {
		switch {
		case e.RobotID == "newcomer" && e.Type == store.TypeRobotConnected:
			hello = e.Seq
		case e.Type == store.TypeRobotOffline:
			offline++
			lastOffline = max(lastOffline, e.Seq)
		}
	}
	if offline != 3*store.MaxAppendBatch {
		t.Fatalf("%d robots swept, want %d", offline, 3*store.MaxAppendBatch)
	}
	if hello == 0 || hello > lastOffline {
		t.Fatalf("queued hello committed at seq %d, after the whole sweep (last offline %d): it waited behind every batch", hello, lastOffline)
	}
}

// A node that just started does not sweep robots offline for one offline
// timeout: they may be reconnecting to it.
func TestNoSweepRightAfterStart(t *testing.T) {
	st := storetest.Open(t)
	start := time.Now()
	silentFleet(t, st, 3, start.Add(-time.Hour))
	clock := start
	g, err := New(st, Config{NodeID: "n1", Logger: storetest.Logger(), HeartbeatInterval: 10 * time.Second, OfflineGrace: 5 * time.Second,
		Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	offline := func() int {
		n, err := st.CountRobots(context.Background(), store.StateOffline)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	clock = start.Add(g.cfg.OfflineTimeout() - time.Second)
	g.presenceTick(context.Background())
	if n := offline(); n != 0 {
		t.Fatalf("%d robots swept offline %s after the node started, before one offline timeout (%s)", n, clock.Sub(start), g.cfg.OfflineTimeout())
	}
	clock = start.Add(g.cfg.OfflineTimeout())
	g.presenceTick(context.Background())
	if n := offline(); n != 3 {
		t.Fatalf("%d robots offline one timeout after start, want 3", n)
	}
}

// Revive records many robots online again in batches, letting a queued
// hello through in between (it once appended them one transaction each,
// on the committer, in the middle of a storm).
func TestReviveInBatches(t *testing.T) {
	st := storetest.Open(t)
	now := time.Now()
	n := 2*store.MaxAppendBatch + 3
	silentFleet(t, st, n, now.Add(-time.Hour))
	if _, err := st.SweepOffline(context.Background(), now.Add(-time.Minute), now, time.Minute); err != nil {
		t.Fatal(err)
	}
	g, err := New(st, Config{NodeID: "n1", Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	var sessions []*session
	for i := range n {
		s := &session{g: g, robotID: fmt.Sprintf("old-%03d", i), id: fmt.Sprintf("s%d", i)}
		s.heardAt.Store(now.UnixNano())
		s.isRecorded.Store(true)
		sessions = append(sessions, s)
	}
	result := make(chan error, 1)
	g.commits <- commitReq{event: store.Event{RobotID: "newcomer", Type: store.TypeRobotConnected, Time: now, Data: []byte(`{"session":"y"}`)}, result: result, received: now}
	g.revive(context.Background(), now, sessions)
	committed(t, result, "the hello queued before revive")
	if off, err := st.CountRobots(context.Background(), store.StateOffline); err != nil || off != 0 {
		t.Fatalf("%d robots still offline after revive (%v)", off, err)
	}
}

// A session whose connection record is still queued (hello no longer
// waits for it) is not revived: its record will mark the robot online,
// and reviving it as well would write the robot twice in a storm.
func TestReviveLeavesUnrecordedSessionsToTheirRecord(t *testing.T) {
	st := storetest.Open(t)
	now := time.Now()
	silentFleet(t, st, 2, now.Add(-time.Hour))
	if _, err := st.SweepOffline(context.Background(), now.Add(-time.Minute), now, time.Minute); err != nil {
		t.Fatal(err)
	}
	g, err := New(st, Config{NodeID: "n1", Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	recorded := &session{g: g, robotID: "old-000", id: "s0"}
	queued := &session{g: g, robotID: "old-001", id: "s1"}
	for _, s := range []*session{recorded, queued} {
		s.heardAt.Store(now.UnixNano())
	}
	recorded.isRecorded.Store(true)
	g.revive(context.Background(), now, []*session{recorded, queued})
	for id, want := range map[string]string{"old-000": store.StateOnline, "old-001": store.StateOffline} {
		r, err := st.Robot(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.State != want {
			t.Errorf("%s is %s after revive, want %s", id, r.Status.State, want)
		}
	}
}
