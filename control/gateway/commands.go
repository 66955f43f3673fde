package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// commandPoll is how often a node looks for newly queued commands.
const commandPoll = 100 * time.Millisecond

// watchCommands tails the log for queued commands and delivers those whose
// robot is connected here. Commands for robots elsewhere are delivered by
// their node; commands for robots offline wait in the outbox until the
// robot says hello to any node.
func (g *Gateway) watchCommands(ctx context.Context) {
	var after int64
	for {
		last, err := g.store.LastSeq(ctx)
		if err == nil {
			after = last
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	t := time.NewTicker(commandPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		evs, err := g.store.EventsOfTypes(ctx, after, 500, store.TypeCommandQueued)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				g.log.Warn("cannot read queued commands; retrying", "err", err)
			}
			continue
		}
		for _, e := range evs {
			after = e.Seq
			g.mu.Lock()
			s := g.sessions[e.RobotID]
			g.mu.Unlock()
			if s == nil {
				continue
			}
			var c protocol.Command
			if err := jsonUnmarshal(e.Data, &c); err != nil {
				g.log.Error("malformed queued command", "seq", e.Seq, "err", err)
				continue
			}
			s.deliver(c)
		}
	}
}

// sendPending delivers a robot's outstanding commands right after hello.
func (s *session) sendPending(ctx context.Context) {
	cmds, err := s.g.store.PendingCommands(ctx, s.robotID, s.g.cfg.Now())
	if err != nil {
		s.g.log.Warn("cannot read pending commands; they go out on the next connection", "robot", s.robotID, "err", err)
		return
	}
	for _, c := range cmds {
		s.deliver(protocol.Command{ID: c.ID, Name: c.Name, Args: c.Args, Deadline: c.Deadline})
	}
}

// deliver sends a command and records that this node delivered it. A
// command can reach a robot twice (a node died before recording, or the
// tail and the hello raced); robots answer by command id, so a second
// answer only repeats the first.
func (s *session) deliver(c protocol.Command) {
	if !c.Deadline.IsZero() && s.g.cfg.Now().After(c.Deadline) {
		return
	}
	frame, err := s.frame(protocol.TypeCommand, c)
	if err != nil {
		s.g.log.Error("encode command", "id", c.ID, "err", err)
		return
	}
	if !s.enqueue(outFrame{data: frame}) {
		s.g.log.Warn("robot not reading; command stays queued for its next connection", "robot", s.robotID, "command", c.ID)
		return
	}
	data, _ := jsonMarshal(store.DeliveredData{ID: c.ID, Node: s.g.cfg.NodeID})
	ev := store.Event{RobotID: s.robotID, Type: store.TypeCommandDelivered, Time: s.g.cfg.Now().UTC(), Data: data, Actor: "control", CorrelationID: c.ID}
	select {
	case s.g.commits <- commitReq{event: ev, received: time.Now()}:
	default:
	}
}
