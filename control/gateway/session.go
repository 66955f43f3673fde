package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// Limits on one session.
const (
	outQueue      = 64               // frames waiting for the writer
	writeTimeout  = 10 * time.Second // a robot that cannot take a frame this long is dropped
	maxBadFrames  = 16               // non-fatal protocol errors before the session is closed
	closeWaitTime = 2 * time.Second  // a peer that does not answer our close frame is cut off
)

// outFrame is a frame for the writer, or (code != 0) a request to close
// after everything queued before it was written.
type outFrame struct {
	data   []byte
	code   websocket.StatusCode
	reason string
}

// session is one robot connection.
type session struct {
	g    *Gateway
	conn *websocket.Conn
	raw  net.Conn // under conn, to cut off a peer that ignores our close
	// admission is the connection's admission slot, returned once hello
	// is answered (nil when the listener does not bound admissions).
	admission *admission.Conn
	// idle, when set, lets the session wait for frames on a shallow stack.
	idle *idleWaiter
	// probeMu orders buffered() probes of the reader against the close
	// handshake, which reads from it too; closing stops the probes.
	probeMu sync.Mutex
	closing bool
	id      string
	remote  string
	// certRobotID and certSerial come from the verified client certificate
	// (empty in --insecure mode).
	certRobotID string
	certSerial  string

	// Set by hello, then read-only.
	robotID   string
	stream    string
	connected store.ConnectedData

	// Owned by the reader goroutine.
	lastQueued    uint64 // last telemetry/event/response sequence
	lastHeartbeat uint64
	badFrames     int

	serverSeq atomic.Uint64
	heardAt   atomic.Int64 // unix ns of the last valid message
	// isRecorded is set once the connection record is durable (hello
	// does not wait for it).
	isRecorded atomic.Bool
	uptime     atomic.Uint64 // float64 bits, from the last heartbeat
	flushedAt  atomic.Int64  // heardAt value last written to the store

	// Outbound frames. An idle session holds no queue and no writer
	// goroutine: the first frame queued starts a writer, which exits once
	// the queue is empty (thousands of idle robots would otherwise each
	// keep a goroutine stack and a 64-slot channel).
	outMu   sync.Mutex
	outq    []outFrame    // waiting for the writer; nil when idle
	writing bool          // a writer goroutine is draining outq
	shut    bool          // closeNow ran: frames are dropped from now on
	room    chan struct{} // a token whenever the writer takes a frame or stops
	writers sync.WaitGroup

	ctx       context.Context // the session's, for writes; set by serve
	done      chan struct{}   // closed when the session ends
	closeOnce sync.Once
	cancel    context.CancelFunc
}

func newSession(g *Gateway, conn *websocket.Conn, remote string) *session {
	return &session{g: g, conn: conn, id: newID(), remote: remote, room: make(chan struct{}, 1), done: make(chan struct{})}
}

// serve runs the session until the connection ends.
func (s *session) serve(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	s.ctx, s.cancel = ctx, cancel
	defer cancel()
	defer func() {
		// Frames queued so far (an error, a close code) go out first; this
		// close only takes effect if none was requested. Once it is queued
		// (or closeNow has run) no new writer can start, so Wait is final.
		s.close(websocket.StatusInternalError, "session ended")
		s.writers.Wait()
		close(s.done)
	}()

	// This goroutine lives as long as the robot is connected, mostly idle:
	// everything with deep call chains (hello, logging, the disconnect
	// record) runs on fresh stacks so that its own stays small.
	var helloed bool
	s.onFreshStack(func() {
		helloed = s.start(ctx)
		// Here, not on the session's own goroutine: stopping the slot's
		// timer grows a stack past its first 2 KiB, and this goroutine
		// keeps what it grows for as long as the robot is connected.
		s.admission.Admit()
	})
	if !helloed {
		return
	}
	reason := s.readLoop(ctx)
	s.onFreshStack(func() { s.finish(parent, reason) })
}

// start runs the hello exchange and reports whether the session is on.
func (s *session) start(ctx context.Context) bool {
	if err := s.hello(ctx); err != nil {
		s.g.log.Info("robot hello rejected", "remote", s.remote, "robot", s.robotID, "err", err)
		return false
	}
	s.g.log.Info("robot connected", "robot", s.robotID, "session", s.id, "remote", s.remote)
	return true
}

