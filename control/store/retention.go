package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Telemetry retention.
//
// TelemetryReported events arrive on every meaningful change of a robot's
// resources (at most one per 10 s, at least one per 5 min) and are only
// worth keeping at a resolution that falls with age. Every other event
// type — lifecycle, robot events, command responses, security and audit —
// is kept for ever; retention never deletes one.
//
// Compaction keeps, per robot, the first telemetry event (by seq) of each
// bucket of its age tier; buckets are aligned to the Unix epoch and each
// tier's interval is a multiple of the one before, so a bucket of a coarser
// tier is a union of finer ones and running the policy again (or after a
// pause) keeps the same events. Three events per robot are never deleted,
// so that replaying the log still yields the live robots projection
// (Verify stays clean): the robot's latest telemetry (its network,
// resources, uptime and — when the newest event — the projection's
// version), its telemetry with the newest time (last_seen is a maximum),
// and its latest telemetry that names an OS version (the deployment's OS
// version comes from the last one).

// RetentionTier is one age band of telemetry.
type RetentionTier struct {
	// Age bounds the band: telemetry younger than Age and at least as old
	// as the previous tier's Age belongs to it.
	Age time.Duration
	// Every keeps one event per robot per interval of this length; zero
	// keeps every event.
	Every time.Duration
}

// RetentionPolicy says which telemetry to keep.
type RetentionPolicy struct {
	// Tiers, by increasing Age. Telemetry older than the last tier is
	// deleted (except each robot's protected events, see above).
	Tiers []RetentionTier
	// TelemetryBudget is the most event data (bytes of JSON, all event
	// types) a robot may hold within BudgetWindow once compacted. A robot
	// over it has its telemetry thinned further — every other event kept —
	// at each run until it fits. Zero means DefaultTelemetryBudget; a
	// negative value disables the budget.
	TelemetryBudget int64
	// BudgetWindow is the period the budget covers (default 30 days).
	BudgetWindow time.Duration
	// MaxDeletes bounds one run (default 200,000); the report says when it
	// stopped early, and the next run continues.
	MaxDeletes int
	// Submit, if set, runs each delete transaction — for a node that
	// routes every write through one committer goroutine. Nil runs them
	// directly.
	Submit func(ctx context.Context, write func(context.Context) error) error
}

// DefaultTelemetryBudget is 10 MiB of event data per robot per 30 days.
const DefaultTelemetryBudget int64 = 10 << 20

// MaxDeleteBatch is the most events one retention transaction deletes:
// the same cap as appends (see MaxAppendBatch). Deleting scattered rows
// rewrites about as many pages as inserting them, and the libdqlite 1.11
// failure behind the cap was never explained, so deletes get no larger
// transactions than writes do.
const MaxDeleteBatch = MaxAppendBatch

// DefaultRetentionPolicy keeps every telemetry event of the last hour, one
// per 10 minutes for the last day, one per hour for the last 30 days and
// none older, with a budget of 10 MiB per robot per 30 days.
func DefaultRetentionPolicy() RetentionPolicy {
	return RetentionPolicy{
		Tiers: []RetentionTier{
			{Age: time.Hour},
			{Age: 24 * time.Hour, Every: 10 * time.Minute},
			{Age: 30 * 24 * time.Hour, Every: time.Hour},
		},
		TelemetryBudget: DefaultTelemetryBudget,
		BudgetWindow:    30 * 24 * time.Hour,
	}
}

// Validate checks the policy.
func (p RetentionPolicy) Validate() error {
	if len(p.Tiers) == 0 {
		return errors.New("retention policy: at least one tier is needed (an empty policy would delete all telemetry)")
	}
	var prev RetentionTier
	for i, t := range p.Tiers {
		switch {
		case t.Age <= prev.Age:
			return fmt.Errorf("retention policy: tier %d: age %s must be above the previous tier's %s", i+1, t.Age, prev.Age)
		case t.Every < 0:
			return fmt.Errorf("retention policy: tier %d: interval %s is negative", i+1, t.Every)
		case t.Every < prev.Every:
			return fmt.Errorf("retention policy: tier %d: interval %s is finer than the previous tier's %s", i+1, t.Every, prev.Every)
		case prev.Every > 0 && t.Every%prev.Every != 0:
			return fmt.Errorf("retention policy: tier %d: interval %s is not a multiple of the previous tier's %s (buckets must nest)", i+1, t.Every, prev.Every)
		}
		prev = t
	}
	if p.BudgetWindow < 0 || p.MaxDeletes < 0 {
		return errors.New("retention policy: budget window and max deletes cannot be negative")
	}
	return nil
}

func (p RetentionPolicy) withDefaults() RetentionPolicy {
	if p.TelemetryBudget == 0 {
		p.TelemetryBudget = DefaultTelemetryBudget
	}
	if p.BudgetWindow == 0 {
		p.BudgetWindow = 30 * 24 * time.Hour
	}
	if p.MaxDeletes == 0 {
		p.MaxDeletes = 200_000
	}
	return p
}

