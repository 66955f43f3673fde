// Package logfollow follows the event log on one node: it reads the events
// of some types committed after a cursor, every Poll, and hands each to a
// handler in log order. A node uses it to react to what any node wrote,
// such as a command queued for a robot connected here, or a revocation.
//
// The cursor lives in memory: a Follower starts at the log's end (or where
// its Start says) and does not replay what was committed before it started;
// whoever needs that state loads it in Start. Read errors are retried on
// the next poll from the same cursor, so no event is skipped or handed
// twice. Only one page (Page events) is read per poll: a backlog is worked
// off at Page events per Poll.
package logfollow

import (
	"context"
	"errors"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// Log is the event log a Follower reads; *store.Store is one.
type Log interface {
	LastSeq(ctx context.Context) (int64, error)
	EventsOfTypes(ctx context.Context, after int64, limit int, types ...string) ([]store.Event, error)
}

// DefaultPage is the most events a Follower with no Page reads per poll.
const DefaultPage = 500

// startRetry is how long a Follower waits after a failed Start.
const startRetry = time.Second

// Follower reads Types from Log every Poll.
type Follower struct {
	Log   Log
	Types []string
	// Poll is the time between reads; required.
	Poll time.Duration
	// Page is the most events read per poll; default DefaultPage.
	Page int
	// Start, if set, loads what the caller needs before following and
	// returns the cursor to follow from; default: the log's last sequence.
	// A failed Start is retried every second until it succeeds or ctx ends.
	Start func(context.Context) (int64, error)
	// StartFailed, if set, sees every failed Start.
	StartFailed func(error)
	// ReadFailed, if set, sees every failed read but those cut short by a
	// cancelled context.
	ReadFailed func(error)
}

// Run starts, then hands every event of Types committed after the start
// cursor to handle, in log order, until ctx ends; it returns ctx.Err().
func (f Follower) Run(ctx context.Context, handle func(store.Event)) error {
	after, err := f.start(ctx)
	if err != nil {
		return err
	}
	page := f.Page
	if page <= 0 {
		page = DefaultPage
	}
	t := time.NewTicker(f.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		evs, err := f.Log.EventsOfTypes(ctx, after, page, f.Types...)
		if err != nil {
			if !errors.Is(err, context.Canceled) && f.ReadFailed != nil {
				f.ReadFailed(err)
			}
			continue
		}
		for _, e := range evs {
			after = e.Seq
			handle(e)
		}
	}
}

// start returns the cursor, retrying Start until it succeeds or ctx ends.
func (f Follower) start(ctx context.Context) (int64, error) {
	start := f.Start
	if start == nil {
		start = f.Log.LastSeq
	}
	for {
		after, err := start(ctx)
		if err == nil {
			return after, nil
		}
		if f.StartFailed != nil {
			f.StartFailed(err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(startRetry):
		}
	}
}