// finish records the end of a session that got past hello.
func (s *session) finish(parent context.Context, reason string) {
	s.g.log.Info("robot disconnected", "robot", s.robotID, "session", s.id, "reason", reason)
	s.g.detach(s)
	data, _ := json.Marshal(store.DisconnectedData{Session: s.id, Node: s.g.cfg.NodeID, Reason: reason})
	ev := store.Event{RobotID: s.robotID, Type: store.TypeRobotDisconnected, Time: s.g.cfg.Now().UTC(), Data: data, Actor: "control", CorrelationID: s.id}
	select {
	case s.g.commits <- commitReq{event: ev, received: time.Now()}:
	case <-parent.Done():
	}
}

// hello reads and answers the first frame.
func (s *session) hello(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, s.g.cfg.HelloTimeout)
	defer cancel()
	typ, data, err := s.conn.Read(hctx)
	if err != nil {
		s.close(websocket.StatusPolicyViolation, "no hello received")
		return fmt.Errorf("read hello: %w", err)
	}
	if typ != websocket.MessageText {
		return s.reject(protocol.Errorf(protocol.CodeInvalid, 0, "frames must be JSON text, got a binary frame"))
	}
	env, err := protocol.Decode(data)
	if err != nil {
		return s.reject(asProtocolError(err))
	}
	if env.Type != protocol.TypeHello {
		return s.reject(protocol.Errorf(protocol.CodeNotReady, env.Sequence, "the first message must be hello, got %s", env.Type))
	}
	s.robotID = env.RobotID
	if s.certRobotID != "" && env.RobotID != s.certRobotID {
		s.g.deny(store.DeniedData{Reason: "robot_mismatch", Remote: s.remote, Claimed: env.RobotID,
			Detail: fmt.Sprintf("certificate of robot %q claimed robot %q", s.certRobotID, env.RobotID)}, s.certRobotID)
		s.robotID = s.certRobotID
		return s.reject(protocol.Errorf(protocol.CodeRobotMismatch, env.Sequence, "hello names robot %q but the certificate is robot %q", env.RobotID, s.certRobotID))
	}
	hello, err := protocol.DecodePayload[protocol.Hello](env)
	if err != nil {
		return s.reject(asProtocolError(err))
	}
	version, err := hello.Negotiate()
	if err != nil {
		return s.reject(asProtocolError(err))
	}
	s.stream = hello.Stream
	s.g.metrics.messages.WithLabelValues(string(protocol.TypeHello)).Inc()
	if !s.g.attach(s) {
		s.close(websocket.StatusGoingAway, "control node shutting down")
		return errors.New("node shutting down")
	}
	now := s.g.cfg.Now().UTC()
	s.heardAt.Store(now.UnixNano())
	s.connected = store.ConnectedData{
		Session: s.id, Node: s.g.cfg.NodeID, Remote: s.remote, ProtocolVersion: version,
		AgentVersion: hello.AgentVersion, OSVersion: hello.OSVersion, Packages: hello.Packages,
		Type: hello.RobotType, Hardware: hello.Hardware, Capabilities: hello.Capabilities, Image: hello.Image,
	}
	// The connection record is queued, not waited for: the robot's own
	// messages queue behind it on the committer, so none is acknowledged
	// before it is durable, and the reply does not wait for a commit. In a
	// reconnect storm a commit queue that is seconds long used to hold
	// every hello (and its admission slot) past the robot's 10 s patience;
	// the robot gave up, and its late record was followed by a disconnect
	// record — twice the writes for nothing, and the storm fed itself.
	// Pending commands are read once the record is durable; if it fails,
	// the session closes and the robot comes back.
	rec := commitReq{event: s.g.connectEvent(s, now), received: time.Now(), recorded: s.recorded}
	select {
	case s.g.commits <- rec:
	case <-ctx.Done():
		s.g.detach(s)
		return fmt.Errorf("record connection: %w", ctx.Err())
	}
	reply := protocol.HelloReply{
		Version:             version,
		Capabilities:        s.g.capabilities(),
		NodeID:              s.g.cfg.NodeID,
		HeartbeatIntervalMS: s.g.cfg.HeartbeatInterval.Milliseconds(),
	}
	frame, err := s.frame(protocol.TypeHello, reply)
	if err != nil {
		return err
	}
	s.send(ctx, frame)
	return nil
}

// recorded learns, on the committer, whether the connection record is
// durable: then the robot's pending commands are read; if not, the session
// closes so that the robot reconnects (and resends what was not acked).
func (s *session) recorded(err error) {
	if err != nil {
		s.g.log.Warn("robot connection not recorded; closing the session", "robot", s.robotID, "session", s.id, "err", err)
		s.fail(protocol.Errorf(protocol.CodeNotReady, 0, "control cannot record the connection right now; reconnect later"))
		return
	}
	s.isRecorded.Store(true)
	s.sendPending()
}

