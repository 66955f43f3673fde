package deploy

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// ErrConflict means a step's precondition no longer holds: another node
// (or an operator) changed the deployment first. The transaction carrying
// the step was rolled back; re-read and decide again.
var ErrConflict = errors.New("deployment changed concurrently")

// ErrState is an operator action the deployment's state does not allow
// (resuming a running deployment, pausing a finished one).
var ErrState = errors.New("not allowed in the deployment's current state")

// schema is the deployment projection. Tables are created if missing, so
// every node (and every test store) can use the package without a store
// migration; a later change must add statements, never edit these.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS deployments (
		id         TEXT PRIMARY KEY,
		state      TEXT    NOT NULL,
		doc        TEXT    NOT NULL,
		created_at INTEGER NOT NULL,
		version    INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS deployments_by_state ON deployments (state)`,
	`CREATE TABLE IF NOT EXISTS deployment_robots (
		deployment_id TEXT    NOT NULL,
		robot_id      TEXT    NOT NULL,
		batch         INTEGER NOT NULL,
		state         TEXT    NOT NULL,
		update_state  TEXT    NOT NULL DEFAULT '',
		reason        TEXT    NOT NULL DEFAULT '',
		command_id    TEXT    NOT NULL DEFAULT '',
		sent_at       INTEGER NOT NULL DEFAULT 0,
		sent_seq      INTEGER NOT NULL DEFAULT 0,
		deadline      INTEGER NOT NULL DEFAULT 0,
		sends         INTEGER NOT NULL DEFAULT 0,
		updated_at    INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (deployment_id, robot_id)
	)`,
	// How far the tables follow the log (see rebuild.go). Its one row is
	// made ready only when the log holds no deployment event yet (a new
	// cluster); a database restored from a backup, or one whose tables
	// predate this row, starts not ready and is rebuilt by Sync.
	`CREATE TABLE IF NOT EXISTS deployment_projection (
		id          INTEGER PRIMARY KEY CHECK (id = 1),
		applied_seq INTEGER NOT NULL,
		ready       INTEGER NOT NULL
	)`,
	`INSERT OR IGNORE INTO deployment_projection (id, applied_seq, ready)
		SELECT 1, 0, NOT EXISTS (SELECT 1 FROM events WHERE type IN (` + sqlTypes() + `))`,
}

// sqlTypes is EventTypes as an SQL list of literals (constants of ours,
// no quoting needed).
func sqlTypes() string { return "'" + strings.Join(EventTypes(), "', '") + "'" }

// Migrate creates the deployment tables if they are missing. Safe to run
// on every node at every start.
func Migrate(ctx context.Context, db *sql.DB) error {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('deployments', 'deployment_robots', 'deployment_projection')`).Scan(&n); err == nil && n == 3 {
		return nil
	}
	for _, stmt := range schema {
		// Writers elsewhere get "database is locked" answers from the
		// leader rather than a queue: retry as store transactions do.
		err := store.WithTx(ctx, db, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, stmt)
			return err
		})
		if err != nil {
			return fmt.Errorf("create deployment tables (%.50s…): %w", strings.TrimSpace(stmt), err)
		}
	}
	return nil
}

// Deployment is the projection of one deployment.
type Deployment struct {
	ID        string    `json:"id"`
	Spec      Spec      `json:"spec"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"` // why it last paused, aborted or rolled back
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	Batches   []Batch   `json:"batches"`
	// CurrentBatch is the newest started batch (-1 before the first).
	CurrentBatch int `json:"current_batch"`
	// FailedAck is the failure count an engineer accepted by resuming a
	// deployment a threshold had paused; thresholds count failures beyond
	// it (the batch threshold counts those of batches started after).
	FailedAck     int `json:"failed_ack,omitempty"`
	AckAfterBatch int `json:"ack_after_batch"`
	// Version is the sequence of the newest event applied.
	Version int64           `json:"version"`
	Counts  Counts          `json:"counts"`
	Robots  []RobotProgress `json:"robots,omitempty"`
}

