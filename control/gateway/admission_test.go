package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// With one admission slot, a robot that has connected but not said hello
// holds back the next connection; the hello (or a refused upgrade) lets it
// through, and a session in its read loop holds no slot.
func TestHelloReturnsTheAdmissionSlot(t *testing.T) {
	st := storetest.Open(t)
	gw, err := New(st, Config{NodeID: "test-node", Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { gw.Run(runCtx); close(done) }()
	srv := httptest.NewUnstartedServer(gw)
	ln := admission.NewListener(srv.Listener, admission.Options{MaxPending: 1, PendingTimeout: time.Minute})
	srv.Listener, srv.Config.ConnContext = ln, admission.ConnContext
	srv.Start()
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		gw.Shutdown(sctx)
		c()
		srv.Close()
		stop()
		<-done
	})
	h := &harness{st: st, gw: gw, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}

	first := h.dial(t, "lekiwi-00001")
	dialed := make(chan *client, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, h.url, nil)
		if err != nil {
			close(dialed)
			return
		}
		t.Cleanup(func() { conn.CloseNow() })
		dialed <- &client{t: t, conn: conn, robot: "lekiwi-00002"}
	}()
	select {
	case <-dialed:
		t.Fatal("second robot got through while the first holds the only slot before its hello")
	case <-time.After(300 * time.Millisecond):
	}
	first.hello("s1")
	var second *client
	select {
	case c, ok := <-dialed:
		if !ok {
			t.Fatal("second robot's dial failed")
		}
		second = c
	case <-time.After(5 * time.Second):
		t.Fatal("second robot still waiting after the first one's hello")
	}
	second.hello("s2")

	// A request that never becomes a session gives its slot back too.
	resp, err := http.Get(srv.URL + "/v1/agent")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	third := h.dial(t, "lekiwi-00003")
	third.hello("s3")
	for _, c := range []*client{first, second, third} {
		c.send(protocol.TypeHeartbeat, heartbeat())
		c.expectAck()
	}
	// Admission wraps the socket; idle sessions must still park in the
	// netpoller on it (idle.go), not in a deep read on their own stack.
	for _, s := range gw.snapshot() {
		if s.idle == nil {
			t.Fatalf("session of %s has no idle waiter: the admission connection hides the socket", s.robotID)
		}
	}
	if ln.Pending() != 0 {
		t.Fatalf("%d admission slots held by sessions past hello", ln.Pending())
	}
}
