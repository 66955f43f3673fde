package deploy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/lekiwi/heartbeat/control/store"
)

// Rebuilding the deployment tables from the log.
//
// The tables are a projection of the Deployment* events, like the store's
// robots table, but the store cannot rebuild them (it does not know this
// package): a restore replays the log into a new database that has no
// deployment tables at all, and a projection bug fixed later leaves wrong
// rows behind. deployment_projection records how far the tables follow
// the log:
//
//   - ready = 1: every deployment event in the log is applied. write keeps
//     it so by applying each event in the transaction that appends it, and
//     records the newest one's seq in applied_seq.
//   - ready = 0 (or no row): the tables hold exactly the deployment events
//     up to applied_seq and are being rebuilt. write refuses with
//     ErrRebuilding, so nothing is decided or created from a partial
//     projection (an engine would otherwise see no deployment and a
//     create no busy robot), and Get and List answer ErrRebuilding.
//
// Sync, run by every node at start and by the engine when it starts
// leading, brings the tables back in line with the log.

// ErrRebuilding means the deployment tables are being rebuilt from the
// event log and cannot be read or written yet.
var ErrRebuilding = errors.New("deployment tables are being rebuilt from the event log (after a restore or an upgrade); retry in a minute")

// Status compares the deployment tables with the log.
type Status struct {
	// Ready: the tables are complete and live writes keep them so.
	Ready bool `json:"ready"`
	// AppliedSeq is the newest deployment event the tables hold.
	AppliedSeq int64 `json:"applied_seq"`
	// LogSeq is the newest deployment event in the log.
	LogSeq int64 `json:"log_seq"`
	// CreatedEvents counts DeploymentCreated events in the log,
	// Deployments the rows of the deployments table.
	CreatedEvents int `json:"created_events"`
	Deployments   int `json:"deployments"`
}

// Current reports whether the tables agree with the log.
func (s Status) Current() bool {
	return s.Ready && s.AppliedSeq == s.LogSeq && s.CreatedEvents == s.Deployments
}

func (s Status) String() string {
	return fmt.Sprintf("ready=%t, tables up to seq %d, log up to seq %d, %d deployments for %d DeploymentCreated events",
		s.Ready, s.AppliedSeq, s.LogSeq, s.Deployments, s.CreatedEvents)
}

// Check compares the deployment tables with the log without changing
// anything. Missing tables read as empty and not ready.
func Check(ctx context.Context, st *store.Store) (Status, error) {
	db := st.DB()
	var s Status
	var err error
	if s.Ready, s.AppliedSeq, err = projectionState(ctx, db); err != nil {
		return s, err
	}
	if s.LogSeq, err = lastDeploymentSeq(ctx, db); err != nil {
		return s, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE type = ?`, TypeCreated).Scan(&s.CreatedEvents); err != nil {
		return s, fmt.Errorf("count %s events: %w", TypeCreated, err)
	}
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM deployments`).Scan(&s.Deployments)
	if err != nil && !isNoTable(err) {
		return s, fmt.Errorf("count deployments: %w", err)
	}
	return s, nil
}

// SyncReport says what Sync found and did.
type SyncReport struct {
	Before Status `json:"before"`
	// Reset: the tables were emptied and are replayed from the start.
	Reset bool `json:"reset"`
	// Replayed counts the events applied.
	Replayed int `json:"replayed"`
}

// Sync makes the deployment tables agree with the log: nothing when they
// do (one cheap check), else it resumes an interrupted rebuild or rebuilds
// from scratch. Several nodes may run it at once: each step is guarded by
// applied_seq, so they share the work. Safe at every start.
func Sync(ctx context.Context, st *store.Store) (SyncReport, error) {
	var rep SyncReport
	if err := Migrate(ctx, st.DB()); err != nil {
		return rep, err
	}
	var err error
	if rep.Before, err = Check(ctx, st); err != nil {
		return rep, err
	}
	if rep.Before.Current() {
		return rep, nil
	}
	// Not ready with a prefix applied: an interrupted rebuild, resumed.
	// Anything else (ready but disagreeing, or nothing applied) starts over.
	if rep.Before.Ready || rep.Before.AppliedSeq == 0 {
		if err := reset(ctx, st.DB()); err != nil {
			return rep, err
		}
		rep.Reset = true
	}
	rep.Replayed, err = replay(ctx, st)
	return rep, err
}

// Rebuild empties the deployment tables and folds every deployment event
// of the log into them again, through the same apply as live writes. Live
// writes are refused (ErrRebuilding) until it finishes. It returns how
// many events it applied.
func Rebuild(ctx context.Context, st *store.Store) (int, error) {
	if err := Migrate(ctx, st.DB()); err != nil {
		return 0, err
	}
	if err := reset(ctx, st.DB()); err != nil {
		return 0, err
	}
	return replay(ctx, st)
}

// projectionState reads deployment_projection; a missing table or row is
// not ready with nothing applied.
func projectionState(ctx context.Context, q queryer) (ready bool, applied int64, err error) {
	err = q.QueryRowContext(ctx, `SELECT ready, applied_seq FROM deployment_projection WHERE id = 1`).Scan(&ready, &applied)
	if errors.Is(err, sql.ErrNoRows) || isNoTable(err) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("read the deployment projection's state: %w", err)
	}
	return ready, applied, nil
}