// Batch is one batch's progress.
type Batch struct {
	Index       int       `json:"index"`
	Size        int       `json:"size"`
	State       string    `json:"state"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	Counts      Counts    `json:"counts"`
}

// Counts are robots by state.
type Counts struct {
	Total          int `json:"total"`
	Pending        int `json:"pending"`
	Deferred       int `json:"deferred"`
	Sent           int `json:"sent"`
	Succeeded      int `json:"succeeded"`
	Failed         int `json:"failed"`
	RollbackSent   int `json:"rollback_sent"`
	RolledBack     int `json:"rolled_back"`
	RollbackFailed int `json:"rollback_failed"`
}

func (c *Counts) add(state string) {
	c.Total++
	switch state {
	case RobotPending:
		c.Pending++
	case RobotDeferred:
		c.Deferred++
	case RobotSent:
		c.Sent++
	case RobotSucceeded:
		c.Succeeded++
	case RobotFailed:
		c.Failed++
	case RobotRollbackSent:
		c.RollbackSent++
	case RobotRolledBack:
		c.RolledBack++
	case RobotRollbackFailed:
		c.RollbackFailed++
	}
}

// RobotProgress is one robot's progress within a deployment.
type RobotProgress struct {
	RobotID     string    `json:"robot_id"`
	Batch       int       `json:"batch"`
	State       string    `json:"state"`
	UpdateState string    `json:"update_state,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	CommandID   string    `json:"command_id,omitempty"`
	SentAt      time.Time `json:"sent_at,omitzero"`
	SentSeq     int64     `json:"sent_seq,omitempty"`
	Deadline    time.Time `json:"deadline,omitzero"`
	Sends       int       `json:"sends"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
}

// inFlight reports whether a command to the robot awaits its result.
func (r RobotProgress) inFlight() bool { return r.State == RobotSent || r.State == RobotRollbackSent }

// Active reports whether the engine still has work in the deployment.
func (d *Deployment) Active() bool {
	switch d.State {
	case StateRunning, StatePaused, StateRollingBack:
		return true
	}
	return d.Counts.Sent+d.Counts.RollbackSent > 0 // aborted or done with answers outstanding
}

// apply folds one deployment event into the tables, checking that the
// transition it records is allowed from the current state. It depends only
// on the tables and the event, so replaying the log rebuilds the same
// projection; a refused precondition returns ErrConflict and rolls the
// append back, so the log holds only transitions that happened.
func apply(ctx context.Context, tx *sql.Tx, e store.Event) error {
	if !slices.Contains(EventTypes(), e.Type) {
		return nil // the command queued with a send: the store projects it
	}
	if e.Type == TypeCreated {
		var d CreatedData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return fmt.Errorf("event %d (%s): %w", e.Seq, e.Type, err)
		}
		return applyCreated(ctx, tx, e, d)
	}
	var ref struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(e.Data, &ref); err != nil {
		return fmt.Errorf("event %d (%s): %w", e.Seq, e.Type, err)
	}
	d, err := loadDoc(ctx, tx, ref.ID)
	if err != nil {
		return err
	}
	switch e.Type {
	case TypeBatchStarted, TypeBatchCompleted:
		var b BatchData
		if err := json.Unmarshal(e.Data, &b); err != nil {
			return fmt.Errorf("event %d (%s): %w", e.Seq, e.Type, err)
		}
		if b.Batch < 0 || b.Batch >= len(d.Batches) {
			return fmt.Errorf("%w: deployment %s has no batch %d", ErrConflict, d.ID, b.Batch)
		}
		bt := &d.Batches[b.Batch]
		if e.Type == TypeBatchStarted {
			if d.State != StateRunning || bt.State != BatchPending || b.Batch != d.CurrentBatch+1 ||
				(b.Batch > 0 && d.Batches[b.Batch-1].State != BatchDone) {
				return fmt.Errorf("%w: batch %d of %s cannot start (state %s, current batch %d)", ErrConflict, b.Batch, d.ID, d.State, d.CurrentBatch)
			}
			bt.State, bt.StartedAt, d.CurrentBatch = BatchRunning, e.Time, b.Batch
		} else {
			if bt.State != BatchRunning {
				return fmt.Errorf("%w: batch %d of %s is not running", ErrConflict, b.Batch, d.ID)
			}
			bt.State, bt.CompletedAt = BatchDone, e.Time
		}
	case TypePaused:
		if d.State != StateRunning {
			return fmt.Errorf("%w: deployment %s is %s, only a running one pauses", ErrState, d.ID, d.State)
		}
		d.State, d.Reason = StatePaused, stateReason(e)
	case TypeResumed:
		if d.State != StatePaused {
			return fmt.Errorf("%w: deployment %s is %s, only a paused one resumes", ErrState, d.ID, d.State)
		}
		failed, err := countState(ctx, tx, d.ID, RobotFailed)
		if err != nil {
			return err
		}
		d.State, d.Reason, d.FailedAck, d.AckAfterBatch = StateRunning, "", failed, d.CurrentBatch
	case TypeAborted:
		if d.State != StateRunning && d.State != StatePaused {
			return fmt.Errorf("%w: deployment %s is %s, only a running or paused one aborts", ErrState, d.ID, d.State)
		}
		d.State, d.Reason = StateAborted, stateReason(e)
	case TypeCompleted:
		if d.State != StateRunning {
			return fmt.Errorf("%w: deployment %s is %s", ErrConflict, d.ID, d.State)
		}
		d.State = StateCompleted
	case TypeRollbackStarted:
		if d.State == StateRollingBack || d.State == StateRolledBack {
			return fmt.Errorf("%w: deployment %s is already %s", ErrState, d.ID, d.State)
		}
		d.State, d.Reason = StateRollingBack, stateReason(e)
	case TypeRolledBack:
		if d.State != StateRollingBack {
			return fmt.Errorf("%w: deployment %s is %s", ErrConflict, d.ID, d.State)
		}
		d.State = StateRolledBack
		if r := stateReason(e); r != "" {
			d.Reason = strings.TrimPrefix(d.Reason+"; "+r, "; ")
		}
	case TypeRobotDeferred, TypeRobotUpdateSent, TypeRobotProgress, TypeRobotResult:
		var r RobotData
		if err := json.Unmarshal(e.Data, &r); err != nil {
			return fmt.Errorf("event %d (%s): %w", e.Seq, e.Type, err)
		}
		if err := applyRobot(ctx, tx, e, d, r); err != nil {
			return err
		}
	}
	d.UpdatedAt = e.Time
	return saveDoc(ctx, tx, d, e.Seq)
}

func stateReason(e store.Event) string {
	var s StateData
	_ = json.Unmarshal(e.Data, &s) // the id was read already; a reason is optional
	return s.Reason
}

func applyCreated(ctx context.Context, tx *sql.Tx, e store.Event, c CreatedData) error {
	total := 0
	for _, n := range c.Batches {
		total += n
	}
	if total != len(c.Robots) || len(c.Robots) > MaxTargets {
		return fmt.Errorf("deployment %s: batches of %d robots for %d targets", c.ID, total, len(c.Robots))
	}
	d := &Deployment{ID: c.ID, Spec: c.Spec, State: StateRunning, CreatedAt: e.Time, CreatedBy: e.Actor, UpdatedAt: e.Time, CurrentBatch: -1, AckAfterBatch: -1}
	for i, n := range c.Batches {
		d.Batches = append(d.Batches, Batch{Index: i, Size: n, State: BatchPending})
	}
	doc, err := json.Marshal(d)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO deployments (id, state, doc, created_at, version) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		d.ID, d.State, string(doc), e.Time.UnixNano(), e.Seq)
	if err != nil {
		return fmt.Errorf("insert deployment %s: %w", d.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: deployment %s exists", ErrConflict, d.ID)
	}
	// Multi-row inserts of insertChunk robots: dqlite's wire protocol
	// carries at most 255 parameters per statement (5 per robot).
	robot, batch := 0, 0
	for start := 0; start < len(c.Robots); start += insertChunk {
		chunk := c.Robots[start:min(len(c.Robots), start+insertChunk)]
		args := make([]any, 0, 5*len(chunk))
		for _, id := range chunk {
			for robot >= sumTo(c.Batches, batch+1) {
				batch++
			}
			args = append(args, d.ID, id, batch, RobotPending, e.Time.UnixNano())
			robot++
		}
		q := `INSERT INTO deployment_robots (deployment_id, robot_id, batch, state, updated_at) VALUES (?, ?, ?, ?, ?)` +
			strings.Repeat(", (?, ?, ?, ?, ?)", len(chunk)-1)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("insert robots of deployment %s: %w", d.ID, err)
		}
	}
	return nil
}

// insertChunk is robots per INSERT when a deployment is created: 5
// parameters each, within dqlite's limit of 255 per statement.
const insertChunk = 50

func sumTo(sizes []int, n int) int {
	s := 0
	for _, v := range sizes[:min(n, len(sizes))] {
		s += v
	}
	return s
}

// applyRobot records a per-robot step if the robot is in a state that
// allows it.
func applyRobot(ctx context.Context, tx *sql.Tx, e store.Event, d *Deployment, r RobotData) error {
	var state, updateState string
	var batch int
	var sentSeq int64
	err := tx.QueryRowContext(ctx, `SELECT state, update_state, batch, sent_seq FROM deployment_robots WHERE deployment_id = ? AND robot_id = ?`,
		d.ID, r.RobotID).Scan(&state, &updateState, &batch, &sentSeq)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: robot %s is not a target of deployment %s", ErrConflict, r.RobotID, d.ID)
	}
	if err != nil {
		return fmt.Errorf("read robot %s of deployment %s: %w", r.RobotID, d.ID, err)
	}
	conflict := func(what string) error {
		return fmt.Errorf("%w: %s for robot %s of deployment %s (robot %s, deployment %s)", ErrConflict, what, r.RobotID, d.ID, state, d.State)
	}
	var q string
	var args []any
	switch e.Type {
	case TypeRobotDeferred:
		if d.State != StateRunning || (state != RobotPending && state != RobotDeferred) || batch > d.CurrentBatch {
			return conflict("deferral")
		}
		q, args = `state = ?, reason = ?`, []any{RobotDeferred, r.Reason}
	case TypeRobotUpdateSent:
		if r.CommandID == "" {
			return conflict("send without a command")
		}
		if r.Rollback {
			if d.State != StateRollingBack || (state != RobotSucceeded && state != RobotFailed) {
				return conflict("rollback")
			}
			q, args = `state = ?`, []any{RobotRollbackSent}
		} else {
			if d.State != StateRunning || (state != RobotPending && state != RobotDeferred) || batch > d.CurrentBatch {
				return conflict("update")
			}
			q, args = `state = ?`, []any{RobotSent}
		}
		q += `, reason = '', update_state = '', command_id = ?, sent_at = ?, sent_seq = ?, deadline = ?, sends = sends + 1`
		args = append(args, r.CommandID, e.Time.UnixNano(), e.Seq, r.Deadline.UnixNano())
	case TypeRobotProgress:
		if state != RobotSent && state != RobotRollbackSent {
			return conflict("progress")
		}
		q, args = `update_state = ?`, []any{r.UpdateState}
	case TypeRobotResult:
		ok := false
		switch r.Result {
		case RobotSucceeded, RobotFailed:
			// A late "committed" after a timeout corrects the record.
			ok = state == RobotSent || (state == RobotFailed && r.Result == RobotSucceeded && r.SourceSeq > sentSeq)
		case RobotRolledBack, RobotRollbackFailed:
			ok = state == RobotRollbackSent
		}
		if !ok {
			return conflict("result " + r.Result)
		}
		q, args = `state = ?, update_state = ?, reason = ?`, []any{r.Result, r.UpdateState, r.Reason}
	}
	args = append(args, e.Time.UnixNano(), d.ID, r.RobotID)
	if _, err := tx.ExecContext(ctx, `UPDATE deployment_robots SET `+q+`, updated_at = ? WHERE deployment_id = ? AND robot_id = ?`, args...); err != nil {
		return fmt.Errorf("record %s for robot %s of deployment %s: %w", e.Type, r.RobotID, d.ID, err)
	}
	return nil
}

func countState(ctx context.Context, tx *sql.Tx, id, state string) (int, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM deployment_robots WHERE deployment_id = ? AND state = ?`, id, state).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s robots of deployment %s: %w", state, id, err)
	}
	return n, nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func loadDoc(ctx context.Context, q queryer, id string) (*Deployment, error) {
	var doc string
	var version int64
	err := q.QueryRowContext(ctx, `SELECT doc, version FROM deployments WHERE id = ?`, id).Scan(&doc, &version)
	if errors.Is(err, sql.ErrNoRows) || isNoTable(err) {
		return nil, fmt.Errorf("deployment %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read deployment %s: %w", id, err)
	}
	d := &Deployment{}
	if err := json.Unmarshal([]byte(doc), d); err != nil {
		return nil, fmt.Errorf("deployment %s projection is corrupt: %w", id, err)
	}
	d.Version = version
	return d, nil
}

