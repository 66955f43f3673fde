package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/protocol"
)

// streamSeq is control's deduplication key.
type streamSeq struct {
	robot, stream string
	seq           uint64
}

// connPolicy says how the fake control treats one connection.
type connPolicy struct {
	noAck     bool // never acknowledge queued messages
	dropAfter int  // close after this many queued messages, before acking the last (0: never)
	// ackBatch > 1 holds acknowledgements until that many are due (or a
	// heartbeat arrives) and sends them as one ack in reverse order.
	ackBatch int
	// reject answers queued events of this kind with an invalid error
	// instead of an ack, as control does for a message it cannot accept.
	reject string
}

// fakeControl plays the control side of /v1/agent as the gateway does:
// hello answered with a HelloReply (or an error when rejecting), heartbeats
// acknowledged on receipt, queued messages (telemetry, event, response)
// acknowledged after "storing" them, deduplicated by sequence. It also
// checks the ordering rules the gateway enforces and records violations.
type fakeControl struct {
	t            *testing.T
	srv          *httptest.Server
	addr         string
	hbIntervalMS int64
	rejectHello  atomic.Bool
	policy       func(conn int) connPolicy // nil: ack everything

	mu         sync.Mutex
	conns      []*websocket.Conn
	hellos     []protocol.Envelope
	frames     []protocol.Envelope          // every frame after hello
	stored     map[streamSeq][]byte         // queued messages, first copy: the dedupe key of control
	storedEnv  map[uint64]protocol.Envelope // by sequence alone, for single-robot tests
	duplicates int
	violations []string
}

func newFakeControl(t *testing.T, addr string) *fakeControl {
	t.Helper()
	f := &fakeControl{t: t, hbIntervalMS: 3_600_000, stored: map[streamSeq][]byte{}, storedEnv: map[uint64]protocol.Envelope{}}
	f.start(addr)
	t.Cleanup(f.stop)
	return f
}

// start listens on addr ("" for a fresh port).
func (f *fakeControl) start(addr string) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 { // the old listener's port may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("listen %s: %v", addr, err)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.handle))
	f.srv.Listener.Close()
	f.srv.Listener = ln
	f.srv.Start()
	f.addr = ln.Addr().String()
}

// stop closes the server and every connection, like a crashed node.
func (f *fakeControl) stop() {
	if f.srv == nil {
		return
	}
	f.srv.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.CloseNow()
	}
	f.mu.Unlock()
	f.srv = nil
}

func (f *fakeControl) url() string { return "ws://" + f.addr }