// RobotStorage is how much of the log one robot id holds.
type RobotStorage struct {
	RobotID        string `json:"robot_id"`
	Events         int64  `json:"events"`
	Telemetry      int64  `json:"telemetry"`
	DataBytes      int64  `json:"data_bytes"`      // JSON data of all its events
	TelemetryBytes int64  `json:"telemetry_bytes"` // of which telemetry
}

// StorageUse sums, per robot id, the events recorded since the given time
// and the bytes of their JSON data (zero time: the whole log). Events of
// no robot (token management) are not counted. One pass over the log.
func (s *Store) StorageUse(ctx context.Context, since time.Time) ([]RobotStorage, error) {
	var from int64 = -1 << 63
	if !since.IsZero() {
		from = since.UnixNano()
	}
	rows, err := s.db.QueryContext(ctx, `SELECT robot_id, count(*), sum(type = ?),
			sum(length(CAST(data AS BLOB))), sum(CASE WHEN type = ? THEN length(CAST(data AS BLOB)) ELSE 0 END)
		FROM events WHERE robot_id != '' AND time >= ? GROUP BY robot_id ORDER BY robot_id`,
		TypeTelemetryReported, TypeTelemetryReported, from)
	if err != nil {
		return nil, fmt.Errorf("measure storage per robot: %w", err)
	}
	defer rows.Close()
	var out []RobotStorage
	for rows.Next() {
		var u RobotStorage
		if err := rows.Scan(&u.RobotID, &u.Events, &u.Telemetry, &u.DataBytes, &u.TelemetryBytes); err != nil {
			return nil, fmt.Errorf("measure storage per robot: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// RetentionReport says what one run did.
type RetentionReport struct {
	Robots    int `json:"robots"`    // robots examined
	Telemetry int `json:"telemetry"` // telemetry events examined
	Deleted   int `json:"deleted"`   // telemetry events deleted in all
	// BudgetDeleted of them were thinned because their robot was over its
	// budget; OverBudget lists those robots' use before thinning.
	BudgetDeleted int            `json:"budget_deleted"`
	OverBudget    []RobotStorage `json:"over_budget,omitempty"`
	// Truncated is set when the run stopped at MaxDeletes: run again.
	Truncated bool          `json:"truncated"`
	Elapsed   time.Duration `json:"elapsed"`
}

// CompactTelemetry applies the policy's tiers (not its budget) and returns
// how many telemetry events it deleted.
func (s *Store) CompactTelemetry(ctx context.Context, now time.Time, p RetentionPolicy) (int, error) {
	p.TelemetryBudget = -1
	rep, err := s.Retain(ctx, now, p)
	return rep.Deleted, err
}

// Retain runs telemetry retention: the tiers, then the per-robot budget.
// It reads without a transaction and deletes in transactions of at most
// MaxDeleteBatch events, so it can run alongside live traffic; appends
// that land meanwhile only make the deleted events more superseded. Run it
// periodically (hourly is plenty) on one node of the cluster — the dqlite
// leader is a natural choice: two nodes running it at once delete nothing
// wrong, but may thin an over-budget robot twice.
func (s *Store) Retain(ctx context.Context, now time.Time, p RetentionPolicy) (RetentionReport, error) {
	start := time.Now()
	var rep RetentionReport
	if err := p.Validate(); err != nil {
		return rep, err
	}
	p = p.withDefaults()
	usage := map[string]RobotStorage{}
	if p.TelemetryBudget > 0 {
		list, err := s.StorageUse(ctx, now.Add(-p.BudgetWindow))
		if err != nil {
			return rep, err
		}
		for _, u := range list {
			usage[u.RobotID] = u
		}
	}
	ids, err := s.robotIDs(ctx)
	if err != nil {
		return rep, err
	}
	for _, id := range ids {
		if rep.Deleted >= p.MaxDeletes {
			rep.Truncated = true
			break
		}
		rows, err := s.telemetryOf(ctx, id)
		if err != nil {
			return rep, err
		}
		rep.Robots++
		rep.Telemetry += len(rows)
		plan := planRetention(rows, now, p.Tiers)
		var thinned int
		if u, ok := usage[id]; ok && p.TelemetryBudget > 0 {
			windowStart := now.Add(-p.BudgetWindow).UnixNano()
			after := u.DataBytes
			for i, r := range rows {
				if plan[i] == drop && r.time >= windowStart {
					after -= r.bytes
				}
			}
			if after > p.TelemetryBudget {
				thinned = thinEveryOther(rows, plan)
				rep.OverBudget = append(rep.OverBudget, u)
				s.log.Warn("robot over its telemetry budget: thinning its telemetry to every other event",
					"robot", id, "data_bytes", after, "budget", p.TelemetryBudget, "window", p.BudgetWindow,
					"telemetry_bytes", u.TelemetryBytes, "other_bytes", u.DataBytes-u.TelemetryBytes, "thinned", thinned)
			}
		}
		var seqs []int64
		for i, r := range rows {
			if plan[i] == drop {
				seqs = append(seqs, r.seq)
			}
		}
		if room := p.MaxDeletes - rep.Deleted; len(seqs) > room {
			seqs, rep.Truncated = seqs[:room], true
		}
		n, err := s.deleteTelemetry(ctx, seqs, p.Submit)
		rep.Deleted += n
		rep.BudgetDeleted += min(thinned, n)
		if err != nil {
			return rep, err
		}
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// robotIDs lists every robot of the projection (every robot with
// telemetry has one).
func (s *Store) robotIDs(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM robots ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list robots for retention: %w", err)
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
	return ids, rows.Err()
}

// telemetryRow is what retention needs of a telemetry event; its data
// stays in the database.
type telemetryRow struct {
	seq, time, bytes int64
	hasOS            bool // names an OS version (sets the projection's)
}

func (s *Store) telemetryOf(ctx context.Context, robotID string) ([]telemetryRow, error) {
	// JSON the database cannot parse counts as naming an OS version,
	// which protects it rather than guessing.
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, length(CAST(data AS BLOB)),
			CASE WHEN json_valid(data) THEN coalesce(json_extract(data, '$.os_version'), '') != '' ELSE 1 END
		FROM events WHERE robot_id = ? AND type = ? ORDER BY seq`, robotID, TypeTelemetryReported)
	if err != nil {
		return nil, fmt.Errorf("read telemetry of robot %q: %w", robotID, err)
	}
	defer rows.Close()
	var out []telemetryRow
	for rows.Next() {
		var r telemetryRow
		if err := rows.Scan(&r.seq, &r.time, &r.bytes, &r.hasOS); err != nil {
			return nil, fmt.Errorf("read telemetry of robot %q: %w", robotID, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Plan marks.
const (
	keep = iota
	drop
	protected
)

// planRetention marks each of one robot's telemetry rows (in seq order)
// keep, drop or protected.
func planRetention(rows []telemetryRow, now time.Time, tiers []RetentionTier) []int {
	plan := make([]int, len(rows))
	if len(rows) == 0 {
		return plan
	}
	latest, newest, lastOS := len(rows)-1, 0, -1
	for i, r := range rows {
		if r.time >= rows[newest].time {
			newest = i
		}
		if r.hasOS {
			lastOS = i
		}
	}
	type bucket struct {
		tier int
		n    int64
	}
	seen := map[bucket]bool{}
	for i, r := range rows {
		age := time.Duration(now.UnixNano() - r.time)
		if now.UnixNano() < r.time {
			age = 0 // from the future (clock skew): youngest tier
		}
		tier := -1
		for t := range tiers {
			if age < tiers[t].Age {
				tier = t
				break
			}
		}
		switch {
		case tier < 0:
			plan[i] = drop
		case tiers[tier].Every > 0:
			b := bucket{tier, floorDiv(r.time, int64(tiers[tier].Every))}
			if seen[b] {
				plan[i] = drop
			}
			seen[b] = true
		}
	}
	for _, i := range []int{latest, newest, lastOS} {
		if i >= 0 {
			plan[i] = protected
		}
	}
	return plan
}

// thinEveryOther drops every other event still kept (not protected) and
// returns how many it dropped.
func thinEveryOther(rows []telemetryRow, plan []int) int {
	n, k := 0, 0
	for i := range rows {
		if plan[i] != keep {
			continue
		}
		if k%2 == 1 {
			plan[i] = drop
			n++
		}
		k++
	}
	return n
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// deleteTelemetry deletes telemetry events by seq in transactions of at
// most MaxDeleteBatch. The type is part of the statement: whatever the
// seqs, no other kind of event can go.
func (s *Store) deleteTelemetry(ctx context.Context, seqs []int64, submit func(context.Context, func(context.Context) error) error) (int, error) {
	total := 0
	for len(seqs) > 0 {
		chunk := seqs[:min(len(seqs), MaxDeleteBatch)]
		seqs = seqs[len(chunk):]
		var n int64
		write := func(ctx context.Context) error {
			return WithTx(ctx, s.db, func(tx *sql.Tx) error {
				args := make([]any, 0, len(chunk)+1)
				args = append(args, TypeTelemetryReported)
				for _, seq := range chunk {
					args = append(args, seq)
				}
				res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE type = ? AND seq IN (?`+strings.Repeat(",?", len(chunk)-1)+`)`, args...)
				if err != nil {
					return err
				}
				n, err = res.RowsAffected()
				return err
			})
		}
		var err error
		if submit != nil {
			err = submit(ctx, write)
		} else {
			err = write(ctx)
		}
		if err != nil {
			return total, fmt.Errorf("delete %d telemetry events: %w", len(chunk), err)
		}
		total += int(n)
	}
	return total, nil
}

// DatabaseSize is the database's size in bytes (pages × page size) — what
// dqlite 1.11 keeps in memory on every node — and how much of it is free
// pages, which SQLite reuses for new rows rather than giving back.
func (s *Store) DatabaseSize(ctx context.Context) (total, free int64, err error) {
	var pages, freePages, pageSize int64
	if err := s.db.QueryRowContext(ctx, `SELECT page_count, freelist_count, page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()`).
		Scan(&pages, &freePages, &pageSize); err != nil {
		return 0, 0, fmt.Errorf("read database size: %w", err)
	}
	return pages * pageSize, freePages * pageSize, nil
}