func saveDoc(ctx context.Context, tx *sql.Tx, d *Deployment, seq int64) error {
	d.Counts, d.Robots = Counts{}, nil
	for i := range d.Batches {
		d.Batches[i].Counts = Counts{}
	}
	doc, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE deployments SET state = ?, doc = ?, version = ? WHERE id = ?`, d.State, string(doc), seq, d.ID); err != nil {
		return fmt.Errorf("write deployment %s: %w", d.ID, err)
	}
	return nil
}

func isNoTable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such table")
}

// load reads a deployment with its robots and counts.
func load(ctx context.Context, q queryer, id string) (*Deployment, error) {
	d, err := loadDoc(ctx, q, id)
	if err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, `SELECT robot_id, batch, state, update_state, reason, command_id, sent_at, sent_seq, deadline, sends, updated_at
		FROM deployment_robots WHERE deployment_id = ? ORDER BY batch, robot_id`, id)
	if err != nil {
		return nil, fmt.Errorf("read robots of deployment %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RobotProgress
		var sentAt, deadline, updated int64
		if err := rows.Scan(&r.RobotID, &r.Batch, &r.State, &r.UpdateState, &r.Reason, &r.CommandID, &sentAt, &r.SentSeq, &deadline, &r.Sends, &updated); err != nil {
			return nil, fmt.Errorf("read robot row of deployment %s: %w", id, err)
		}
		r.SentAt, r.Deadline, r.UpdatedAt = unixTime(sentAt), unixTime(deadline), unixTime(updated)
		d.Robots = append(d.Robots, r)
		d.Counts.add(r.State)
		if r.Batch >= 0 && r.Batch < len(d.Batches) {
			d.Batches[r.Batch].Counts.add(r.State)
		}
	}
	return d, rows.Err()
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Get reads one deployment with per-batch and per-robot progress.
func Get(ctx context.Context, st *store.Store, id string) (*Deployment, error) {
	if err := checkReadable(ctx, st.DB()); err != nil {
		return nil, err
	}
	return load(ctx, st.DB(), id)
}

// List reads deployments, newest first, without per-robot rows. state
// filters ("" for all).
func List(ctx context.Context, st *store.Store, state string, limit int) ([]*Deployment, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list deployments: limit must be positive, got %d", limit)
	}
	if err := checkReadable(ctx, st.DB()); err != nil {
		return nil, err
	}
	q, args := `SELECT id FROM deployments`, []any{}
	if state != "" {
		q += ` WHERE state = ?`
		args = append(args, state)
	}
	q += ` ORDER BY created_at DESC, id LIMIT ?`
	args = append(args, limit)
	rows, err := st.DB().QueryContext(ctx, q, args...)
	if isNoTable(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]*Deployment, 0, len(ids))
	for _, id := range ids {
		d, err := load(ctx, st.DB(), id)
		if err != nil {
			return nil, err
		}
		d.Robots = nil
		out = append(out, d)
	}
	return out, nil
}

// activeIDs lists deployments the engine may have work in.
func activeIDs(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT id FROM deployments WHERE state IN (?, ?, ?)
		UNION SELECT DISTINCT deployment_id FROM deployment_robots WHERE state IN (?, ?)`,
		StateRunning, StatePaused, StateRollingBack, RobotSent, RobotRollbackSent)
	if err != nil {
		return nil, fmt.Errorf("list active deployments: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, rows.Err()
}