func (f *fakeControl) violate(format string, args ...any) {
	f.mu.Lock()
	f.violations = append(f.violations, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func (f *fakeControl) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/agent" {
		http.NotFound(w, r)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(protocol.MaxFrameBytes)
	ctx := r.Context()
	f.mu.Lock()
	f.conns = append(f.conns, c)
	connIndex := len(f.conns) - 1
	f.mu.Unlock()

	_, data, err := c.Read(ctx)
	if err != nil {
		return
	}
	env, err := protocol.Decode(data)
	if err != nil || env.Type != protocol.TypeHello {
		f.violate("first frame is not a valid hello: %v %s", err, data)
		return
	}
	hello, err := protocol.DecodePayload[protocol.Hello](env)
	if err != nil {
		f.violate("hello payload invalid: %v", err)
		return
	}
	f.mu.Lock()
	f.hellos = append(f.hellos, env)
	f.mu.Unlock()
	if f.rejectHello.Load() {
		f.send(ctx, c, env.RobotID, protocol.TypeError, protocol.Errorf(protocol.CodeNotReady, env.Sequence, "control cannot record the connection right now; retry later"))
		c.Close(websocket.StatusTryAgainLater, "store unavailable")
		return
	}
	f.send(ctx, c, env.RobotID, protocol.TypeHello, protocol.HelloReply{Version: protocol.Version, NodeID: "fake-1", HeartbeatIntervalMS: f.hbIntervalMS})

	pol := connPolicy{}
	if f.policy != nil {
		pol = f.policy(connIndex)
	}
	var lastQueued, lastHeartbeat uint64
	var held []uint64
	flush := func() {
		if len(held) == 0 {
			return
		}
		slices.Reverse(held)
		f.send(ctx, c, env.RobotID, protocol.TypeAck, protocol.Ack{Sequences: held})
		held = nil
	}
	nQueued := 0
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		env, err := protocol.Decode(data)
		if err != nil {
			f.violate("undecodable frame: %v", err)
			continue
		}
		f.mu.Lock()
		f.frames = append(f.frames, env)
		f.mu.Unlock()
		switch env.Type {
		case protocol.TypeHeartbeat:
			if env.Sequence <= lastHeartbeat {
				f.violate("heartbeat %d not above %d", env.Sequence, lastHeartbeat)
			}
			lastHeartbeat = env.Sequence
			if _, err := protocol.DecodePayload[protocol.Heartbeat](env); err != nil {
				f.violate("heartbeat payload: %v", err)
			}
			f.send(ctx, c, env.RobotID, protocol.TypeAck, protocol.Ack{Sequences: []uint64{env.Sequence}})
			flush()
		case protocol.TypeTelemetry, protocol.TypeEvent, protocol.TypeResponse:
			if env.Sequence <= lastQueued {
				f.violate("queued %s %d not above %d on this connection", env.Type, env.Sequence, lastQueued)
			}
			lastQueued = env.Sequence
			f.mu.Lock()
			key := streamSeq{env.RobotID, hello.Stream, env.Sequence}
			if prev, ok := f.stored[key]; ok {
				f.duplicates++
				if !bytes.Equal(prev, data) {
					f.violations = append(f.violations, fmt.Sprintf("resent %d differs:\n%s\n%s", env.Sequence, prev, data))
				}
			} else {
				f.stored[key] = data
				f.storedEnv[env.Sequence] = env
			}
			f.mu.Unlock()
			nQueued++
			if pol.dropAfter > 0 && nQueued >= pol.dropAfter {
				return // "crash" before the commit that would acknowledge it
			}
			if pol.reject != "" && env.Type == protocol.TypeEvent {
				if ev, _ := protocol.DecodePayload[protocol.Event](env); ev.Kind == pol.reject {
					f.send(ctx, c, env.RobotID, protocol.TypeError, protocol.Errorf(protocol.CodeInvalid, env.Sequence, "event kind %q is refused", ev.Kind))
					continue
				}
			}
			switch {
			case pol.noAck:
			case pol.ackBatch > 1:
				if held = append(held, env.Sequence); len(held) >= pol.ackBatch {
					flush()
				}
			default:
				f.send(ctx, c, env.RobotID, protocol.TypeAck, protocol.Ack{Sequences: []uint64{env.Sequence}})
			}
		default:
			f.violate("unexpected %s from robot", env.Type)
		}
	}
}

func (f *fakeControl) send(ctx context.Context, c *websocket.Conn, robot string, t protocol.Type, payload any) {
	env, err := protocol.New(t, robot, 1, time.Now(), payload)
	if err != nil {
		f.violate("encode %s: %v", t, err)
		return
	}
	b, err := protocol.Encode(env)
	if err != nil {
		f.violate("encode %s: %v", t, err)
		return
	}
	_ = c.Write(ctx, websocket.MessageText, b)
}

// command sends a command on the newest connection.
func (f *fakeControl) command(robot string, cmd protocol.Command) {
	f.mu.Lock()
	c := f.conns[len(f.conns)-1]
	f.mu.Unlock()
	f.send(context.Background(), c, robot, protocol.TypeCommand, cmd)
}

// snapshot copies what the server saw.
func (f *fakeControl) snapshot() (hellos, frames []protocol.Envelope, stored map[uint64]protocol.Envelope, dups int, violations []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stored = map[uint64]protocol.Envelope{}
	for k, v := range f.storedEnv {
		stored[k] = v
	}
	return append([]protocol.Envelope(nil), f.hellos...), append([]protocol.Envelope(nil), f.frames...), stored, f.duplicates, append([]string(nil), f.violations...)
}

func (f *fakeControl) checkNoViolations(t *testing.T) {
	t.Helper()
	if _, _, _, _, v := f.snapshot(); len(v) > 0 {
		t.Fatalf("protocol violations seen by control:\n%v", v)
	}
}