// reject answers a bad hello and closes.
func (s *session) reject(perr *protocol.Error) error {
	s.g.metrics.protocolErrors.WithLabelValues(string(perr.Code)).Inc()
	robot := s.robotID
	if robot == "" {
		robot = "unknown"
	}
	if b, err := s.encode(protocol.TypeError, robot, perr); err == nil {
		s.send(context.Background(), b)
	}
	code := websocket.StatusCode(perr.Code.CloseCode())
	if !perr.Code.Fatal() {
		code = websocket.StatusPolicyViolation
	}
	s.close(code, string(perr.Code))
	return perr
}

// readLoop handles frames until the connection ends, returning why. Between
// bursts of frames it waits on a shallow stack (see idle.go).
func (s *session) readLoop(ctx context.Context) string {
	for {
		if s.idle != nil {
			// An error means the socket is closed; the read reports why.
			_ = s.idle.waitReadable()
		}
		var reason string
		var ended bool
		s.onFreshStack(func() { reason, ended = s.readBurst(ctx) })
		if ended {
			return reason
		}
	}
}

// onFreshStack runs fn on a new goroutine and waits for it, so that the
// stack fn grows is freed when it returns instead of staying with the
// session's long-lived goroutine.
func (s *session) onFreshStack(fn func()) {
	if s.idle == nil {
		fn()
		return
	}
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	<-done
}

// readBurst handles frames until nothing more is buffered (ended false) or
// the connection ends (ended true, with why).
func (s *session) readBurst(ctx context.Context) (reason string, ended bool) {
	for {
		// No deadline or cancellation on the read itself: a cancellable
		// context would register a callback on every read of every idle
		// session. closeNow cancels ctx and then closes the connection,
		// which ends this read.
		typ, data, err := s.conn.Read(context.Background())
		if err != nil {
			if st := websocket.CloseStatus(err); st != -1 {
				return fmt.Sprintf("closed with %d", st), true
			}
			if ctx.Err() != nil {
				return "closed by control", true
			}
			return "connection lost: " + err.Error(), true
		}
		var perr *protocol.Error
		if typ != websocket.MessageText {
			perr = protocol.Errorf(protocol.CodeInvalid, 0, "frames must be JSON text, got a binary frame")
		} else {
			perr = s.handle(ctx, data)
		}
		if perr != nil {
			s.g.metrics.protocolErrors.WithLabelValues(string(perr.Code)).Inc()
			s.send(ctx, s.errorFrame(perr))
			if perr.Code.Fatal() {
				s.close(websocket.StatusCode(perr.Code.CloseCode()), string(perr.Code))
				return "protocol error: " + perr.Error(), true
			}
			if s.badFrames++; s.badFrames >= maxBadFrames {
				s.close(websocket.StatusPolicyViolation, "too many bad messages")
				return fmt.Sprintf("%d bad messages", s.badFrames), true
			}
		}
		if !s.moreBuffered() {
			return "", false
		}
	}
}

// moreBuffered reports whether the next frame can be read without waiting
// for the socket. Once the session is closing, the answer is always yes:
// the close handshake reads from the connection too, so the reader must
// not probe it, and simply reads on until the connection ends.
func (s *session) moreBuffered() bool {
	if s.idle == nil {
		return true
	}
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	return s.closing || s.idle.buffered()
}

