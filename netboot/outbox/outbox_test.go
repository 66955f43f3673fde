package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

func seen(mac string) protocol.FactoryEvent {
	d, _ := json.Marshal(protocol.DeviceSeen{MAC: mac, IsPi: true})
	return protocol.FactoryEvent{Type: protocol.EventDeviceSeen, Data: d}
}

// control is a fake control: it stores events by (stream, seq) like the real
// one and can be made unreachable.
type control struct {
	mu     sync.Mutex
	down   bool
	stored map[string]protocol.FactoryEvent
	order  []string
	calls  int
}

func (c *control) send(_ context.Context, b protocol.FactoryEvents) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.down {
		return errors.New("dial tcp: connection refused")
	}
	if len(b.Events) > protocol.MaxFactoryBatch {
		return fmt.Errorf("batch of %d", len(b.Events))
	}
	for _, e := range b.Events {
		k := fmt.Sprintf("%s/%d", b.Stream, e.Seq)
		if _, ok := c.stored[k]; !ok {
			c.stored[k] = e
			c.order = append(c.order, k)
		}
	}
	return nil
}

func (c *control) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stored)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// Control away, events queued, station restarted while control is away,
// control back: every event arrives once, in order, across the restart.
func TestEventsSurviveControlOutageAndRestart(t *testing.T) {
	dir := t.TempDir()
	ctl := &control{down: true, stored: map[string]protocol.FactoryEvent{}}
	o, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx, ctl.send, time.Millisecond, 5*time.Millisecond); close(done) }()
	for i := range 100 {
		if _, err := o.Add(seen(fmt.Sprintf("d8:3a:dd:00:00:%02x", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the outbox to notice control is away", func() bool { return !o.Status().UnreachableSince.IsZero() })
	if st := o.Status(); st.Pending != 100 || !strings.Contains(st.LastError, "refused") {
		t.Fatalf("status while away: %+v", st)
	}
	cancel()
	<-done
	o.Close()

	o, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if st := o.Status(); st.Pending != 100 || st.LastSeq != 100 {
		t.Fatalf("after restart: %+v", st)
	}
	seq, err := o.Add(seen("d8:3a:dd:00:01:00"))
	if err != nil || seq != 101 {
		t.Fatalf("sequence after restart: %d %v", seq, err)
	}
	ctl.mu.Lock()
	ctl.down = false
	ctl.mu.Unlock()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx, ctl.send, time.Millisecond, 5*time.Millisecond)
	waitFor(t, "delivery", func() bool { return o.Status().Pending == 0 })
	if n := ctl.count(); n != 101 {
		t.Fatalf("control stored %d events, want 101", n)
	}
	for i, k := range ctl.order {
		if want := fmt.Sprintf("%s/%d", o.Stream(), i+1); k != want {
			t.Fatalf("event %d is %s, want %s (out of order)", i, k, want)
		}
	}
	if st := o.Status(); !st.UnreachableSince.IsZero() || st.LastError != "" || st.Acked != 101 {
		t.Fatalf("status after delivery: %+v", st)
	}
}

// A crash in the middle of an append leaves a torn line: Open drops it and
// the next event reuses its sequence (it was never acknowledged). Damage
// before the last line is refused.
func TestTornTailAndDamage(t *testing.T) {
	dir := t.TempDir()
	o, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := o.Add(seen("d8:3a:dd:00:00:01")); err != nil {
			t.Fatal(err)
		}
	}
	o.Close()
	log := filepath.Join(dir, "log")
	good, _ := os.ReadFile(log)
	for _, tail := range []string{`{"seq":4,"type":"Devi`, "{\"seq\":4,garbage\n"} {
		os.WriteFile(log, append(append([]byte(nil), good...), tail...), 0o600)
		o, err := Open(dir, nil)
		if err != nil {
			t.Fatalf("torn tail %q: %v", tail, err)
		}
		if seq, err := o.Add(seen("d8:3a:dd:00:00:02")); err != nil || seq != 4 {
			t.Fatalf("after torn tail %q: seq %d %v", tail, seq, err)
		}
		o.Close()
	}
	damaged := strings.Replace(string(good), `"seq":2`, `"seq":"x"`, 1)
	os.WriteFile(log, []byte(damaged), 0o600)
	if _, err := Open(dir, nil); err == nil || !strings.Contains(err.Error(), "not an event") {
		t.Fatalf("damaged log opened: %v", err)
	}
}

// Confirmed events are compacted away; pending ones stay.
func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	o, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.compactAfter = 10
	ctl := &control{stored: map[string]protocol.FactoryEvent{}}
	ctx, cancel := context.WithCancel(context.Background())
	go o.Run(ctx, ctl.send, time.Millisecond, time.Millisecond)
	for range 25 {
		o.Add(seen("d8:3a:dd:00:00:01"))
	}
	waitFor(t, "delivery", func() bool { return o.Status().Acked == 25 })
	cancel()
	o.Close()
	raw, _ := os.ReadFile(filepath.Join(dir, "log"))
	events, _, err := parseLog(raw)
	if err != nil || len(events) >= 25 {
		t.Fatalf("log holds %d events after compaction (%v)", len(events), err)
	}
	o, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if seq, _ := o.Add(seen("x")); seq != 26 {
		t.Fatalf("sequence after compaction and reopen: %d, want 26", seq)
	}
	if st := o.Status(); st.Pending != 1 {
		t.Fatalf("pending after reopen: %+v", st)
	}
}

func FuzzParseLog(f *testing.F) {
	f.Add([]byte("{\"seq\":1,\"type\":\"DeviceSeen\",\"time\":\"2026-11-27T00:00:00Z\",\"data\":{}}\n"))
	f.Add([]byte("{\"seq\":1}\n{\"seq\":1}\n"))
	f.Add([]byte("{\"seq\":2}\n{\"seq\":3"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		events, good, err := parseLog(raw)
		if err != nil {
			return
		}
		if good > len(raw) || (good > 0 && raw[good-1] != '\n') {
			t.Fatalf("good prefix %d of %d does not end a line", good, len(raw))
		}
		for i := 1; i < len(events); i++ {
			if events[i].Seq <= events[i-1].Seq {
				t.Fatalf("sequences not increasing: %d then %d", events[i-1].Seq, events[i].Seq)
			}
		}
	})
}
