package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

type harness struct {
	st  *store.Store
	gw  *Gateway
	srv *httptest.Server
	url string
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	st, log := storetest.Open(t), storetest.Logger()
	cfg.NodeID, cfg.Logger = "test-node", log
	gw, err := New(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { gw.Run(runCtx); close(done) }()
	srv := httptest.NewServer(gw)
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		gw.Shutdown(sctx)
		c()
		srv.Close()
		stop()
		<-done
	})
	return &harness{st: st, gw: gw, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// logTypes is the types of robot's events in the log, oldest first.
func (h *harness) logTypes(t *testing.T, robot string) []string {
	t.Helper()
	evs, err := h.st.Events(context.Background(), 0, 1000, robot)
	if err != nil {
		t.Fatal(err)
	}
	types := make([]string, 0, len(evs))
	for _, e := range evs {
		types = append(types, e.Type)
	}
	return types
}

// waitRecorded waits until robot's connection records in the log number
// n: hello is answered before its record commits.
func (h *harness) waitRecorded(t *testing.T, robot string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := 0
		for _, typ := range h.logTypes(t, robot) {
			if typ == store.TypeRobotConnected {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d connection records after 5 s, want %d", robot, got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// committed waits for a queued request's result and fails unless it
// committed.
func committed(t *testing.T, result <-chan error, what string) {
	t.Helper()
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not committed within 5 s", what)
	}
}

// client is a hand-driven robot connection: it sends exactly what a test
// says, including garbage.
type client struct {
	t     *testing.T
	conn  *websocket.Conn
	robot string
	seq   uint64
}

func (h *harness) dial(t *testing.T, robot string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, h.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(protocol.MaxFrameBytes)
	t.Cleanup(func() { conn.CloseNow() })
	return &client{t: t, conn: conn, robot: robot}
}

func (c *client) raw(frame []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, frame); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) sendSeq(typ protocol.Type, seq uint64, payload any) {
	c.t.Helper()
	env, err := protocol.New(typ, c.robot, seq, time.Now(), payload)
	if err != nil {
		c.t.Fatal(err)
	}
	b, err := json.Marshal(env)
	if err != nil {
		c.t.Fatal(err)
	}
	c.raw(b)
}

func (c *client) send(typ protocol.Type, payload any) uint64 {
	c.t.Helper()
	c.seq++
	c.sendSeq(typ, c.seq, payload)
	return c.seq
}

func (c *client) recv() (protocol.Envelope, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, data, err := c.conn.Read(ctx)
	if err != nil {
		return protocol.Envelope{}, err
	}
	return protocol.Decode(data)
}

func (c *client) hello(stream string) protocol.HelloReply {
	c.t.Helper()
	c.send(protocol.TypeHello, protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "test", Stream: stream, RobotType: protocol.RobotLeKiwi, Hardware: protocol.Hardware{Serial: "s-" + c.robot},
		Image: &protocol.ImageInfo{Version: "2026.11.2", Profile: "lekiwi"}})
	env, err := c.recv()
	if err != nil || env.Type != protocol.TypeHello {
		c.t.Fatalf("hello reply: %+v, %v", env, err)
	}
	r, err := protocol.DecodePayload[protocol.HelloReply](env)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

// expectAck reads until an ack arrives and returns its sequences.
func (c *client) expectAck() []uint64 {
	c.t.Helper()
	env, err := c.recv()
	if err != nil {
		c.t.Fatalf("waiting for ack: %v", err)
	}
	if env.Type != protocol.TypeAck {
		c.t.Fatalf("got %s %s, want ack", env.Type, env.Payload)
	}
	a, err := protocol.DecodePayload[protocol.Ack](env)
	if err != nil {
		c.t.Fatal(err)
	}
	return a.Sequences
}

func (c *client) expectError(code protocol.Code) {
	c.t.Helper()
	env, err := c.recv()
	if err != nil {
		c.t.Fatalf("waiting for %s error: %v", code, err)
	}
	if env.Type != protocol.TypeError {
		c.t.Fatalf("got %s %s, want error %s", env.Type, env.Payload, code)
	}
	perr, err := protocol.DecodePayload[protocol.Error](env)
	if err != nil || perr.Code != code || perr.Message == "" {
		c.t.Fatalf("error payload %+v (%v), want code %s with a message", perr, err, code)
	}
}

func (c *client) expectClose(code websocket.StatusCode) {
	c.t.Helper()
	for {
		_, err := c.recv()
		if err == nil {
			continue // frames queued before the close
		}
		if got := websocket.CloseStatus(err); got != code {
			c.t.Fatalf("connection ended with %v (status %d), want close %d", err, got, code)
		}
		return
	}
}

func heartbeat() protocol.Heartbeat { return protocol.Heartbeat{UptimeSeconds: 12} }

func event(kind string) protocol.Event { return protocol.Event{Kind: kind} }

func TestHelloHeartbeatAndDurableAck(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Second})
	c := h.dial(t, "kiwi-1")
	reply := c.hello("stream-a")
	if reply.Version != protocol.Version || reply.HeartbeatIntervalMS != 1000 || reply.NodeID != "test-node" {
		t.Fatalf("hello reply %+v", reply)
	}
	hb := c.send(protocol.TypeHeartbeat, heartbeat())
	if got := c.expectAck(); !slices.Equal(got, []uint64{hb}) {
		t.Fatalf("heartbeat ack %v, want [%d]", got, hb)
	}
	ev := c.send(protocol.TypeEvent, event(protocol.EventTeleopStarted))
	if got := c.expectAck(); !slices.Equal(got, []uint64{ev}) {
		t.Fatalf("event ack %v, want [%d]", got, ev)
	}
	// Acknowledged means durable: the event is in the log already.
	evs, err := h.st.Events(context.Background(), 0, 10, "kiwi-1")
	if err != nil {
		t.Fatal(err)
	}
	types := []string{}
	for _, e := range evs {
		types = append(types, e.Type)
	}
	want := []string{store.TypeRobotRegistered, store.TypeRobotConnected, store.TypeRobotEvent}
	if !slices.Equal(types, want) {
		t.Fatalf("event log %v, want %v", types, want)
	}
	if evs[2].RobotSeq != ev || evs[2].Stream != "stream-a" {
		t.Fatalf("stored robot event %+v", evs[2])
	}
	r, err := h.st.Robot(context.Background(), "kiwi-1")
	if err != nil || !r.Teleoperation.Active || r.Status.State != store.StateOnline || r.Hardware.Serial != "s-kiwi-1" {
		t.Fatalf("robot %+v, %v", r, err)
	}
	if img := r.Deployment.Image; img == nil || img.Version != "2026.11.2" || img.Profile != "lekiwi" {
		t.Fatalf("robot's image %+v, want hello's", img)
	}
}

