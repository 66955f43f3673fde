package gateway

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// holdWriteLock makes another writer hold the database's write lock (as
// another node's transaction would) until the returned func is called.
func holdWriteLock(t *testing.T, st *store.Store) (release func()) {
	t.Helper()
	tx, err := st.DB().BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`UPDATE schema_migrations SET version = version WHERE 0`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// A batch whose transaction was rolled back because the write lock stayed
// busy past the commit timeout is tried again, and acknowledged once it
// commits: the robot's session is not closed (in a reconnect storm every
// closed robot would come back with a handshake, a hello and more events).
func TestRolledBackBatchIsTriedAgain(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 300 * time.Millisecond})
	c := h.dial(t, "kiwi-1")
	c.hello("s")
	h.waitRecorded(t, "kiwi-1", 1)
	release := holdWriteLock(t, h.st)
	ev := c.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	time.Sleep(700 * time.Millisecond) // two commit timeouts: rolled back at least once
	release()
	if got := c.expectAck(); !slices.Equal(got, []uint64{ev}) {
		t.Fatalf("ack %v, want [%d]", got, ev)
	}
	if n := testutil.ToFloat64(h.gw.metrics.commitRetries); n < 1 {
		t.Errorf("commit retries %v, want at least 1", n)
	}
	evs, err := h.st.Events(context.Background(), 0, 10, "kiwi-1")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(evs); n != 3 || evs[2].Type != store.TypeRobotEvent {
		t.Fatalf("%d events in the log (%v), want registration, connection and the event once", n, evs)
	}
}

// Retrying is bounded: a write lock held past retryFor fails the batch's
// sessions as before, so robots try another node.
func TestRetryingARolledBackBatchIsBounded(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 200 * time.Millisecond})
	c := h.dial(t, "kiwi-1")
	c.hello("s")
	h.waitRecorded(t, "kiwi-1", 1)
	release := holdWriteLock(t, h.st)
	c.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	c.expectError(protocol.CodeNotReady)
	c.expectClose(websocket.StatusTryAgainLater)
	release()
}

// An event the store would refuse (here: the hello's stream holds a NUL
// byte, which dqlite cannot store) is refused for its robot alone, before
// the committer: in a batch it would fail every other robot's events too.
func TestEventTheStoreRefusesFailsOnlyItsRobot(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute})
	bad, good := h.dial(t, "kiwi-bad"), h.dial(t, "kiwi-good")
	bad.hello("s\x00x")
	good.hello("s")
	bad.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	ev := good.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	bad.expectError(protocol.CodeInvalid)
	if got := good.expectAck(); !slices.Equal(got, []uint64{ev}) {
		t.Fatalf("good robot's ack %v, want [%d]", got, ev)
	}
	if evs, err := h.st.Events(context.Background(), 0, 10, "kiwi-bad"); err != nil || len(evs) != 2 {
		t.Fatalf("bad robot's log: %d events (%v), want its registration and connection only", len(evs), err)
	}
}

// Hello is answered before its connection record commits (a storm's commit
// queue would otherwise hold every hello past the robot's patience), yet
// nothing of the robot's is acknowledged before that record: its messages
// queue behind it on the committer.
func TestHelloIsAnsweredBeforeItsRecordCommits(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 200 * time.Millisecond})
	c := h.dial(t, "kiwi-1")
	release := holdWriteLock(t, h.st)
	c.hello("s") // fails the test if no reply comes while the lock is held
	ev := c.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	time.Sleep(300 * time.Millisecond)
	release()
	if got := c.expectAck(); !slices.Equal(got, []uint64{ev}) {
		t.Fatalf("ack %v, want [%d]", got, ev)
	}
	types := h.logTypes(t, "kiwi-1")
	if want := []string{store.TypeRobotRegistered, store.TypeRobotConnected, store.TypeRobotEvent}; !slices.Equal(types, want) {
		t.Fatalf("log %v, want %v (the connection before the robot's event)", types, want)
	}
}

// A connection record that cannot be written (the lock held past retryFor)
// closes the session it was answered for: the robot reconnects and resends.
func TestUnrecordedConnectionIsClosed(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 100 * time.Millisecond})
	c := h.dial(t, "kiwi-1")
	release := holdWriteLock(t, h.st)
	defer release()
	c.hello("s")
	c.expectError(protocol.CodeNotReady)
	c.expectClose(websocket.StatusTryAgainLater)
}

// The retry budget counts from a batch's first failure, not from when its
// events arrived: in a storm they can wait in the queue for longer than
// retryFor before their first attempt, and one busy lock then failed them
// (and closed their robots' sessions) at once.
func TestRetryBudgetStartsAtTheFirstFailure(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 200 * time.Millisecond})
	release := holdWriteLock(t, h.st)
	result := make(chan error, 1)
	queuedLongAgo := time.Now().Add(-time.Hour)
	h.gw.commits <- commitReq{event: store.Event{RobotID: "kiwi-old", Type: store.TypeRobotConnected, Time: queuedLongAgo,
		Data: []byte(`{"session":"x"}`), Actor: "control"}, result: result, received: queuedLongAgo}
	time.Sleep(300 * time.Millisecond) // rolled back at least once
	release()
	committed(t, result, "event queued long before its first attempt, after one busy lock")
}

// Robot batches committed between the transactions of a long job (the
// sweep, revive, presence flush) get a full commit timeout and the retry,
// not what is left of the job's own deadline: cut short, they failed and
// closed their robots' sessions.
func TestBatchesInsideAJobKeepTheirOwnTimeout(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Minute, CommitTimeout: 200 * time.Millisecond})
	result := make(chan error, 1)
	err := h.gw.Submit(context.Background(), func(ctx context.Context) error {
		dl, ok := ctx.Deadline()
		if !ok {
			return errors.New("job without a deadline")
		}
		time.Sleep(time.Until(dl) - 2*time.Millisecond) // the job used up its time
		h.gw.commits <- commitReq{event: store.Event{RobotID: "kiwi-1", Type: store.TypeRobotConnected, Time: time.Now(),
			Data: []byte(`{"session":"x"}`), Actor: "control"}, result: result, received: time.Now()}
		h.gw.commitWaiting(ctx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	committed(t, result, "robot batch committed at the end of a job's deadline")
}
