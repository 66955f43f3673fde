package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"testing"
	"time"

	dqlitedriver "github.com/canonical/go-dqlite/driver"
)

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New("database is locked"), true},
		{fmt.Errorf("insert: %w", errors.New("not leader")), true},
		{errors.New("leadership lost while committing"), true},
		{errors.New("no available leader"), true},
		{fmt.Errorf("begin transaction: failed to create dqlite connection: %w", dqlitedriver.ErrNoAvailableLeader), true},
		{errors.New("begin transaction: failed to create dqlite connection: no available dqlite leader server found"), true},
		{errors.New("checkpoint in progress"), true},
		{errors.New("SQLITE_BUSY"), true},
		{fmt.Errorf("query: %w", driver.ErrBadConn), true},
		{errors.New("UNIQUE constraint failed: robots.id"), false},
		{errors.New("no such table: robots"), false},
		{context.Canceled, false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestWithTx(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	if _, err := s.DB().ExecContext(ctx, `CREATE TABLE withtx_test (n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := s.DB().QueryRowContext(ctx, `SELECT count(*) FROM withtx_test`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	insert := func(tx *sql.Tx, n int) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO withtx_test (n) VALUES (?)`, n)
		return err
	}

	// Transient failures are retried; each failed attempt's writes roll back.
	calls := 0
	err := WithTx(ctx, s.DB(), func(tx *sql.Tx) error {
		calls++
		if err := insert(tx, calls); err != nil {
			return err
		}
		if calls < 3 {
			return errors.New("database is locked")
		}
		return nil
	})
	if err != nil || calls != 3 || count() != 1 {
		t.Fatalf("after two transient failures: err %v, %d calls, %d rows; want nil, 3, 1", err, calls, count())
	}

	// Any other error ends it at once, returned (marked rolled back),
	// rolled back.
	errBad := errors.New("precondition no longer holds")
	calls = 0
	err = WithTx(ctx, s.DB(), func(tx *sql.Tx) error {
		calls++
		if err := insert(tx, 10); err != nil {
			return err
		}
		return errBad
	})
	if !errors.Is(err, errBad) || !errors.Is(err, ErrRolledBack) || err.Error() != errBad.Error() || calls != 1 || count() != 1 {
		t.Fatalf("non-transient failure: err %v, %d calls, %d rows; want %v, 1, 1", err, calls, count(), errBad)
	}

	// Retries stop at the caller's deadline (well before MaxTxRetryTime).
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	errLocked := errors.New("database is locked")
	calls = 0
	start := time.Now()
	err = WithTx(dctx, s.DB(), func(*sql.Tx) error { calls++; return errLocked })
	// The last attempt may itself run into the deadline (on a loaded
	// machine, in BeginTx): then the deadline is the error.
	took := time.Since(start)
	if !errors.Is(err, errLocked) && !errors.Is(err, context.DeadlineExceeded) || calls < 2 || took > 2*time.Second {
		t.Fatalf("always locked under a 300 ms deadline: err %v after %d calls in %v; want the lock or deadline error, several calls, under 2 s", err, calls, took)
	}
}

// lockForWrite takes the write lock at once: a second transaction is
// refused at its own lockForWrite, before it reads anything, and the
// first, having written nothing, commits.
func TestLockForWriteTakesTheLockFirst(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	a, err := s.DB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Rollback()
	if err := lockForWrite(ctx, a); err != nil {
		t.Fatal(err)
	}
	b, err := s.DB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Rollback()
	err = lockForWrite(ctx, b)
	if err == nil || !retryable(err) {
		t.Fatalf("second writer's lockForWrite = %v, want a retryable 'database is locked'", err)
	}
	if err := b.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(); err != nil {
		t.Fatalf("commit of a transaction that only took the lock: %v", err)
	}
	// The lock is free again.
	if _, err := s.Append(ctx, []Event{{RobotID: "r1", Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: "s"})}}); err != nil {
		t.Fatal(err)
	}
}

// An error before the commit is marked ErrRolledBack (the caller may run
// the same writes again); a transient one is Transient too.
func TestRolledBackErrorsAreMarked(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	bad := errors.New("invalid input")
	err := WithTx(ctx, s.DB(), func(*sql.Tx) error { return bad })
	if !errors.Is(err, ErrRolledBack) || !errors.Is(err, bad) || err.Error() != bad.Error() || Transient(err) {
		t.Fatalf("fn error: %v (rolled back %v, transient %v); want the error itself, marked rolled back, not transient",
			err, errors.Is(err, ErrRolledBack), Transient(err))
	}
	if err := WithTx(ctx, s.DB(), func(*sql.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	// Another writer holds the lock past the deadline: rolled back and
	// transient, worth trying again later.
	holder, err := s.DB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	if err := lockForWrite(ctx, holder); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = s.Append(dctx, []Event{{RobotID: "r1", Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: "s"})}})
	if !errors.Is(err, ErrRolledBack) || !Transient(err) {
		t.Fatalf("append behind a held write lock: %v; want rolled back and transient", err)
	}
}
