package stream

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// fakeLog is an event log that counts full reads.
type fakeLog struct {
	mu     sync.Mutex
	events []store.Event
	reads  int
}

func (l *fakeLog) add(e store.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = int64(len(l.events) + 1)
	l.events = append(l.events, e)
}

func (l *fakeLog) Events(_ context.Context, after int64, limit int, _ string) ([]store.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads++
	var out []store.Event
	for _, e := range l.events {
		if e.Seq > after && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

func (l *fakeLog) LastSeq(context.Context) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(len(l.events)), nil
}

func (l *fakeLog) readCount() int { l.mu.Lock(); defer l.mu.Unlock(); return l.reads }

// With nobody listening Tail reads no events (only the log's position);
// once a dashboard attaches, what is committed from then on reaches it.
func TestTailReadsEventsOnlyForListeners(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	log := &fakeLog{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Tail(ctx, log, h, TailOptions{Interval: 5 * time.Millisecond}) }()
	data, _ := json.Marshal(map[string]string{"kind": "teleop.started"})
	log.add(store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Time: time.Now(), Data: data})
	time.Sleep(100 * time.Millisecond)
	if n := log.readCount(); n != 0 {
		t.Fatalf("Tail read the log %d times with no client attached", n)
	}
	c := attach(t, h, Subscription{ID: "teleop", Topics: []string{"teleoperation.started"}})
	for deadline := time.Now().Add(5 * time.Second); log.readCount() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Tail did not start reading once a client attached")
		}
	}
	log.add(store.Event{RobotID: "r2", Type: store.TypeRobotEvent, Time: time.Now(), Data: data})
	ctxNext, cancelNext := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelNext()
	frame, err := c.Next(ctxNext)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		RobotID string `json:"robot_id"`
	}
	if err := json.Unmarshal(frame, &f); err != nil || f.RobotID != "r2" {
		t.Fatalf("frame %s (%v): want r2's event, not the one committed before anyone listened", frame, err)
	}
	cancel()
	<-done
}
