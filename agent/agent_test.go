package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// fakeCollector returns whatever the test sets.
type fakeCollector struct {
	mu sync.Mutex
	t  protocol.Telemetry
}

func (c *fakeCollector) Sample(context.Context) (protocol.Telemetry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t, nil
}

func (c *fakeCollector) set(f func(*protocol.Telemetry)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.t)
}

func baseTelemetry() protocol.Telemetry {
	temp := 45.0
	return protocol.Telemetry{
		Network:       protocol.Network{Hostname: "lekiwi-7", MAC: "2c:cf:67:00:00:07", IPs: []string{"10.0.0.7"}},
		Resources:     protocol.Resources{CPUPercent: 5, MemoryUsedBytes: 1e9, MemoryTotalBytes: 8e9, DiskUsedBytes: 1e10, DiskTotalBytes: 6.4e10, TemperatureC: &temp},
		OSVersion:     "Debian GNU/Linux 12 (bookworm)",
		UptimeSeconds: 1000,
	}
}

// recorder collects state transitions.
type recorder struct {
	mu     sync.Mutex
	states []State
	ch     chan State
}

func newRecorder() *recorder { return &recorder{ch: make(chan State, 10000)} }

func (r *recorder) on(_, to State) {
	r.mu.Lock()
	r.states = append(r.states, to)
	r.mu.Unlock()
	r.ch <- to
}

func (r *recorder) all() []State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]State(nil), r.states...)
}

// waitState waits for the next transition into s.
func (r *recorder) waitState(t *testing.T, s State, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case got := <-r.ch:
			if got == s {
				return
			}
		case <-deadline:
			t.Fatalf("no transition to %s within %v; transitions so far: %v", s, timeout, r.all())
		}
	}
}

type harness struct {
	a      *Agent
	q      *queue.Queue
	col    *fakeCollector
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
	dir    string
}

// newHarness builds an agent with test-speed settings; mutate adjusts them.
// The queue lives in dir (a fresh temp dir when "").
func newHarness(t *testing.T, dir string, servers []string, mutate func(*Options)) *harness {
	t.Helper()
	return newHarnessQ(t, dir, queue.Options{NoSync: true}, servers, mutate)
}

func newHarnessQ(t *testing.T, dir string, qopts queue.Options, servers []string, mutate func(*Options)) *harness {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	q, err := queue.Open(filepath.Join(dir, queue.FileName), qopts)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{q: q, col: &fakeCollector{t: baseTelemetry()}, rec: newRecorder(), dir: dir}
	o := Options{
		RobotID: "lekiwi-7", RobotType: protocol.RobotLeKiwi, Servers: servers, Queue: q, Collector: h.col,
		Hardware:                protocol.Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "d04170"},
		AgentVersion:            "1.2.3-test",
		TelemetrySampleInterval: 10 * time.Millisecond,
		TelemetryMinInterval:    time.Hour,
		TelemetryMaxInterval:    time.Hour,
		Backoff:                 backoff.Policy{Base: 2 * time.Millisecond, Cap: 10 * time.Millisecond},
		FirstReconnectJitter:    -1,
		HandshakeTimeout:        2 * time.Second,
		Rand:                    rand.New(rand.NewPCG(7, 7)),
		Logger:                  slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnTransition:            h.rec.on,
	}
	if mutate != nil {
		mutate(&o)
	}
	h.a, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stop(t)
		q.Close()
	})
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.a.Run(ctx) }()
}

