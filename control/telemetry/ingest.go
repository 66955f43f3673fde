package telemetry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// errCursorMoved means another node advanced the cursor between our read
// and our write: its batch counted, ours must not.
var errCursorMoved = errors.New("telemetry ingest cursor moved: another node is ingesting")

// IngestReport says what one Ingest call did.
type IngestReport struct {
	Events  int   `json:"events"`  // telemetry events read
	Samples int   `json:"samples"` // samples written
	Skipped int   `json:"skipped"` // events whose data was not telemetry
	Cursor  int64 `json:"cursor"`  // sequence ingested up to
	// CaughtUp is false when the run stopped at MaxEventsPerRun.
	CaughtUp bool          `json:"caught_up"`
	Elapsed  time.Duration `json:"elapsed"`
}

// Ingest reads TelemetryReported events after the cursor and folds them
// into the samples, aggregates and latest values, one small transaction
// per batch. Run it on one node (the leader); a second node running it
// concurrently only loses compare-and-set races and stops with an error
// wrapping errCursorMoved, never counting a batch twice.
func (s *Store) Ingest(ctx context.Context) (IngestReport, error) {
	start := time.Now()
	rep := IngestReport{}
	cursor, err := s.Cursor(ctx)
	if err != nil {
		return rep, err
	}
	rep.Cursor = cursor
	for rep.Events < s.o.MaxEventsPerRun {
		events, err := s.st.EventsOfTypes(ctx, cursor, s.o.IngestBatch, store.TypeTelemetryReported)
		if err != nil {
			return rep, fmt.Errorf("read telemetry events after %d: %w", cursor, err)
		}
		if len(events) == 0 {
			rep.CaughtUp = true
			break
		}
		n, skipped, err := s.ingestBatch(ctx, cursor, events)
		if err != nil {
			return rep, err
		}
		cursor = events[len(events)-1].Seq
		rep.Events += len(events)
		rep.Samples += n
		rep.Skipped += skipped
		rep.Cursor = cursor
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

type seriesKey struct {
	robot  string
	metric Metric
}

type bucketKey struct {
	seriesKey
	bucket int64 // start, unix ns
}

type agg struct {
	count         int64
	sum, min, max float64
}

func (a *agg) add(v float64) {
	if a.count == 0 || v < a.min {
		a.min = v
	}
	if a.count == 0 || v > a.max {
		a.max = v
	}
	a.count++
	a.sum += v
}

type latest struct {
	t     int64
	value float64
}

// bucketOf is the start of the width-long bucket holding t, aligned to the
// Unix epoch.
func bucketOf(t int64, width time.Duration) int64 {
	w := int64(width)
	q := t / w
	if t%w != 0 && t < 0 {
		q--
	}
	return q * w
}

// ingestBatch writes one batch of events after cursor in one transaction.
func (s *Store) ingestBatch(ctx context.Context, cursor int64, events []store.Event) (int, int, error) {
	now := s.o.Now()
	rawCut := now.Add(-s.o.Retention.Raw).UnixNano()
	minCut := now.Add(-s.o.Retention.Minute).UnixNano()
	hourCut := now.Add(-s.o.Retention.Hour).UnixNano()
	var raw []Sample
	minutes, hours := map[bucketKey]*agg{}, map[bucketKey]*agg{}
	last := map[seriesKey]latest{}
	skipped := 0
	for _, e := range events {
		samples, err := SamplesOf(e)
		if err != nil {
			// Stored telemetry the protocol validated cannot fail here;
			// a restored or hand-written log might. Skip, never stall.
			skipped++
			s.log.Warn("telemetry event skipped: its data is not telemetry", "seq", e.Seq, "robot", e.RobotID, "err", err)
			continue
		}
		for _, x := range samples {
			t := x.Time.UnixNano()
			sk := seriesKey{x.RobotID, x.Metric}
			if l, ok := last[sk]; !ok || t >= l.t {
				last[sk] = latest{t, x.Value}
			}
			if t < hourCut {
				continue
			}
			if t >= rawCut {
				raw = append(raw, x)
			}
			if t >= minCut {
				k := bucketKey{sk, bucketOf(t, time.Minute)}
				if minutes[k] == nil {
					minutes[k] = &agg{}
				}
				minutes[k].add(x.Value)
			}
			k := bucketKey{sk, bucketOf(t, time.Hour)}
			if hours[k] == nil {
				hours[k] = &agg{}
			}
			hours[k].add(x.Value)
		}
	}
	next := events[len(events)-1].Seq
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := advanceCursor(ctx, tx, cursor, next); err != nil {
			return err
		}
		if err := insertRaw(ctx, tx, raw); err != nil {
			return err
		}
		if err := upsertAggregates(ctx, tx, "telemetry_1m", minutes); err != nil {
			return err
		}
		if err := upsertAggregates(ctx, tx, "telemetry_1h", hours); err != nil {
			return err
		}
		return upsertLatest(ctx, tx, last)
	})
	if err != nil {
		return 0, skipped, fmt.Errorf("ingest telemetry events %d..%d: %w", events[0].Seq, next, err)
	}
	return len(raw), skipped, nil
}

