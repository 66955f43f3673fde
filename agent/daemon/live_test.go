package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/services"
	"github.com/lekiwi/heartbeat/agent/teleop"
	"github.com/lekiwi/heartbeat/protocol"
)

// procNetTCP is a /proc/net/tcp with the LeKiwi ZMQ command port listening
// on 192.0.2.1 and an established connection to it from 198.51.100.7
// (documentation networks: never an address of the test host, so the peer
// counts as remote whatever the host's interfaces are).
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:15B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1 0000000000000000 100 0 0 10 0
   1: 010200C0:15B3 076433C6:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 1005 1 0000000000000000 100 0 0 10 0
`

// TestRunEmitsTeleopStarted runs the daemon with teleop_enabled on a
// fixture proc tree showing an operator on the ZMQ port: after the
// debounce a teleop.started event with the operator's address reaches
// control, as an event frame control acknowledges (and stores).
func TestRunEmitsTeleopStarted(t *testing.T) {
	url, frames := control(t)
	cfg := testConfig(t, url)
	tcp := filepath.Join(cfg.Roots.Proc, "net", "tcp")
	if err := os.MkdirAll(filepath.Dir(tcp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tcp, []byte(procNetTCP), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.TeleopEnabled, cfg.TeleopInterval, cfg.Profile = true, 100*time.Millisecond, "lekiwi"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, "9.9.9", nil) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	deadline := time.After(teleop.DefaultStartAfter + 10*time.Second)
	for {
		select {
		case env := <-frames:
			if env.Type != protocol.TypeEvent {
				continue
			}
			ev, err := protocol.DecodePayload[protocol.Event](env)
			if err != nil {
				t.Fatalf("event frame: %v", err)
			}
			if ev.Kind != protocol.EventTeleopStarted {
				t.Fatalf("first event %+v, want %s", ev, protocol.EventTeleopStarted)
			}
			var d protocol.TeleopData
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatalf("teleop data %s: %v", ev.Data, err)
			}
			if d.Operator != "198.51.100.7" || d.Since.IsZero() || env.Sequence == 0 {
				t.Fatalf("teleop.started %+v (seq %d): want operator 198.51.100.7, a session start and a queue sequence", d, env.Sequence)
			}
			return
		case <-deadline:
			t.Fatal("no teleop.started event")
		}
	}
}

// recorder collects emitted events.
type recorder struct {
	mu     sync.Mutex
	events []protocol.Event
}

func (r *recorder) Emit(_ context.Context, ev protocol.Event) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

func (r *recorder) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var k []string
	for _, e := range r.events {
		k = append(k, e.Kind)
	}
	return k
}

// fakeSystemd reports one failed unit and loses the bus right after
// subscribing.
type fakeSystemd struct{ closed atomic.Bool }

func (f *fakeSystemd) Subscribe(ctx context.Context, units []string) (<-chan string, error) {
	ch := make(chan string)
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(ch) // the bus connection is lost
	}()
	return ch, nil
}

func (f *fakeSystemd) UnitState(ctx context.Context, unit string) (services.UnitState, error) {
	return services.UnitState{Unit: unit, LoadState: "loaded", ActiveState: "failed", SubState: "failed", Restarts: 3}, nil
}

func (f *fakeSystemd) Close() error { f.closed.Store(true); return nil }

// TestRunServicesRedials: a lost bus ends the watch; the daemon dials
// again (with backoff, the first failure of dialling included) and every
// watch reports the failed unit as a service.changed event. Each
// connection is closed.
func TestRunServicesRedials(t *testing.T) {
	var dials atomic.Int32
	var conns []*fakeSystemd
	var mu sync.Mutex
	dial := func(ctx context.Context) (systemdConn, error) {
		if dials.Add(1) == 1 {
			return nil, errors.New("no system bus yet")
		}
		f := &fakeSystemd{}
		mu.Lock()
		conns = append(conns, f)
		mu.Unlock()
		return f, nil
	}
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		runServices(ctx, []string{"lekiwi-host.service"}, dial, rec, slog.New(slog.DiscardHandler))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(rec.kinds()) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	kinds := rec.kinds()
	if len(kinds) < 2 {
		t.Fatalf("events %v after %d dials: want a service.changed from at least two connections", kinds, dials.Load())
	}
	for _, k := range kinds {
		if k != protocol.EventServiceChanged {
			t.Fatalf("event kind %q, want %q", k, protocol.EventServiceChanged)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, c := range conns {
		if !c.closed.Load() {
			t.Errorf("connection %d not closed", i)
		}
	}
}

// TestRunServicesNoUnits: nothing to watch means no dialling at all.
func TestRunServicesNoUnits(t *testing.T) {
	dial := func(context.Context) (systemdConn, error) {
		t.Error("dialled systemd without units")
		return nil, errors.New("no")
	}
	runServices(context.Background(), nil, dial, &recorder{}, slog.New(slog.DiscardHandler))
}

func TestTeleopEventRates(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := teleop.Session{Operator: netip.MustParseAddr("198.51.100.7"), Since: since}
	for _, tc := range []struct {
		name   string
		rx, tx float64
		want   protocol.TeleopData
	}{
		{"measured", 120.5, 9000, protocol.TeleopData{Operator: "198.51.100.7", Since: since, RxBytesPerSec: 120.5, TxBytesPerSec: 9000}},
		{"not measured", -1, -1, protocol.TeleopData{Operator: "198.51.100.7", Since: since}},
		{"idle", 0, 0, protocol.TeleopData{Operator: "198.51.100.7", Since: since}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			s.RxBytesPerSec, s.TxBytesPerSec = tc.rx, tc.tx
			ev := teleopEvent(teleop.Transition{Kind: teleop.Started, Session: s})
			var got protocol.TeleopData
			if err := json.Unmarshal(ev.Data, &got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want || ev.Kind != protocol.EventTeleopStarted {
				t.Fatalf("%s %+v, want %+v", ev.Kind, got, tc.want)
			}
		})
	}
}

func TestLoadProfile(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "image.json")
	os.WriteFile(image, []byte(`{"version":"1.0","profile":"xle"}`), 0o644)
	cfg := testConfig(t, "ws://127.0.0.1:1") // robot type lekiwi
	for _, tc := range []struct {
		name, profile, image, want, wantErr string
	}{
		{name: "robot type", image: filepath.Join(dir, "missing.json"), want: "lekiwi"},
		{name: "image.json", image: image, want: "xle"},
		{name: "setting wins", profile: "lekiwi", image: image, want: "lekiwi"},
		{name: "unknown", profile: "r2d2", image: image, wantErr: "r2d2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Profile, c.UpdateImageInfo = tc.profile, tc.image
			p, err := loadProfile(c, runningImage(tc.image, slog.New(slog.DiscardHandler)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || p.Name != tc.want {
				t.Fatalf("profile %v, %v; want %s", p, err, tc.want)
			}
		})
	}
}