func TestResentMessagesAreAcknowledgedButAppliedOnce(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Second})
	c := h.dial(t, "kiwi-2")
	c.hello("s1")
	first := c.send(protocol.TypeEvent, event("a"))
	c.expectAck()
	c.conn.Close(websocket.StatusNormalClosure, "")

	// Same stream after reconnect: the old sequence is a duplicate, the
	// new one is stored.
	c2 := h.dial(t, "kiwi-2")
	c2.seq = first + 10
	c2.hello("s1")
	c2.sendSeq(protocol.TypeEvent, first, event("a"))
	if got := c2.expectAck(); !slices.Equal(got, []uint64{first}) {
		t.Fatalf("duplicate not re-acknowledged: %v", got)
	}
	c2.send(protocol.TypeEvent, event("b"))
	c2.expectAck()
	// A wiped agent (new stream) restarting at the same sequence is new data.
	c2.conn.Close(websocket.StatusNormalClosure, "")
	c3 := h.dial(t, "kiwi-2")
	c3.hello("s2")
	c3.sendSeq(protocol.TypeEvent, first, event("c"))
	c3.expectAck()

	evs, err := h.st.Events(context.Background(), 0, 100, "kiwi-2")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		if e.Type == store.TypeRobotEvent {
			var pe protocol.Event
			json.Unmarshal(e.Data, &pe)
			kinds = append(kinds, pe.Kind)
		}
	}
	if !slices.Equal(kinds, []string{"a", "b", "c"}) {
		t.Fatalf("stored events %v, want [a b c]", kinds)
	}
}

