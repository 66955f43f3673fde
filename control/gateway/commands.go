package gateway

import (
	"context"
	"encoding/json"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/logfollow"
	"github.com/lekiwi/heartbeat/protocol"
)

// commandPoll is how often a node looks for newly queued commands.
const commandPoll = 100 * time.Millisecond

// watchCommands tails the log for queued commands and delivers those whose
// robot is connected here. Commands for robots elsewhere are delivered by
// their node; commands for robots offline wait in the outbox until the
// robot says hello to any node.
func (g *Gateway) watchCommands(ctx context.Context) {
	f := logfollow.Follower{
		Log: g.store, Types: []string{store.TypeCommandQueued}, Poll: commandPoll,
		ReadFailed: func(err error) { g.log.Warn("cannot read queued commands; retrying", "err", err) },
	}
	_ = f.Run(ctx, func(e store.Event) {
		g.mu.Lock()
		s := g.sessions[e.RobotID]
		g.mu.Unlock()
		if s == nil {
			return
		}
		var c protocol.Command
		if err := json.Unmarshal(e.Data, &c); err != nil {
			g.log.Error("malformed queued command", "seq", e.Seq, "err", err)
			return
		}
		s.deliver(c)
	})
}

// pendingBatch is the most hellos one pending-commands read serves.
const pendingBatch = 512

// sendPending has the robot's outstanding commands delivered once its
// connection record is durable. The read is batched with other hellos
// (pendingLoop): in a reconnect storm a query per robot is thousands of
// round trips to the leader, each holding a database connection. It is
// called on the committer and must not block: beyond the queue, the robot
// is read alone on a goroutine of its own.
func (s *session) sendPending() {
	select {
	case s.g.pending <- s:
	default:
		go func() {
			ctx, cancel := context.WithTimeout(s.ctx, s.g.cfg.CommitTimeout)
			defer cancel()
			s.g.deliverPending(ctx, []*session{s})
		}()
	}
}

// pendingLoop serves sendPending in batches: whatever hellos queued while
// the previous read was in flight go in the next one.
func (g *Gateway) pendingLoop(ctx context.Context) {
	for {
		var batch []*session
		select {
		case <-ctx.Done():
			return
		case s := <-g.pending:
			batch = append(batch, s)
		}
	fill:
		for len(batch) < pendingBatch {
			select {
			case s := <-g.pending:
				batch = append(batch, s)
			default:
				break fill
			}
		}
		qctx, cancel := context.WithTimeout(ctx, g.cfg.CommitTimeout)
		g.deliverPending(qctx, batch)
		cancel()
	}
}

// deliverPending reads the outstanding commands of sessions' robots and
// delivers them to the sessions still attached.
func (g *Gateway) deliverPending(ctx context.Context, sessions []*session) {
	ids := make([]string, len(sessions))
	for i, s := range sessions {
		ids[i] = s.robotID
	}
	g.metrics.pendingReads.Inc()
	byRobot, err := g.store.PendingCommandsOf(ctx, ids, g.cfg.Now())
	if err != nil {
		g.log.Warn("cannot read pending commands; they go out on the robots' next connection", "robots", len(ids), "err", err)
		return
	}
	for _, s := range sessions {
		if !g.attached(s) {
			continue // gone meanwhile: its next connection reads them
		}
		for _, c := range byRobot[s.robotID] {
			s.deliver(protocol.Command{ID: c.ID, Name: c.Name, Args: c.Args, Deadline: c.Deadline})
		}
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
	data, _ := json.Marshal(store.DeliveredData{ID: c.ID, Node: s.g.cfg.NodeID})
	ev := store.Event{RobotID: s.robotID, Type: store.TypeCommandDelivered, Time: s.g.cfg.Now().UTC(), Data: data, Actor: "control", CorrelationID: c.ID}
	select {
	case s.g.commits <- commitReq{event: ev, received: time.Now()}:
	default:
	}
}
