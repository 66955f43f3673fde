package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/protocol"
)

// maxHeartbeatsInFlight bounds the memory kept for heartbeats a control node
// never acknowledges; their latency is then simply not reported.
const maxHeartbeatsInFlight = 64

// flight is a frame sent on this connection and not yet acknowledged.
type flight struct {
	typ    protocol.Type
	sentAt time.Time
}

// session is the state of one established connection, owned by the Run
// goroutine.
type session struct {
	a    *Agent
	conn *websocket.Conn
	// cursor is the highest queued sequence sent on this connection: queued
	// items enter the queue in sequence order, so everything above it is
	// unsent and everything at or below it was sent (or evicted).
	cursor     uint64
	queued     map[uint64]flight // queued items in flight; at most Window
	heartbeats map[uint64]flight // heartbeats and renews in flight
	renewCap   bool              // control's hello reply announced CapRenew
	renewSeq   uint64            // sequence of the renew awaiting an answer, or 0
}

// serve runs an established connection until it is lost (the error says
// how) or ctx ends.
func (a *Agent) serve(ctx context.Context, conn *websocket.Conn, sampleTick *time.Ticker) error {
	s := &session{a: a, conn: conn, queued: map[uint64]flight{}, heartbeats: map[uint64]flight{},
		renewCap: slices.Contains(a.serverCaps, protocol.CapRenew)}
	a.renewAt = time.Time{} // a new connection may renew at once

	// The reader outlives ctx on purpose: on shutdown it must keep reading
	// so the close handshake completes.
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	frames := make(chan protocol.Envelope, 16)
	readErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		readErr <- s.readLoop(rctx, frames)
	}()
	defer func() {
		rcancel()
		conn.CloseNow()
		<-readerDone
	}()

	// Drops first: a report queued now goes out before new telemetry.
	a.reportDrops()
	if !a.tel.queued {
		a.sample(ctx)
		a.maybeQueueTelemetry(true)
	}
	if err := s.pump(ctx); err != nil {
		return err
	}
	if err := s.maybeRenew(ctx); err != nil {
		return err
	}
	hb := time.NewTimer(a.heartbeatDelay())
	defer hb.Stop()
	for {
		a.touch()
		select {
		case <-ctx.Done():
			conn.Close(websocket.StatusGoingAway, "agent stopping")
			return ctx.Err()
		case err := <-readErr:
			return err
		case env := <-frames:
			if err := s.handle(env); err != nil {
				return err
			}
		case <-a.kick:
		case <-hb.C:
			if err := s.heartbeat(ctx); err != nil {
				return err
			}
			hb.Reset(a.heartbeatDelay())
		case <-sampleTick.C:
			a.onSampleTick(ctx, true)
			if err := s.maybeRenew(ctx); err != nil {
				return err
			}
		}
		if err := s.pump(ctx); err != nil {
			return err
		}
	}
}