func TestBadInputGetsClearErrorsAndLeavesOthersHealthy(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Second})
	bystander := h.dial(t, "bystander")
	bystander.hello("b")

	huge := `{"type":"event","robot_id":"r","timestamp":"2026-01-01T00:00:00Z","sequence":1,"payload":{"kind":"x","message":"` + strings.Repeat("a", 1<<20) + `"}}`
	tests := []struct {
		name  string
		frame func(c *client) []byte
		code  protocol.Code // error frame expected, "" for none
		close websocket.StatusCode
	}{
		{"malformed json", func(*client) []byte { return []byte(`{"type":"heartbeat",`) }, protocol.CodeBadJSON, 0},
		{"wrong field type", func(c *client) []byte {
			return []byte(`{"type":"heartbeat","robot_id":"` + c.robot + `","timestamp":"2026-01-01T00:00:00Z","sequence":"seven"}`)
		}, protocol.CodeInvalid, 0},
		{"wrong payload field type", func(c *client) []byte {
			c.seq++
			return []byte(`{"type":"telemetry","robot_id":"` + c.robot + `","timestamp":"2026-01-01T00:00:00Z","sequence":` + itoa(c.seq) + `,"payload":{"resources":{"cpu_percent":"hot"}}}`)
		}, protocol.CodeInvalid, 0},
		{"unknown type", func(c *client) []byte {
			c.seq++
			return []byte(`{"type":"teleport","robot_id":"` + c.robot + `","timestamp":"2026-01-01T00:00:00Z","sequence":` + itoa(c.seq) + `}`)
		}, protocol.CodeUnknownType, 0},
		{"control-only type", func(c *client) []byte {
			c.seq++
			return []byte(`{"type":"ack","robot_id":"` + c.robot + `","timestamp":"2026-01-01T00:00:00Z","sequence":` + itoa(c.seq) + `,"payload":{"sequences":[1]}}`)
		}, protocol.CodeInvalid, 0},
		{"robot id not matching hello", func(c *client) []byte {
			c.seq++
			return []byte(`{"type":"heartbeat","robot_id":"someone-else","timestamp":"2026-01-01T00:00:00Z","sequence":` + itoa(c.seq) + `,"payload":{"uptime_seconds":1}}`)
		}, protocol.CodeRobotMismatch, websocket.StatusPolicyViolation},
		{"sequence going backwards", func(c *client) []byte {
			return []byte(`{"type":"event","robot_id":"` + c.robot + `","timestamp":"2026-01-01T00:00:00Z","sequence":1,"payload":{"kind":"late"}}`)
		}, protocol.CodeSequenceBackwards, websocket.StatusPolicyViolation},
		{"1 MiB frame", func(*client) []byte { return []byte(huge) }, "", websocket.StatusMessageTooBig},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial(t, "bad-"+itoa(uint64(i)))
			c.hello("x")
			c.send(protocol.TypeEvent, event("before")) // sets the connection's sequence floor
			c.expectAck()
			c.raw(tc.frame(c))
			if tc.code != "" {
				c.expectError(tc.code)
			}
			if tc.close != 0 {
				c.expectClose(tc.close)
			} else {
				// Non-fatal: the same connection keeps working.
				hb := c.send(protocol.TypeHeartbeat, heartbeat())
				if got := c.expectAck(); !slices.Equal(got, []uint64{hb}) {
					t.Fatalf("after bad frame, heartbeat ack %v", got)
				}
			}
			// The bystander never notices.
			hb := bystander.send(protocol.TypeHeartbeat, heartbeat())
			if got := bystander.expectAck(); !slices.Equal(got, []uint64{hb}) {
				t.Fatalf("bystander ack %v", got)
			}
		})
	}
}