func (h *harness) stop(t *testing.T) {
	t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	h.cancel = nil
	if s := h.a.State(); s != Stopped {
		t.Errorf("state after Run returned = %s, want stopped", s)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// deadURL is a ws URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "ws://" + addr
}

func countState(states []State, s State) int {
	n := 0
	for _, x := range states {
		if x == s {
			n++
		}
	}
	return n
}

func TestNewRejectsBadOptions(t *testing.T) {
	q, err := queue.Open(filepath.Join(t.TempDir(), queue.FileName), queue.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	good := Options{RobotID: "r1", RobotType: protocol.RobotXLE, Servers: []string{"http://c:1"}, Queue: q, Collector: &fakeCollector{}}
	tests := []struct {
		name    string
		mutate  func(*Options)
		wantErr string
	}{
		{name: "bad robot id", mutate: func(o *Options) { o.RobotID = "R 1" }, wantErr: "RobotID"},
		{name: "bad type", mutate: func(o *Options) { o.RobotType = "dog" }, wantErr: `RobotType "dog"`},
		{name: "no servers", mutate: func(o *Options) { o.Servers = nil }, wantErr: "Servers is empty"},
		{name: "bad server", mutate: func(o *Options) { o.Servers = []string{"c:1"} }, wantErr: "no scheme"},
		{name: "no queue", mutate: func(o *Options) { o.Queue = nil }, wantErr: "Queue is nil"},
		{name: "no collector", mutate: func(o *Options) { o.Collector = nil }, wantErr: "Collector is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mutate(&o)
			if _, err := New(o); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	a, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	if a.urls[0] != "ws://c:1/v1/agent" || a.State() != Initializing {
		t.Fatalf("New(good): urls %v state %s", a.urls, a.State())
	}
}

// TestRetryingWhenNoServerListens: registration fails, the agent backs off
// in Retrying and tries again, rotating through the servers.
func TestRetryingWhenNoServerListens(t *testing.T) {
	var mu sync.Mutex
	var backoffs []Backoff
	servers := []string{deadURL(t), deadURL(t)}
	h := newHarness(t, "", servers, func(o *Options) {
		o.OnBackoff = func(b Backoff) { mu.Lock(); backoffs = append(backoffs, b); mu.Unlock() }
	})
	h.start()
	for range 4 {
		h.rec.waitState(t, Retrying, 5*time.Second)
	}
	h.stop(t)
	states := h.rec.all()
	if states[0] != Registering {
		t.Fatalf("first transition %s, want registering (from initializing); all: %v", states[0], states)
	}
	if countState(states, Connected) != 0 || countState(states, Retrying) < 4 {
		t.Fatalf("transitions %v: want several retrying and no connected", states)
	}
	for i, s := range states[:len(states)-1] {
		next := states[i+1]
		if s == Registering && next != Retrying && next != Stopped {
			t.Fatalf("registering went to %s (transitions %v)", next, states)
		}
		if s == Retrying && next != Registering && next != Stopped {
			t.Fatalf("retrying went to %s (transitions %v)", next, states)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, b := range backoffs[:4] {
		if b.State != Retrying || b.Attempt != i || b.Jitter != 0 || b.Backoff > (backoff.Policy{Base: 2 * time.Millisecond, Cap: 10 * time.Millisecond}).Max(i) {
			t.Fatalf("backoff %d = %+v: want retrying, attempt %d, no jitter, within the window", i, b, i)
		}
		if want := servers[i%2] + "/v1/agent"; b.Server != want {
			t.Fatalf("attempt %d went to %s, want %s (rotation)", i, b.Server, want)
		}
	}
}

// TestReconnectAfterServerGoesAway: Connected → Disconnected → Reconnecting
// → Registering, then Retrying while the node is down, and Connected again
// once it is back on the same address.
func TestReconnectAfterServerGoesAway(t *testing.T) {
	fc := newFakeControl(t, "")
	h := newHarness(t, "", []string{fc.url()}, nil)
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)

	addr := fc.addr
	fc.stop()
	h.rec.waitState(t, Disconnected, 5*time.Second)
	h.rec.waitState(t, Reconnecting, time.Second)
	h.rec.waitState(t, Registering, time.Second)
	h.rec.waitState(t, Retrying, 5*time.Second)

	fc.start(addr)
	h.rec.waitState(t, Connected, 5*time.Second)
	h.stop(t)

	states := h.rec.all()
	i := slices.Index(states, Disconnected)
	if got := states[i-1 : i+4]; !slices.Equal(got, []State{Connected, Disconnected, Reconnecting, Registering, Retrying}) {
		t.Fatalf("transitions around the loss = %v, want connected disconnected reconnecting registering retrying (all: %v)", got, states)
	}
	if s := h.a.Stats(); s.Reconnects != 1 {
		t.Fatalf("stats %+v: want 1 reconnect", s)
	}
	fc.checkNoViolations(t)
}

// TestFirstReconnectJitterOnlyOnFirstReconnect: after each loss of an
// established connection exactly one sleep carries the extra jitter; the
// retries that follow do not.
func TestFirstReconnectJitterOnlyOnFirstReconnect(t *testing.T) {
	fc := newFakeControl(t, "")
	var mu sync.Mutex
	var backoffs []Backoff
	const jitter = 30 * time.Millisecond
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) {
		o.FirstReconnectJitter = jitter
		o.OnBackoff = func(b Backoff) { mu.Lock(); backoffs = append(backoffs, b); mu.Unlock() }
	})
	h.start()
	for round := range 2 {
		h.rec.waitState(t, Connected, 5*time.Second)
		fc.rejectHello.Store(true) // registrations fail until allowed again
		fc.mu.Lock()
		fc.conns[len(fc.conns)-1].CloseNow()
		fc.mu.Unlock()
		h.rec.waitState(t, Reconnecting, 5*time.Second)
		for range 3 {
			h.rec.waitState(t, Retrying, 5*time.Second)
		}
		fc.rejectHello.Store(false)
		_ = round
	}
	h.rec.waitState(t, Connected, 5*time.Second)
	h.stop(t)

	mu.Lock()
	defer mu.Unlock()
	var kinds []string
	for _, b := range backoffs {
		switch {
		case b.State == Reconnecting && b.Attempt == 0 && b.Jitter >= 0 && b.Jitter <= jitter:
			kinds = append(kinds, "R")
		case b.State == Retrying && b.Jitter == 0 && b.Attempt >= 1:
			kinds = append(kinds, "r")
		default:
			t.Fatalf("unexpected backoff %+v", b)
		}
		if b.Backoff > (backoff.Policy{Base: 2 * time.Millisecond, Cap: 10 * time.Millisecond}).Max(b.Attempt) {
			t.Fatalf("backoff %+v above its window", b)
		}
	}
	got := strings.Join(kinds, "")
	if countState(h.rec.all(), Reconnecting) != 2 || strings.Count(got, "R") != 2 || !strings.HasPrefix(got, "Rrrr") {
		t.Fatalf("sleeps %q: want one reconnect sleep (R) per loss followed by plain retries (r)", got)
	}
	var jittered int
	for _, b := range backoffs {
		if b.Jitter > 0 {
			jittered++
		}
	}
	if jittered == 0 {
		t.Fatal("the first-reconnect jitter was never applied")
	}
}

// TestHelloHeartbeatsAndAcks checks the hello contents, that the heartbeat
// interval comes from the hello reply, heartbeat payloads, and OnAck.
func TestHelloHeartbeatsAndAcks(t *testing.T) {
	fc := newFakeControl(t, "")
	fc.hbIntervalMS = 20 // the agent is configured for an hour
	var mu sync.Mutex
	acks := map[protocol.Type]int{}
	h := newHarness(t, "", []string{"http://" + fc.addr}, func(o *Options) {
		o.HeartbeatInterval = time.Hour
		o.Packages = map[string]string{"lekiwi-agent": "1.2.3"}
		o.OnAck = func(seq uint64, typ protocol.Type, lat time.Duration) {
			if lat < 0 || lat > 5*time.Second {
				t.Errorf("ack latency %v for %d", lat, seq)
			}
			mu.Lock()
			acks[typ]++
			mu.Unlock()
		}
	})
	h.start()
	waitFor(t, 5*time.Second, "five acknowledged heartbeats and the first telemetry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return acks[protocol.TypeHeartbeat] >= 5 && acks[protocol.TypeTelemetry] >= 1
	})
	h.stop(t)

	hellos, frames, _, _, _ := fc.snapshot()
	if len(hellos) != 1 {
		t.Fatalf("%d hellos, want 1", len(hellos))
	}
	hello, err := protocol.DecodePayload[protocol.Hello](hellos[0])
	if err != nil {
		t.Fatal(err)
	}
	want := protocol.Hello{
		MinVersion: protocol.MinVersion, MaxVersion: protocol.Version, AgentVersion: "1.2.3-test",
		Capabilities: []string{protocol.CapTelemetry, protocol.CapEvents, protocol.CapCommands, protocol.CapQueue},
		Stream:       h.q.Stream(), RobotType: protocol.RobotLeKiwi,
		Hardware:  protocol.Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "d04170"},
		OSVersion: "Debian GNU/Linux 12 (bookworm)", Packages: map[string]string{"lekiwi-agent": "1.2.3"},
	}
	if !jsonEqual(hello, want) {
		t.Fatalf("hello = %+v\nwant %+v", hello, want)
	}
	if hellos[0].RobotID != "lekiwi-7" || time.Since(hellos[0].Timestamp) > time.Minute || hellos[0].Timestamp.Location() != time.UTC {
		t.Fatalf("hello envelope %+v", hellos[0])
	}
	last := hellos[0].Sequence
	var hbs int
	for _, f := range frames {
		if f.Sequence <= last {
			t.Fatalf("sequence %d (%s) not above %d: a single connection must only go forward here", f.Sequence, f.Type, last)
		}
		last = f.Sequence
		if f.Type == protocol.TypeHeartbeat {
			hb, err := protocol.DecodePayload[protocol.Heartbeat](f)
			if err != nil || hb.State != "connected" || hb.UptimeSeconds < 1000 {
				t.Fatalf("heartbeat %+v, %v: want state connected, uptime from the sample", hb, err)
			}
			hbs++
		}
	}
	if hbs < 5 {
		t.Fatalf("%d heartbeats", hbs)
	}
	if s := h.a.Stats(); s.Sent < 6 || s.Acked < 6 || s.Queue.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
	fc.checkNoViolations(t)
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func TestHeartbeatJitterWithinTenPercent(t *testing.T) {
	h := newHarness(t, "", []string{deadURL(t)}, nil)
	h.a.hbInterval = time.Second
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		d := h.a.heartbeatDelay()
		if d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("heartbeat delay %v outside 1s ±10%%", d)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo > 920*time.Millisecond || hi < 1080*time.Millisecond {
		t.Fatalf("delays span only [%v, %v]: the jitter should cover most of ±10%%", lo, hi)
	}
}
