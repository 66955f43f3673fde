package gateway

import (
	"context"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// commitReq is one event waiting for the log. A robot message carries the
// session to acknowledge; control-made events (disconnects) carry none.
type commitReq struct {
	event    store.Event
	session  *session
	received time.Time
	// barrier, when set, marks no event: it is closed once everything
	// queued before it has been committed (or has failed).
	barrier chan struct{}
}

// commitLoop appends waiting events in batches. It never waits to fill a
// batch: while one transaction runs, the next batch accumulates, so latency
// stays at one commit under light load and throughput grows with load.
func (g *Gateway) commitLoop(ctx context.Context) {
	batch := make([]commitReq, 0, g.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case req := <-g.commits:
			batch = append(batch, req)
		}
	fill:
		for len(batch) < g.cfg.MaxBatch {
			select {
			case req := <-g.commits:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		g.commit(ctx, batch)
	}
}

func (g *Gateway) commit(ctx context.Context, all []commitReq) {
	batch := make([]commitReq, 0, len(all))
	for _, r := range all {
		if r.barrier == nil {
			batch = append(batch, r)
		}
	}
	defer func() {
		for _, r := range all {
			if r.barrier != nil {
				close(r.barrier)
			}
		}
	}()
	if len(batch) == 0 {
		return
	}
	events := make([]store.Event, len(batch))
	for i, r := range batch {
		events[i] = r.event
	}
	start := time.Now()
	results, err := g.store.Append(ctx, events)
	g.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	g.metrics.commitBatch.Observe(float64(len(batch)))
	if err != nil {
		// Nothing of the batch is durable. Robots resend unacknowledged
		// messages when they reconnect, so the honest answer is to close
		// their sessions and let them come back when the store can write.
		g.log.Error("event log append failed; closing the affected sessions so robots resend later", "events", len(batch), "err", err)
		for _, r := range batch {
			if r.session != nil {
				r.session.fail(protocol.Errorf(protocol.CodeNotReady, r.event.RobotSeq, "control could not store the message; reconnect and resend"))
			}
		}
		return
	}
	now := time.Now()
	acks := map[*session][]uint64{}
	for i, r := range batch {
		if r.session == nil {
			continue
		}
		if results[i].Duplicate {
			g.metrics.duplicates.Inc()
		} else {
			g.metrics.eventLag.Observe(now.Sub(r.received).Seconds())
		}
		acks[r.session] = append(acks[r.session], r.event.RobotSeq)
	}
	for s, seqs := range acks {
		s.ackAsync(seqs)
	}
}