func TestHelloMustComeFirstAndBeValid(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Second})
	tests := []struct {
		name    string
		typ     protocol.Type
		payload any
		code    protocol.Code
		close   websocket.StatusCode
	}{
		{"heartbeat first", protocol.TypeHeartbeat, heartbeat(), protocol.CodeNotReady, websocket.StatusPolicyViolation},
		{"no common version", protocol.TypeHello, protocol.Hello{MinVersion: 7, MaxVersion: 9, AgentVersion: "x", Stream: "s", RobotType: protocol.RobotXLE}, protocol.CodeVersion, websocket.StatusProtocolError},
		{"bad robot type", protocol.TypeHello, protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "x", Stream: "s", RobotType: "drone"}, protocol.CodeInvalid, websocket.StatusPolicyViolation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial(t, "first")
			c.send(tc.typ, tc.payload)
			c.expectError(tc.code)
			c.expectClose(tc.close)
		})
	}
}

func TestSilentRobotGoesOfflineAndDisconnectIsRecorded(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: 200 * time.Millisecond, OfflineGrace: 100 * time.Millisecond, FlushInterval: 50 * time.Millisecond})
	quiet := h.dial(t, "quiet")
	quiet.hello("q")
	leaver := h.dial(t, "leaver")
	leaver.hello("l")
	leaver.conn.Close(websocket.StatusNormalClosure, "bye")
	// "quiet" keeps its socket open but never heartbeats: half-open peers
	// must go offline too, and be disconnected.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := h.st.CountRobots(context.Background(), store.StateOffline)
		if err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("offline robots = %d, %v; want 2", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	quiet.expectClose(websocket.StatusPolicyViolation)
	types := h.logTypes(t, "leaver")
	want := []string{store.TypeRobotRegistered, store.TypeRobotConnected, store.TypeRobotDisconnected, store.TypeRobotOffline}
	if !slices.Equal(types, want) {
		t.Fatalf("leaver events %v, want %v", types, want)
	}
}

func TestShutdownTellsRobotsToGoAway(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: time.Second})
	c := h.dial(t, "kiwi-9")
	c.hello("s")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.gw.Shutdown(ctx)
	c.expectClose(websocket.StatusGoingAway)
	r, err := h.st.Robot(ctx, "kiwi-9")
	if err != nil || r.Status.Connected {
		t.Fatalf("after shutdown robot %+v, %v: want disconnect recorded", r.Status, err)
	}
	resp, err := http.Get(h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("new connection during shutdown: %d", resp.StatusCode)
	}
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

var _ = errors.New

func TestRobotMarkedOfflineWhileConnectedIsRevived(t *testing.T) {
	h := newHarness(t, Config{HeartbeatInterval: 200 * time.Millisecond, OfflineGrace: 100 * time.Millisecond, FlushInterval: 50 * time.Millisecond})
	c := h.dial(t, "kiwi-r")
	c.hello("s")
	ctx := context.Background()
	// Another node's sweep, missing this node's presence, marks it offline.
	if _, err := h.st.Append(ctx, []store.Event{{RobotID: "kiwi-r", Type: store.TypeRobotOffline, Time: time.Now(), Data: json.RawMessage(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // keep heartbeating like a healthy robot
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				c.send(protocol.TypeHeartbeat, heartbeat())
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	deadline := time.Now().Add(3 * time.Second)
	for {
		r, err := h.st.Robot(ctx, "kiwi-r")
		if err == nil && r.Status.State == store.StateOnline && r.Status.Connected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("robot still %+v, %v", r.Status, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