// advanceCursor moves the cursor from `from` to `to`, or fails with
// errCursorMoved when it is no longer at `from`.
func advanceCursor(ctx context.Context, tx *sql.Tx, from, to int64) error {
	res, err := tx.ExecContext(ctx, `UPDATE telemetry_cursor SET seq = ? WHERE name = 'ingest' AND seq = ?`, to, from)
	if err != nil {
		return fmt.Errorf("advance ingest cursor: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 1 {
		return nil
	}
	if from != 0 {
		return errCursorMoved
	}
	// First run: no cursor row yet. A concurrent first run inserting it
	// too makes this fail on the primary key, which is a moved cursor.
	if _, err := tx.ExecContext(ctx, `INSERT INTO telemetry_cursor (name, seq) VALUES ('ingest', ?)`, to); err != nil {
		return fmt.Errorf("%w (%v)", errCursorMoved, err)
	}
	return nil
}

func insertRaw(ctx context.Context, tx *sql.Tx, raw []Sample) error {
	n, err := execRows(ctx, tx, raw, 4, `INSERT INTO telemetry_raw (robot_id, metric, t, value) VALUES `, ``,
		func(args []any, x Sample) []any {
			return append(args, x.RobotID, string(x.Metric), x.Time.UnixNano(), x.Value)
		})
	if err != nil {
		return fmt.Errorf("insert %d raw samples: %w", n, err)
	}
	return nil
}

// upsertAggregates adds a batch's partial aggregates to table's buckets.
func upsertAggregates(ctx context.Context, tx *sql.Tx, table string, aggs map[bucketKey]*agg) error {
	n, err := execRows(ctx, tx, slices.Collect(maps.Keys(aggs)), 7, `INSERT INTO `+table+` (robot_id, metric, bucket, count, sum, min, max) VALUES `, `
			ON CONFLICT (robot_id, metric, bucket) DO UPDATE SET
				count = count + excluded.count, sum = sum + excluded.sum,
				min = min(min, excluded.min), max = max(max, excluded.max)`,
		func(args []any, k bucketKey) []any {
			a := aggs[k]
			return append(args, k.robot, string(k.metric), k.bucket, a.count, a.sum, a.min, a.max)
		})
	if err != nil {
		return fmt.Errorf("upsert %d buckets of %s: %w", n, table, err)
	}
	return nil
}

func upsertLatest(ctx context.Context, tx *sql.Tx, last map[seriesKey]latest) error {
	n, err := execRows(ctx, tx, slices.Collect(maps.Keys(last)), 4, `INSERT INTO telemetry_latest (robot_id, metric, t, value) VALUES `, `
			ON CONFLICT (robot_id, metric) DO UPDATE SET t = excluded.t, value = excluded.value WHERE excluded.t >= t`,
		func(args []any, k seriesKey) []any {
			return append(args, k.robot, string(k.metric), last[k].t, last[k].value)
		})
	if err != nil {
		return fmt.Errorf("upsert %d latest values: %w", n, err)
	}
	return nil
}

// execRows runs head + "(?,…),(?,…)…" + tail over rows, as many rows per
// statement as dqlite's parameter limit allows (maxParams / width); row
// appends one row's width arguments. On failure it returns the number of
// rows in the statement that failed.
func execRows[T any](ctx context.Context, tx *sql.Tx, rows []T, width int, head, tail string, row func([]any, T) []any) (int, error) {
	for len(rows) > 0 {
		chunk := rows[:min(len(rows), maxParams/width)]
		rows = rows[len(chunk):]
		args := make([]any, 0, width*len(chunk))
		for _, x := range chunk {
			args = row(args, x)
		}
		if _, err := tx.ExecContext(ctx, head+placeholders(len(chunk), width)+tail, args...); err != nil {
			return len(chunk), err
		}
	}
	return 0, nil
}

// PruneReport says what one Prune call deleted.
type PruneReport struct {
	Raw, Minute, Hour int
	// Truncated is set when a table still had rows to delete after
	// maxRows: run again.
	Truncated bool
}

// Prune deletes samples and aggregates older than their retention, at
// most PruneBatch rows per transaction and maxRows in all (0: 1,000,000).
func (s *Store) Prune(ctx context.Context, maxRows int) (PruneReport, error) {
	if maxRows <= 0 {
		maxRows = 1_000_000
	}
	now := s.o.Now()
	var rep PruneReport
	steps := []struct {
		table, column string
		cutoff        int64
		n             *int
	}{
		{"telemetry_raw", "t", now.Add(-s.o.Retention.Raw).UnixNano(), &rep.Raw},
		// A bucket goes once all of it is older than the retention.
		{"telemetry_1m", "bucket", now.Add(-s.o.Retention.Minute - time.Minute).UnixNano(), &rep.Minute},
		{"telemetry_1h", "bucket", now.Add(-s.o.Retention.Hour - time.Hour).UnixNano(), &rep.Hour},
	}
	budget := maxRows
	for _, st := range steps {
		for {
			if budget <= 0 {
				rep.Truncated = true
				return rep, nil
			}
			limit := min(s.o.PruneBatch, budget)
			var n int64
			err := s.write(ctx, func(tx *sql.Tx) error {
				res, err := tx.ExecContext(ctx, `DELETE FROM `+st.table+` WHERE rowid IN
					(SELECT rowid FROM `+st.table+` WHERE `+st.column+` < ? LIMIT ?)`, st.cutoff, limit)
				if err != nil {
					return err
				}
				n, err = res.RowsAffected()
				return err
			})
			if err != nil {
				return rep, fmt.Errorf("prune %s older than %s: %w", st.table, time.Unix(0, st.cutoff).UTC().Format(time.RFC3339), err)
			}
			*st.n += int(n)
			budget -= int(n)
			if int(n) < limit {
				break
			}
		}
	}
	return rep, nil
}

// placeholders is "(?,?,…),(?,?,…)…": rows groups of width parameters.
func placeholders(rows, width int) string {
	one := "(?" + strings.Repeat(",?", width-1) + ")"
	return one + strings.Repeat(","+one, rows-1)
}
