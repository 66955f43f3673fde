package telemetry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Resolution is the table a query reads.
type Resolution string

// Resolutions, finest first.
const (
	Raw    Resolution = "raw"
	Minute Resolution = "1m"
	Hour   Resolution = "1h"
)

// Query limits.
const (
	// DefaultPoints is how many points a query without a step aims at.
	DefaultPoints = 360
	// MaxPoints is the most points per series a query may ask for.
	MaxPoints = 10_000
	// MinStep is the finest step, even on raw samples.
	MinStep = time.Second
)

// ErrBadQuery marks a query the caller must fix (an HTTP 400).
var ErrBadQuery = errors.New("bad telemetry query")

// Query asks for one robot's (or the fleet's) series.
type Query struct {
	// RobotID selects the robot; empty aggregates over every robot.
	RobotID string
	// Metrics to return; empty means all.
	Metrics []Metric
	// From and To bound the time range [From, To). Zero To is now; zero
	// From is To minus one hour.
	From, To time.Time
	// Step is the width of each point; zero picks one giving about
	// DefaultPoints points. It is rounded up to the resolution read.
	Step time.Duration
}

// Point aggregates the samples of one step.
type Point struct {
	Time  time.Time `json:"t"` // start of the step
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Avg   float64   `json:"avg"`
	Count int64     `json:"count"` // samples aggregated
}

// Series is one metric's points, oldest first; steps without samples are
// absent.
type Series struct {
	Metric Metric  `json:"metric"`
	Unit   string  `json:"unit"`
	Points []Point `json:"points"`
}

// Result answers a Query.
type Result struct {
	RobotID    string     `json:"robot_id,omitempty"`
	From       time.Time  `json:"from"` // aligned down to the step
	To         time.Time  `json:"to"`   // aligned up to the step
	Step       string     `json:"step"`
	StepNanos  int64      `json:"step_ns"`
	Resolution Resolution `json:"resolution"`
	Series     []Series   `json:"series"`
}

// Plan picks the table and the step for a range starting at from, as
// seen at now: the coarsest resolution that is no coarser than the asked
// step and still holds data as old as from; if the step is finer than
// every resolution covering from, the finest covering one, with the step
// raised to its width. The step is rounded up to a multiple of the width.
func Plan(now, from time.Time, step time.Duration, r Retention) (Resolution, time.Duration) {
	age := now.Sub(from)
	type level struct {
		res   Resolution
		width time.Duration
		keep  time.Duration
	}
	levels := []level{{Raw, 0, r.Raw}, {Minute, time.Minute, r.Minute}, {Hour, time.Hour, r.Hour}}
	chosen := -1
	for i, l := range levels {
		if age > l.keep && i < len(levels)-1 {
			continue // does not reach back to from (the coarsest is the fallback)
		}
		if chosen < 0 || l.width <= step {
			chosen = i
		}
	}
	l := levels[chosen]
	step = max(step, MinStep, l.width)
	if l.width > 0 && step%l.width != 0 {
		step = (step/l.width + 1) * l.width
	}
	return l.res, step
}

// Query reads series at the resolution Plan picks.
func (s *Store) Query(ctx context.Context, q Query) (Result, error) {
	now := s.o.Now()
	if q.To.IsZero() {
		q.To = now
	}
	if q.From.IsZero() {
		q.From = q.To.Add(-time.Hour)
	}
	if !q.From.Before(q.To) {
		return Result{}, fmt.Errorf("%w: from %s is not before to %s", ErrBadQuery, q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))
	}
	if q.Step < 0 {
		return Result{}, fmt.Errorf("%w: step %s is negative", ErrBadQuery, q.Step)
	}
	if len(q.Metrics) == 0 {
		q.Metrics = Metrics()
	}
	for _, m := range q.Metrics {
		if _, err := ParseMetric(string(m)); err != nil {
			return Result{}, fmt.Errorf("%w: %v", ErrBadQuery, err)
		}
	}
	if q.Step == 0 {
		q.Step = q.To.Sub(q.From) / DefaultPoints
	}
	res, step := Plan(now, q.From, q.Step, s.o.Retention)
	from := time.Unix(0, bucketOf(q.From.UnixNano(), step)).UTC()
	to := time.Unix(0, bucketOf(q.To.UnixNano()-1, step)).UTC().Add(step)
	if n := to.Sub(from) / step; n > MaxPoints {
		return Result{}, fmt.Errorf("%w: %d points of %s from %s to %s is more than %d: ask for a larger step", ErrBadQuery, n, step, from.Format(time.RFC3339), to.Format(time.RFC3339), MaxPoints)
	}
	var query string
	switch res {
	case Raw:
		query = `SELECT metric, t / ?1 * ?1 AS b, count(*), sum(value), min(value), max(value) FROM telemetry_raw WHERE t >= ?2 AND t < ?3`
	case Minute:
		query = `SELECT metric, bucket / ?1 * ?1 AS b, sum(count), sum(sum), min(min), max(max) FROM telemetry_1m WHERE bucket >= ?2 AND bucket < ?3`
	default:
		query = `SELECT metric, bucket / ?1 * ?1 AS b, sum(count), sum(sum), min(min), max(max) FROM telemetry_1h WHERE bucket >= ?2 AND bucket < ?3`
	}
	args := []any{int64(step), from.UnixNano(), to.UnixNano()}
	if q.RobotID != "" {
		query += ` AND robot_id = ?4`
		args = append(args, q.RobotID)
	}
	marks := make([]string, len(q.Metrics))
	for i, m := range q.Metrics {
		marks[i] = fmt.Sprintf("?%d", len(args)+1)
		args = append(args, string(m))
	}
	query += ` AND metric IN (` + strings.Join(marks, ",") + `) GROUP BY metric, b ORDER BY metric, b`
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return Result{}, fmt.Errorf("query %s telemetry of robot %q: %w", res, q.RobotID, err)
	}
	defer rows.Close()
	byMetric := map[Metric][]Point{}
	for rows.Next() {
		var (
			m      string
			b      int64
			p      Point
			sum    float64
			minmax [2]sql.NullFloat64
		)
		if err := rows.Scan(&m, &b, &p.Count, &sum, &minmax[0], &minmax[1]); err != nil {
			return Result{}, fmt.Errorf("read %s telemetry of robot %q: %w", res, q.RobotID, err)
		}
		p.Time = time.Unix(0, b).UTC()
		p.Min, p.Max = minmax[0].Float64, minmax[1].Float64
		if p.Count > 0 {
			p.Avg = sum / float64(p.Count)
		}
		byMetric[Metric(m)] = append(byMetric[Metric(m)], p)
	}
	if err := rows.Err(); err != nil {
		return Result{}, fmt.Errorf("read %s telemetry of robot %q: %w", res, q.RobotID, err)
	}
	out := Result{RobotID: q.RobotID, From: from, To: to, Step: step.String(), StepNanos: int64(step), Resolution: res}
	for _, m := range q.Metrics {
		pts := byMetric[m]
		if pts == nil {
			pts = []Point{}
		}
		out.Series = append(out.Series, Series{Metric: m, Unit: m.Unit(), Points: pts})
	}
	return out, nil
}