// lastDeploymentSeq is the newest deployment event in the log: one index
// lookup per type (events_by_type), however long the log.
func lastDeploymentSeq(ctx context.Context, q queryer) (int64, error) {
	parts := make([]string, 0, len(EventTypes()))
	for _, t := range EventTypes() {
		parts = append(parts, `coalesce((SELECT max(seq) FROM events WHERE type = '`+t+`'), 0)`)
	}
	var seq int64
	if err := q.QueryRowContext(ctx, `SELECT max(`+strings.Join(parts, ", ")+`)`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("find the newest deployment event: %w", err)
	}
	return seq, nil
}

// checkWritable refuses live writes while the tables are not ready.
func checkWritable(ctx context.Context, tx *sql.Tx) error {
	ready, _, err := projectionState(ctx, tx)
	if err != nil {
		return err
	}
	if !ready {
		return ErrRebuilding
	}
	return nil
}

// checkReadable answers ErrRebuilding while a rebuild is under way. Before
// the tables exist at all (a store no deployment has touched) reads go on
// and find nothing, as they always did.
func checkReadable(ctx context.Context, q queryer) error {
	var ready bool
	err := q.QueryRowContext(ctx, `SELECT ready FROM deployment_projection WHERE id = 1`).Scan(&ready)
	switch {
	case isNoTable(err):
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return ErrRebuilding
	case err != nil:
		return fmt.Errorf("read the deployment projection's state: %w", err)
	case !ready:
		return ErrRebuilding
	}
	return nil
}

// reset empties the tables and marks them not ready. DELETE without WHERE
// truncates (no per-row work), so this is a small transaction at any size.
func reset(ctx context.Context, db *sql.DB) error {
	err := store.WithTx(ctx, db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO deployment_projection (id, applied_seq, ready) VALUES (1, 0, 0)
			ON CONFLICT (id) DO UPDATE SET applied_seq = 0, ready = 0`); err != nil {
			return err
		}
		for _, t := range []string{"deployment_robots", "deployments"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+t); err != nil {
				return fmt.Errorf("empty %s: %w", t, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reset the deployment tables for a rebuild: %w", err)
	}
	return nil
}

// replayPage is how many events replay reads per query.
const replayPage = 1000

// errMoved: another node's rebuild moved applied_seq; re-read and go on.
var errMoved = errors.New("deployment projection moved under the rebuild")

// replay applies the log's deployment events after applied_seq, in order,
// in transactions of at most store.MaxAppendBatch events (a creation,
// which writes a row per target, alone), each checking that applied_seq is
// still where it read it; then marks the tables ready.
func replay(ctx context.Context, st *store.Store) (int, error) {
	db := st.DB()
	applied, moved := 0, 0
	for {
		if moved > 100 {
			return applied, fmt.Errorf("replay deployment events: other rebuilds kept moving the projection (%d times); is a node resetting it in a loop?", moved)
		}
		ready, from, err := projectionState(ctx, db)
		if err != nil {
			return applied, err
		}
		if ready {
			return applied, nil // finished, by us or by another node
		}
		page, err := st.EventsOfTypes(ctx, from, replayPage, EventTypes()...)
		if err != nil {
			return applied, fmt.Errorf("replay deployment events after seq %d: %w", from, err)
		}
		if len(page) == 0 {
			err := store.WithTx(ctx, db, func(tx *sql.Tx) error {
				if err := guard(ctx, tx, from); err != nil {
					return err
				}
				last, err := lastDeploymentSeq(ctx, tx)
				if err != nil {
					return err
				}
				if last != from {
					return errMoved // written meanwhile by a node without this guard
				}
				_, err = tx.ExecContext(ctx, `UPDATE deployment_projection SET ready = 1 WHERE id = 1`)
				return err
			})
			if errors.Is(err, errMoved) {
				moved++
				continue
			}
			if err != nil {
				return applied, fmt.Errorf("mark the rebuilt deployment tables ready: %w", err)
			}
			return applied, nil
		}
		for len(page) > 0 {
			n := 1
			if page[0].Type != TypeCreated {
				for n < len(page) && n < store.MaxAppendBatch && page[n].Type != TypeCreated {
					n++
				}
			}
			chunk := page[:n]
			err := store.WithTx(ctx, db, func(tx *sql.Tx) error {
				if err := guard(ctx, tx, from); err != nil {
					return err
				}
				for _, e := range chunk {
					if err := apply(ctx, tx, e); err != nil {
						return fmt.Errorf("event seq %d (%s) does not apply: %w; the deployment tables stay unavailable: report this with a backup", e.Seq, e.Type, err)
					}
				}
				_, err := tx.ExecContext(ctx, `UPDATE deployment_projection SET applied_seq = ? WHERE id = 1`, chunk[n-1].Seq)
				return err
			})
			if errors.Is(err, errMoved) {
				moved++
				break
			}
			if err != nil {
				return applied, fmt.Errorf("replay deployment events after seq %d: %w", from, err)
			}
			from, applied, page = chunk[n-1].Seq, applied+n, page[n:]
		}
	}
}

// guard checks, inside a replay transaction, that the projection is still
// not ready and at seq.
func guard(ctx context.Context, tx *sql.Tx, seq int64) error {
	ready, applied, err := projectionState(ctx, tx)
	if err != nil {
		return err
	}
	if ready || applied != seq {
		return errMoved
	}
	return nil
}