// readLoop hands decoded frames to the loop until the connection fails.
func (s *session) readLoop(ctx context.Context, frames chan<- protocol.Envelope) error {
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			if st := websocket.CloseStatus(err); st != -1 {
				return fmt.Errorf("control closed the connection (status %d): %w", st, err)
			}
			return fmt.Errorf("read from control: %w", err)
		}
		if typ != websocket.MessageText {
			s.a.log.Warn("ignoring binary frame from control")
			continue
		}
		env, err := protocol.Decode(data)
		if err != nil {
			s.a.log.Warn("ignoring undecodable frame from control", "err", err)
			continue
		}
		select {
		case frames <- env:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// pump sends queued items above the cursor while the window has room.
func (s *session) pump(ctx context.Context) error {
	for room := s.a.o.Window - len(s.queued); room > 0; room = s.a.o.Window - len(s.queued) {
		items, err := s.a.q.PendingAfter(s.cursor, room)
		if err != nil {
			// Try again on the next wake-up rather than drop the connection.
			s.a.log.Error("read queue", "err", err)
			return nil
		}
		if len(items) == 0 {
			return nil
		}
		for _, it := range items {
			if err := s.write(ctx, it.Data); err != nil {
				return fmt.Errorf("send queued %s %d: %w", it.Type, it.Seq, err)
			}
			s.cursor = it.Seq
			s.queued[it.Seq] = flight{typ: it.Type, sentAt: time.Now()}
			s.a.touch() // a long resend is progress, not a hang
		}
	}
	return nil
}

func (s *session) write(ctx context.Context, b []byte) error {
	wctx, cancel := context.WithTimeout(ctx, s.a.o.WriteTimeout)
	defer cancel()
	if err := s.conn.Write(wctx, websocket.MessageText, b); err != nil {
		return err
	}
	s.a.sent.Add(1)
	return nil
}

// heartbeat sends one heartbeat. Heartbeats are not queued: one that cannot
// be sent now is worthless later.
func (s *session) heartbeat(ctx context.Context) error {
	a := s.a
	seq, err := a.q.NextSeq()
	if err != nil {
		a.log.Error("heartbeat sequence", "err", err)
		return nil
	}
	hb := protocol.Heartbeat{UptimeSeconds: a.uptime(), State: a.State().String(), Queue: a.q.Stats()}
	b, err := a.encode(protocol.TypeHeartbeat, seq, hb)
	if err != nil {
		return fmt.Errorf("encode heartbeat: %w", err)
	}
	if err := s.write(ctx, b); err != nil {
		return fmt.Errorf("send heartbeat %d: %w", seq, err)
	}
	if len(s.heartbeats) >= maxHeartbeatsInFlight {
		clear(s.heartbeats)
	}
	s.heartbeats[seq] = flight{typ: protocol.TypeHeartbeat, sentAt: time.Now()}
	return nil
}

// handle processes one frame from control. A returned error ends the
// connection.
func (s *session) handle(env protocol.Envelope) error {
	a := s.a
	switch env.Type {
	case protocol.TypeAck:
		ack, err := protocol.DecodePayload[protocol.Ack](env)
		if err != nil {
			a.log.Warn("ignoring bad ack", "err", err)
			return nil
		}
		s.ack(ack.Sequences)
	case protocol.TypeError:
		perr, err := protocol.DecodePayload[protocol.Error](env)
		if err != nil {
			a.log.Warn("ignoring bad error message", "err", err)
			return nil
		}
		s.serverError(&perr)
	case protocol.TypeCommand:
		cmd, err := protocol.DecodePayload[protocol.Command](env)
		if err != nil {
			a.log.Warn("ignoring bad command", "err", err)
			return nil
		}
		s.command(cmd)
	case protocol.TypeCertificate:
		cert, err := protocol.DecodePayload[protocol.Certificate](env)
		if err != nil {
			a.log.Warn("ignoring bad certificate message", "err", err)
			return nil
		}
		s.installCertificate(cert)
	default:
		a.log.Warn("ignoring unexpected message from control", "type", env.Type, "sequence", env.Sequence)
	}
	return nil
}

// ack forgets acknowledged sequences: queued ones leave the queue (one
// transaction for the whole ack), then OnAck sees each.
func (s *session) ack(seqs []uint64) {
	a := s.a
	now := time.Now()
	type done struct {
		seq uint64
		f   flight
	}
	var acked []done
	var fromQueue []uint64
	for _, seq := range seqs {
		if f, ok := s.queued[seq]; ok {
			delete(s.queued, seq)
			fromQueue = append(fromQueue, seq)
			acked = append(acked, done{seq, f})
		} else if f, ok := s.heartbeats[seq]; ok {
			delete(s.heartbeats, seq)
			acked = append(acked, done{seq, f})
		} else {
			a.log.Debug("ack for a sequence not in flight", "sequence", seq)
		}
	}
	if len(fromQueue) > 0 {
		if _, err := a.q.Ack(fromQueue...); err != nil {
			// They stay queued and are resent after a reconnect; control
			// recognises the duplicates.
			a.log.Error("remove acknowledged messages from the queue", "err", err)
		}
	}
	a.acked.Add(uint64(len(acked)))
	if a.o.OnAck != nil {
		for _, d := range acked {
			a.o.OnAck(d.seq, d.f.typ, now.Sub(d.f.sentAt))
		}
	}
}

// serverError handles an error message. A queued message control refused
// as malformed would be refused again on every resend, blocking nothing
// but wasting every connection: it is removed and counted as rejected.
func (s *session) serverError(perr *protocol.Error) {
	a := s.a
	f, inFlight := s.queued[perr.Sequence]
	permanent := perr.Code == protocol.CodeInvalid || perr.Code == protocol.CodeBadJSON ||
		perr.Code == protocol.CodeUnknownType || perr.Code == protocol.CodeTooLarge
	a.log.Error("control reported an error", "code", perr.Code, "sequence", perr.Sequence, "message", perr.Message, "fatal", perr.Code.Fatal())
	if perr.Sequence != 0 && perr.Sequence == s.renewSeq {
		s.renewFailed(perr)
		return
	}
	if perr.Sequence == 0 || !inFlight || !permanent {
		return
	}
	delete(s.queued, perr.Sequence)
	if _, err := a.q.Ack(perr.Sequence); err != nil {
		a.log.Error("remove rejected message from the queue", "sequence", perr.Sequence, "err", err)
		return
	}
	a.rejected.Add(1)
	a.log.Error("queued message rejected by control and removed", "sequence", perr.Sequence, "type", f.typ)
}

// command answers a command from control. The response is queued like an
// event, so it survives a disconnect.
func (s *session) command(cmd protocol.Command) {
	a := s.a
	if h, ok := a.o.Commands[cmd.Name]; ok {
		a.handle(cmd, h)
		return
	}
	resp := protocol.Response{CommandID: cmd.ID}
	if cmd.Name == "ping" {
		resp.Status = "ok"
	} else {
		names := []string{"ping"}
		for n := range a.o.Commands {
			names = append(names, n)
		}
		slices.Sort(names)
		resp.Status = "error"
		resp.Message = fmt.Sprintf("unknown command %q: this agent (version %s) answers only %q", cmd.Name, a.o.AgentVersion, names)
	}
	a.log.Info("command", "id", cmd.ID, "name", cmd.Name, "status", resp.Status)
	a.queueAnswer(resp)
}