// handle processes one frame; a non-nil result is sent back as an error.
func (s *session) handle(ctx context.Context, data []byte) *protocol.Error {
	env, err := protocol.Decode(data)
	if err != nil {
		return asProtocolError(err)
	}
	if env.RobotID != s.robotID {
		s.g.deny(store.DeniedData{Reason: "robot_mismatch", Remote: s.remote, Claimed: env.RobotID,
			Detail: fmt.Sprintf("session of robot %q sent a message as %q", s.robotID, env.RobotID)}, s.robotID)
		return protocol.Errorf(protocol.CodeRobotMismatch, env.Sequence, "robot_id %q does not match %q from hello", env.RobotID, s.robotID)
	}
	switch env.Type {
	case protocol.TypeHeartbeat:
		if env.Sequence <= s.lastHeartbeat {
			return protocol.Errorf(protocol.CodeSequenceBackwards, env.Sequence, "heartbeat sequence %d is not above the previous %d", env.Sequence, s.lastHeartbeat)
		}
		hb, err := protocol.DecodePayload[protocol.Heartbeat](env)
		if err != nil {
			return asProtocolError(err)
		}
		s.lastHeartbeat = env.Sequence
		now := s.g.cfg.Now()
		s.heardAt.Store(now.UnixNano())
		s.uptime.Store(math.Float64bits(hb.UptimeSeconds))
		s.g.metrics.heartbeatLag.Observe(now.Sub(env.Timestamp).Seconds())
		if s.g.cfg.OnHeartbeat != nil {
			s.g.cfg.OnHeartbeat(s.robotID, now, hb)
		}
		s.g.metrics.messages.WithLabelValues(string(env.Type)).Inc()
		if frame, err := s.frame(protocol.TypeAck, protocol.Ack{Sequences: []uint64{env.Sequence}}); err == nil {
			s.send(ctx, frame)
		}
		return nil
	case protocol.TypeTelemetry, protocol.TypeEvent, protocol.TypeResponse:
		if env.Sequence <= s.lastQueued {
			return protocol.Errorf(protocol.CodeSequenceBackwards, env.Sequence, "sequence %d is not above the previous %d on this connection", env.Sequence, s.lastQueued)
		}
		ev, perr := s.toEvent(env)
		if perr != nil {
			return perr
		}
		s.lastQueued = env.Sequence
		s.heardAt.Store(s.g.cfg.Now().UnixNano())
		s.g.metrics.messages.WithLabelValues(string(env.Type)).Inc()
		select {
		case s.g.commits <- commitReq{event: ev, session: s, received: time.Now()}:
		case <-ctx.Done():
		}
		return nil
	case protocol.TypeRenew:
		s.heardAt.Store(s.g.cfg.Now().UnixNano())
		return s.renew(ctx, env)
	case protocol.TypeHello:
		return protocol.Errorf(protocol.CodeInvalid, env.Sequence, "hello was already received on this connection")
	default:
		return protocol.Errorf(protocol.CodeInvalid, env.Sequence, "%s messages flow from control to robots, not back", env.Type)
	}
}

// toEvent validates a durable robot message and turns it into a log entry.
func (s *session) toEvent(env protocol.Envelope) (store.Event, *protocol.Error) {
	var typ string
	var err error
	switch env.Type {
	case protocol.TypeTelemetry:
		typ = store.TypeTelemetryReported
		_, err = protocol.DecodePayload[protocol.Telemetry](env)
	case protocol.TypeEvent:
		typ = store.TypeRobotEvent
		_, err = protocol.DecodePayload[protocol.Event](env)
	case protocol.TypeResponse:
		typ = store.TypeCommandResponse
		_, err = protocol.DecodePayload[protocol.Response](env)
	}
	if err != nil {
		return store.Event{}, asProtocolError(err)
	}
	ev := store.Event{
		RobotID: s.robotID, Type: typ, Time: s.g.cfg.Now().UTC(), Data: env.Payload,
		Actor: "robot:" + s.robotID, CorrelationID: s.id,
		Stream: s.stream, RobotSeq: env.Sequence, RobotTime: env.Timestamp.UTC(),
	}
	// Refused here, for this robot alone: in the committer's batch it
	// would fail the other robots' events with it.
	if err := store.CheckEvent(&ev); err != nil {
		return store.Event{}, protocol.Errorf(protocol.CodeInvalid, env.Sequence, "%v", err)
	}
	return ev, nil
}

// enqueue queues f for the writer, starting one if none runs. It reports
// false when the queue is full; frames for a session already closing are
// dropped (reported as queued: the robot will resend after reconnecting).
func (s *session) enqueue(f outFrame) bool {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if s.shut {
		return true
	}
	if len(s.outq) >= outQueue {
		return false
	}
	s.outq = append(s.outq, f)
	if !s.writing {
		s.writing = true
		s.writers.Add(1)
		go s.writeQueued()
	}
	return true
}

// writeQueued writes queued frames in order until the queue is empty, a
// close request is reached or a write fails.
func (s *session) writeQueued() {
	defer s.writers.Done()
	defer s.signalRoom() // a sender waiting for room must see shut
	for {
		s.outMu.Lock()
		if len(s.outq) == 0 || s.shut {
			s.outq, s.writing = nil, false
			s.outMu.Unlock()
			return
		}
		f := s.outq[0]
		s.outq[0] = outFrame{}
		s.outq = s.outq[1:]
		s.outMu.Unlock()
		s.signalRoom()
		if f.code != 0 {
			s.closeNow(f.code, f.reason)
			return
		}
		wctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
		err := s.conn.Write(wctx, websocket.MessageText, f.data)
		cancel()
		if err != nil {
			s.closeNow(websocket.StatusPolicyViolation, "write failed")
			return
		}
	}
}

