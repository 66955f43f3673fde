package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// fakeSystemd holds unit states; set changes one and signals it.
type fakeSystemd struct {
	mu      sync.Mutex
	units   map[string]UnitState
	changes chan string
	readErr error
}

func newFake(states ...UnitState) *fakeSystemd {
	f := &fakeSystemd{units: map[string]UnitState{}, changes: make(chan string, 16)}
	for _, s := range states {
		f.units[s.Unit] = s
	}
	return f
}

func (f *fakeSystemd) Subscribe(ctx context.Context, units []string) (<-chan string, error) {
	return f.changes, nil
}

func (f *fakeSystemd) UnitState(ctx context.Context, unit string) (UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readErr != nil {
		return UnitState{}, f.readErr
	}
	s, ok := f.units[unit]
	if !ok {
		return UnitState{}, fmt.Errorf("no unit %s", unit)
	}
	return s, nil
}

// set changes a unit; signal says whether systemd tells about it.
func (f *fakeSystemd) set(s UnitState, signal bool) {
	f.mu.Lock()
	f.units[s.Unit] = s
	f.mu.Unlock()
	if signal {
		f.changes <- s.Unit
	}
}

func st(unit, active, sub string, restarts uint32) UnitState {
	return UnitState{Unit: unit, LoadState: "loaded", ActiveState: active, SubState: sub, Restarts: restarts}
}

// runWatcher runs w in the background; changes arrive on the channel.
func runWatcher(t *testing.T, w *Watcher) (<-chan Change, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Change, 32)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- w.Run(ctx, func(c Change) { ch <- c }); close(finished) }()
	t.Cleanup(func() { cancel(); <-finished })
	return ch, done
}

func next(t *testing.T, ch <-chan Change) Change {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(3 * time.Second):
		t.Fatal("no change reported within 3 s")
		return Change{}
	}
}

func none(t *testing.T, ch <-chan Change, wait time.Duration) {
	t.Helper()
	select {
	case c := <-ch:
		t.Fatalf("unexpected change %+v", c)
	case <-time.After(wait):
	}
}

func TestUnitsFromProfile(t *testing.T) {
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	got := UnitsFromProfile(p.Services)
	want := []string{"lekiwi-agent.service", "ssh.service", "avahi-daemon.service", "chrony.service", "lekiwi-host.service"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("units %v, want %v", got, want)
	}
}

func TestWatcherReportsChanges(t *testing.T) {
	f := newFake(st("host.service", "active", "running", 0), st("ssh.service", "failed", "failed", 0), st("other.service", "active", "running", 0))
	w, err := New(f, Config{Units: []string{"host.service", "ssh.service"}, MinInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := runWatcher(t, w)

	// At start only the unit that is not active is reported.
	c := next(t, ch)
	if !c.Initial || c.New.Unit != "ssh.service" || c.Event().Severity != "error" {
		t.Fatalf("initial %+v", c)
	}
	// A unit nobody watches changes: nothing.
	f.set(st("other.service", "failed", "failed", 0), true)
	none(t, ch, 50*time.Millisecond)

	// The host crashes and systemd restarts it.
	f.set(st("host.service", "activating", "auto-restart", 1), true)
	c = next(t, ch)
	if c.Old.ActiveState != "active" || c.New.ActiveState != "activating" || c.New.Restarts != 1 {
		t.Fatalf("crash %+v", c)
	}
	ev := c.Event()
	var data ChangeData
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != EventServiceChanged || ev.Severity != "warning" || data.RestartsSinceLast != 1 || data.PreviousActiveState != "active" {
		t.Fatalf("event %+v data %+v", ev, data)
	}
	f.set(st("host.service", "active", "running", 1), true)
	c = next(t, ch)
	if c.New.ActiveState != "active" || c.Event().Severity != "info" {
		t.Fatalf("back up %+v", c)
	}
	// A signal without a meaningful change reports nothing.
	f.set(st("host.service", "active", "running", 1), true)
	none(t, ch, 50*time.Millisecond)
	if s := w.States(); len(s) != 2 || s[0].Restarts != 1 {
		t.Fatalf("states %+v", s)
	}
}

// TestWatcherCoalesces: a crash loop within MinInterval gives one
// immediate report and one of the latest state when the window ends.
func TestWatcherCoalesces(t *testing.T) {
	f := newFake(st("host.service", "active", "running", 0))
	w, err := New(f, Config{Units: []string{"host.service"}, MinInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := runWatcher(t, w)
	start := time.Now()
	f.set(st("host.service", "activating", "auto-restart", 1), true)
	first := next(t, ch)
	for i := uint32(2); i <= 5; i++ {
		f.set(st("host.service", "activating", "auto-restart", i), true)
		f.set(st("host.service", "active", "running", i), true)
	}
	second := next(t, ch)
	if time.Since(start) < 200*time.Millisecond {
		t.Fatalf("second report after %s, inside the window", time.Since(start))
	}
	if first.New.Restarts != 1 || second.Old.Restarts != 1 || second.New.Restarts != 5 || second.New.ActiveState != "active" {
		t.Fatalf("first %+v second %+v", first, second)
	}
	none(t, ch, 300*time.Millisecond)
}

func TestWatcherResyncWithoutSignal(t *testing.T) {
	f := newFake(st("host.service", "active", "running", 0))
	w, err := New(f, Config{Units: []string{"host.service"}, MinInterval: -1, Resync: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := runWatcher(t, w)
	f.set(st("host.service", "failed", "failed", 0), false)
	if c := next(t, ch); c.New.ActiveState != "failed" {
		t.Fatalf("%+v", c)
	}
}

func TestWatcherEnds(t *testing.T) {
	t.Run("subscription closed", func(t *testing.T) {
		f := newFake(st("a.service", "active", "running", 0))
		w, _ := New(f, Config{Units: []string{"a.service"}})
		_, done := runWatcher(t, w)
		close(f.changes)
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("nil error")
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Run did not end")
		}
	})
	t.Run("unreadable unit", func(t *testing.T) {
		f := newFake()
		f.readErr = errors.New("bus gone")
		w, _ := New(f, Config{Units: []string{"a.service"}})
		if err := w.Run(context.Background(), func(Change) {}); err == nil {
			t.Fatal("nil error")
		}
	})
	if _, err := New(newFake(), Config{}); err == nil {
		t.Fatal("New without units accepted")
	}
}

func TestChangeEvent(t *testing.T) {
	tests := []struct {
		c        Change
		severity string
		message  string
	}{
		{Change{Old: st("a.service", "active", "running", 0), New: st("a.service", "failed", "failed", 0)}, "error", "a.service active → failed (failed)"},
		{Change{Old: st("a.service", "active", "running", 2), New: st("a.service", "active", "running", 5)}, "warning", "a.service active (running), restarted 3× (5 in total)"},
		{Change{Old: st("a.service", "inactive", "dead", 0), New: st("a.service", "active", "running", 0)}, "info", "a.service inactive → active (running)"},
		{Change{Initial: true, New: UnitState{Unit: "x.service", LoadState: "not-found", ActiveState: "inactive", SubState: "dead"}}, "error", "x.service inactive (dead), unit not-found"},
	}
	for _, tt := range tests {
		ev := tt.c.Event()
		if ev.Severity != tt.severity || ev.Message != tt.message || ev.Validate() != nil {
			t.Errorf("event %q %q, want %q %q", ev.Severity, ev.Message, tt.severity, tt.message)
		}
		var _ protocol.Event = ev
	}
}
