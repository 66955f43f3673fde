package gateway

import (
	"context"
	"errors"
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
	// result, when set, receives the append's outcome (nil when durable).
	result chan error
	// recorded, when set, is called on the committer with the append's
	// outcome (nil when durable); it must not block.
	recorded func(error)
	// job, when set, marks no event: it runs on the committer after the
	// events queued before it, so every write of this node goes through
	// one goroutine and never contends with another for the database.
	job func(context.Context)
}

// commitLoop appends waiting events in batches. It never waits to fill a
// batch: while one transaction runs, the next batch accumulates, so latency
// stays at one commit under light load and throughput grows with load.
func (g *Gateway) commitLoop(ctx context.Context) {
	g.loopCtx = ctx
	batch := make([]commitReq, 0, g.cfg.MaxBatch)
	for {
		batch = g.takeAgain(batch[:0])
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case req := <-g.commits:
				batch = append(batch, req)
			}
		}
		g.commit(ctx, g.takeWaiting(batch))
	}
}

// retryFor is how long a batch whose transaction was rolled back (the
// write lock stayed busy, the leader changed) is tried again, from its
// first failure, before its sessions are failed. Failing them closes their
// connections, and in a reconnect storm every closed robot comes back with
// a new handshake, a hello and a disconnect event: the failures fed the
// storm that caused them. Meanwhile robots only wait for acks (hello does
// not wait for the connection record); they keep unacknowledged messages
// and resend them if they must reconnect. Three commit timeouts: 15 s by
// default.
func (g *Gateway) retryFor() time.Duration { return 3 * g.cfg.CommitTimeout }

// takeAgain appends to batch the requests to try again, which go before
// anything newer so a robot's events keep their order in the log.
func (g *Gateway) takeAgain(batch []commitReq) []commitReq {
	batch = append(batch, g.again...)
	g.again = g.again[:0]
	return batch
}

// takeWaiting appends to batch what is queued for the committer, up to
// MaxBatch, without waiting for more.
func (g *Gateway) takeWaiting(batch []commitReq) []commitReq {
	for len(batch) < g.cfg.MaxBatch {
		select {
		case req := <-g.commits:
			batch = append(batch, req)
		default:
			return batch
		}
	}
	return batch
}

func (g *Gateway) commit(ctx context.Context, all []commitReq) {
	batch := make([]commitReq, 0, len(all))
	for _, r := range all {
		if r.job == nil {
			batch = append(batch, r)
		}
	}
	defer func() {
		for _, r := range all {
			if r.job != nil {
				// Jobs (presence flushes of every session) may span
				// several transactions.
				jctx, cancel := context.WithTimeout(ctx, 4*g.cfg.CommitTimeout)
				r.job(jctx)
				cancel()
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
	cctx, cancel := context.WithTimeout(ctx, g.cfg.CommitTimeout)
	results, err := g.store.Append(cctx, events)
	cancel()
	g.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	g.metrics.commitBatch.Observe(float64(len(batch)))
	if err != nil && store.Transient(err) && errors.Is(err, store.ErrRolledBack) && ctx.Err() == nil {
		// Counted from the first failure, not from when the events
		// arrived: in a storm they may have queued for longer than
		// retryFor before their first attempt.
		if g.againSince.IsZero() {
			g.againSince = start
		}
		if time.Since(g.againSince) < g.retryFor() {
			// Nothing was written: the same batch goes first next time.
			g.metrics.commitRetries.Inc()
			g.log.Warn("event log append rolled back; trying the batch again", "events", len(batch), "err", err)
			g.again = append(g.again, batch...)
			return
		}
	}
	g.againSince = time.Time{}
	if err != nil {
		// Nothing of the batch is durable. Robots resend unacknowledged
		// messages when they reconnect, so the honest answer is to close
		// their sessions and let them come back when the store can write.
		g.log.Error("event log append failed; closing the affected sessions so robots resend later", "events", len(batch), "err", err)
		for _, r := range batch {
			if r.result != nil {
				r.result <- err
			} else if r.recorded != nil {
				r.recorded(err)
			} else if r.session != nil {
				r.session.fail(protocol.Errorf(protocol.CodeNotReady, r.event.RobotSeq, "control could not store the message; reconnect and resend"))
			}
		}
		return
	}
	now := time.Now()
	acks := map[*session][]uint64{}
	for i, r := range batch {
		if r.result != nil {
			r.result <- nil
			continue
		}
		if r.recorded != nil {
			r.recorded(nil)
			continue
		}
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

// do runs fn on the committer and waits for it (or for ctx).
func (g *Gateway) do(ctx context.Context, fn func(context.Context)) {
	done := make(chan struct{})
	req := commitReq{job: func(ctx context.Context) { defer close(done); fn(ctx) }}
	select {
	case g.commits <- req:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// appendAndWait appends one event through the committer and waits until it
// is durable.
func (g *Gateway) appendAndWait(ctx context.Context, ev store.Event) error {
	result := make(chan error, 1)
	select {
	case g.commits <- commitReq{event: ev, result: result, received: time.Now()}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Submit runs write on the committer, after the events queued before it,
// and returns its error: the way for other writers of this node (retention)
// to share the single writer instead of contending with it.
func (g *Gateway) Submit(ctx context.Context, write func(context.Context) error) error {
	err := context.Canceled
	g.do(ctx, func(ctx context.Context) { err = write(ctx) })
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