func (s *session) signalRoom() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// send queues a frame, waiting for room (reader side only).
func (s *session) send(ctx context.Context, frame []byte) {
	if frame == nil {
		return
	}
	for !s.enqueue(outFrame{data: frame}) {
		select {
		case <-s.room:
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
	}
}

// ackAsync queues an acknowledgement without blocking the committer; a robot
// too slow to take its acks is disconnected and will resend.
func (s *session) ackAsync(seqs []uint64) {
	frame, err := s.frame(protocol.TypeAck, protocol.Ack{Sequences: seqs})
	if err != nil {
		s.g.log.Error("encode ack", "robot", s.robotID, "err", err)
		return
	}
	if !s.enqueue(outFrame{data: frame}) {
		s.close(websocket.StatusTryAgainLater, "robot not reading acknowledgements")
	}
}

// fail tells the robot why and closes so it reconnects later.
func (s *session) fail(perr *protocol.Error) {
	if frame := s.errorFrame(perr); frame != nil {
		s.enqueue(outFrame{data: frame})
	}
	s.close(websocket.StatusTryAgainLater, string(perr.Code))
}

// close asks the writer to close after the frames queued so far; if the
// writer is stuck, it closes at once.
func (s *session) close(code websocket.StatusCode, reason string) {
	if !s.enqueue(outFrame{code: code, reason: reason}) {
		s.closeNow(code, reason)
	}
}

func (s *session) closeNow(code websocket.StatusCode, reason string) {
	s.closeOnce.Do(func() {
		s.outMu.Lock()
		s.shut, s.outq = true, nil
		s.outMu.Unlock()
		s.probeMu.Lock()
		s.closing = true
		s.probeMu.Unlock()
		closed := make(chan struct{})
		go func() {
			// Close waits for the peer's close frame; never hold a caller on it.
			defer close(closed)
			_ = s.conn.Close(code, reason)
		}()
		go func() {
			select {
			case <-closed:
				// Handshake done (coder/websocket bounds it at 5 s). A
				// CloseNow racing it could cut the close frame off.
			case <-time.After(closeWaitTime):
				// The peer ignores our close and the reader may still be
				// blocked on it. CloseNow would only wait for the
				// handshake: closing the socket ends both at once.
				if s.raw != nil {
					_ = s.raw.Close()
				}
			}
			if s.cancel != nil {
				s.cancel()
			}
			_ = s.conn.CloseNow()
		}()
	})
}

func (s *session) frame(t protocol.Type, payload any) ([]byte, error) {
	return s.encode(t, s.robotID, payload)
}

func (s *session) encode(t protocol.Type, robotID string, payload any) ([]byte, error) {
	env, err := protocol.New(t, robotID, s.serverSeq.Add(1), s.g.cfg.Now(), payload)
	if err != nil {
		return nil, err
	}
	return protocol.Encode(env)
}

func (s *session) errorFrame(perr *protocol.Error) []byte {
	robot := s.robotID
	if robot == "" {
		robot = "unknown"
	}
	b, err := s.encode(protocol.TypeError, robot, perr)
	if err != nil {
		return nil
	}
	return b
}

func (s *session) heard() time.Time { return time.Unix(0, s.heardAt.Load()) }

// presenceSinceFlush returns the presence to write if the robot was heard
// since the last flush.
func (s *session) presenceSinceFlush() (store.Presence, bool) {
	h := s.heardAt.Load()
	if h == 0 || h == s.flushedAt.Load() {
		return store.Presence{}, false
	}
	s.flushedAt.Store(h)
	return store.Presence{RobotID: s.robotID, Node: s.g.cfg.NodeID, LastSeen: time.Unix(0, h).UTC(), UptimeSeconds: math.Float64frombits(s.uptime.Load())}, true
}

// unflush forgets the last flush so the next one writes again.
func (s *session) unflush() { s.flushedAt.Store(0) }

func asProtocolError(err error) *protocol.Error {
	var perr *protocol.Error
	if errors.As(err, &perr) {
		return perr
	}
	return protocol.Errorf(protocol.CodeInternal, 0, "%v", err)
}
