package telemetry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// maxTxRetry bounds retries of one transaction when the caller's context
// has no earlier deadline.
const maxTxRetry = 10 * time.Second

// withTx runs fn in a transaction, retrying the failures a new attempt can
// fix (dqlite answers a second writer "database is locked" at once, and
// leadership can move), as control/store does for its own writes.
func withTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	deadline := time.Now().Add(maxTxRetry)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var err error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			wait := min(2*time.Millisecond<<min(attempt, 6), 100*time.Millisecond)
			wait = wait/2 + rand.N(wait)
			if time.Now().Add(wait).After(deadline) {
				return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
			}
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(wait):
			}
		}
		err = runTx(ctx, db, fn)
		if err == nil || !retryable(err) {
			return err
		}
	}
}

func runTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func retryable(err error) bool {
	msg := err.Error()
	for _, s := range []string{"database is locked", "not leader", "leadership lost", "no available leader", "checkpoint in progress", "bad connection", "SQLITE_BUSY"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// placeholders is "(?,?,…),(?,?,…)…": rows groups of width parameters.
func placeholders(rows, width int) string {
	one := "(?" + strings.Repeat(",?", width-1) + ")"
	return one + strings.Repeat(","+one, rows-1)
}
