package store

import (
	"context"
	"database/sql"
	"fmt"
)

// ProjectFunc applies appended events to tables another package owns (the
// deployment engine's), inside the append's transaction. appended holds the
// events that were written (duplicates left out), with their sequences. An
// error rolls the whole transaction back — events included — which is how
// a projection refuses an event whose precondition no longer holds (two
// nodes deciding the same step: only one commits). WithTx may retry the
// transaction, so fn must keep no effects outside tx.
type ProjectFunc func(ctx context.Context, tx *sql.Tx, appended []Event) error

// AppendWith is Append plus project in the same transaction: the events,
// the store's own projections (robots, commands, security) and the
// caller's projection commit together or not at all. A command queued
// this way (TypeCommandQueued) is in the outbox exactly when the caller's
// record of it is.
func (s *Store) AppendWith(ctx context.Context, events []Event, project ProjectFunc) ([]AppendResult, error) {
	if len(events) == 0 {
		return nil, nil
	}
	if len(events) > MaxAppendBatch {
		return nil, fmt.Errorf("append %d events: more than %d in one transaction is unsafe with libdqlite 1.11; split the batch", len(events), MaxAppendBatch)
	}
	for i := range events {
		if err := CheckEvent(&events[i]); err != nil {
			return nil, err
		}
	}
	var results []AppendResult
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		var err error
		if results, err = appendBatch(ctx, tx, events); err != nil {
			return err
		}
		if project == nil {
			return nil
		}
		appended := make([]Event, 0, len(events))
		for i, r := range results {
			if !r.Duplicate {
				e := events[i]
				e.Seq = r.Seq
				appended = append(appended, e)
			}
		}
		return project(ctx, tx, appended)
	})
	if err != nil {
		return nil, fmt.Errorf("append %d events: %w", len(events), err)
	}
	return results, nil
}
