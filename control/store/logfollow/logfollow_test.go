package logfollow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
)

// Two event types that touch no projection: the follower reads one and
// must skip the other.
const (
	followed = store.TypeDeviceSeen
	other    = store.TypeDeviceDiscovered
)

func appendEvents(t *testing.T, st *store.Store, types ...string) []int64 {
	t.Helper()
	var evs []store.Event
	for i, typ := range types {
		evs = append(evs, store.Event{Type: typ, Time: time.Now().UTC(), Data: []byte(fmt.Sprintf(`{"n":%d}`, i)), Actor: "test"})
	}
	res, err := st.Append(context.Background(), evs)
	if err != nil {
		t.Fatalf("append %v: %v", types, err)
	}
	var seqs []int64
	for i, r := range res {
		if types[i] == followed {
			seqs = append(seqs, r.Seq)
		}
	}
	return seqs
}

// flakyLog fails the reads it is told to and reports when a Follower
// started (read the log's end).
type flakyLog struct {
	Log
	failReads atomic.Int32
	started   chan struct{}
}

func (l *flakyLog) LastSeq(ctx context.Context) (int64, error) {
	seq, err := l.Log.LastSeq(ctx)
	if err == nil && l.started != nil {
		close(l.started)
		l.started = nil
	}
	return seq, err
}

func (l *flakyLog) EventsOfTypes(ctx context.Context, after int64, limit int, types ...string) ([]store.Event, error) {
	if l.failReads.Add(-1) >= 0 {
		return nil, errors.New("leader changing")
	}
	return l.Log.EventsOfTypes(ctx, after, limit, types...)
}

// run starts f and returns a channel of the sequences it hands over and a
// stop function that cancels it and returns Run's error.
func run(t *testing.T, f Follower) (<-chan int64, func() error) {
	t.Helper()
	seqs := make(chan int64, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, func(e store.Event) { seqs <- e.Seq }) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after its context was cancelled")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return seqs, stop
}

func expect(t *testing.T, seqs <-chan int64, want []int64) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-seqs:
			if got != w {
				t.Fatalf("handed seq %d, want %d (of %v)", got, w, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("seq %d not handed over (want %v)", w, want)
		}
	}
	select {
	case got := <-seqs:
		t.Fatalf("handed seq %d beyond %v", got, want)
	case <-time.After(50 * time.Millisecond):
	}
}

// A follower hands over the events of its types committed after it
// started, in log order, across pages, and none before or of other types.
func TestFollowsFromTheLogsEndInOrder(t *testing.T) {
	st := storetest.Open(t)
	appendEvents(t, st, followed, followed) // before: not handed over
	log := &flakyLog{Log: st, started: make(chan struct{})}
	started := log.started
	seqs, stop := run(t, Follower{Log: log, Types: []string{followed}, Poll: 10 * time.Millisecond, Page: 2})
	<-started
	want := appendEvents(t, st, followed, other, followed, followed, other, followed, followed)
	want = append(want, appendEvents(t, st, other, followed)...)
	expect(t, seqs, want)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

// Start loads what the caller needs and says where to follow from; a
// failed Start is reported and tried again.
func TestStartIsRetriedAndSetsTheCursor(t *testing.T) {
	st := storetest.Open(t)
	before := appendEvents(t, st, followed, followed, followed)
	var failures atomic.Int32
	attempts := 0
	f := Follower{
		Log: st, Types: []string{followed}, Poll: 10 * time.Millisecond,
		Start: func(ctx context.Context) (int64, error) {
			if attempts++; attempts == 1 {
				return 0, errors.New("no leader yet")
			}
			return before[0], nil // follow from the first: the second and third follow
		},
		StartFailed: func(error) { failures.Add(1) },
	}
	seqs, _ := run(t, f)
	expect(t, seqs, before[1:])
	if n := failures.Load(); n != 1 {
		t.Fatalf("StartFailed called %d times, want 1", n)
	}
	after := appendEvents(t, st, followed)
	expect(t, seqs, after)
}

// A failed read is reported and the next poll reads again from the same
// cursor: nothing skipped, nothing twice.
func TestReadErrorsAreRetriedFromTheSameCursor(t *testing.T) {
	st := storetest.Open(t)
	log := &flakyLog{Log: st, started: make(chan struct{})}
	started := log.started
	var failures atomic.Int32
	seqs, _ := run(t, Follower{Log: log, Types: []string{followed}, Poll: 10 * time.Millisecond,
		ReadFailed: func(error) { failures.Add(1) }})
	<-started
	want := appendEvents(t, st, followed)
	expect(t, seqs, want)
	log.failReads.Store(3)
	more := appendEvents(t, st, followed, other, followed)
	expect(t, seqs, more)
	if n := failures.Load(); n != 3 {
		t.Fatalf("ReadFailed called %d times, want 3", n)
	}
}

// A Follower stopped while it cannot start returns without handing
// anything over.
func TestCancelWhileStarting(t *testing.T) {
	st := storetest.Open(t)
	f := Follower{Log: st, Types: []string{followed}, Poll: 10 * time.Millisecond,
		Start: func(ctx context.Context) (int64, error) { return 0, errors.New("never") }}
	_, stop := run(t, f)
	time.Sleep(50 * time.Millisecond)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}
