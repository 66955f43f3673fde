package telemetry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// Alert is the data of AlertFired and AlertResolved events, and what the
// webhook receives.
type Alert struct {
	Type    string `json:"type"` // store.TypeAlertFired or store.TypeAlertResolved
	Rule    string `json:"rule"`
	RobotID string `json:"robot_id"`
	Metric  Metric `json:"metric,omitempty"` // empty for offline alerts
	// Value is the metric's value that decided (for offline alerts, the
	// seconds since the robot was last seen).
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold,omitempty"`
	Clear     float64 `json:"clear,omitempty"`
	For       string  `json:"for,omitempty"`
	// Since is when the condition began: the first sample of the run
	// above the threshold, or the robot's last contact.
	Since time.Time `json:"since,omitzero"`
	// FiredAt is when the alert fired (on resolution: how long it lasted
	// is At - FiredAt).
	FiredAt time.Time `json:"fired_at"`
	At      time.Time `json:"at"`
	// Seq is the event's sequence in the log.
	Seq int64 `json:"seq,omitempty"`
}

// Actor is the actor of alert events.
const Actor = "control/telemetry"

// DefaultStale is how old a robot's latest sample may be and still start
// an alert: agents report at least every 5 minutes, so an older value
// belongs to a robot that stopped talking (the offline rule's business).
const DefaultStale = 10 * time.Minute

var errAlertRaced = errors.New("alert state changed meanwhile")

// EvaluateAlerts applies the rules at the current time and commits each
// change of an alert — its event and its row — in its own transaction.
// It returns the alerts that fired or resolved, in the order committed.
// Run it on one node (the leader); a concurrent run elsewhere cannot make
// an alert fire or resolve twice: the row is the precondition.
func (s *Store) EvaluateAlerts(ctx context.Context, rules []Rule) ([]Alert, error) {
	now := s.o.Now().UTC()
	var out []Alert
	var errs []error
	for _, r := range rules {
		var changes []Alert
		var err error
		if r.offline() {
			changes, err = s.offlineChanges(ctx, r, now)
		} else {
			changes, err = s.thresholdChanges(ctx, r, now)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("alert rule %q: %w", r.Name, err))
			continue
		}
		for _, a := range changes {
			committed, err := s.commitAlert(ctx, a)
			switch {
			case errors.Is(err, errAlertRaced):
				continue
			case err != nil:
				errs = append(errs, err)
				continue
			}
			out = append(out, committed)
		}
	}
	return out, errors.Join(errs...)
}

// firing lists a rule's firing alerts: robot id → fired at.
func (s *Store) firing(ctx context.Context, rule string) (map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT robot_id, fired_at FROM alerts WHERE rule = ?`, rule)
	if err != nil {
		return nil, fmt.Errorf("read firing alerts: %w", err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var at int64
		if err := rows.Scan(&id, &at); err != nil {
			return nil, fmt.Errorf("read firing alerts: %w", err)
		}
		out[id] = time.Unix(0, at).UTC()
	}
	return out, rows.Err()
}

// candidatesQuery selects a threshold rule's candidates: robots above the
// threshold (a range of telemetry_latest_by_value) and robots whose alert
// is firing (by primary key). TestCandidatesQueryUsesIndexes pins the plan.
const candidatesQuery = `SELECT robot_id, t, value FROM telemetry_latest WHERE metric = ?1 AND value > ?2
	UNION SELECT l.robot_id, l.t, l.value FROM alerts a JOIN telemetry_latest l ON l.robot_id = a.robot_id AND l.metric = ?1
	WHERE a.rule = ?3
	ORDER BY 1`

func (s *Store) thresholdChanges(ctx context.Context, r Rule, now time.Time) ([]Alert, error) {
	firing, err := s.firing(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	// Only the candidates cross the wire: a robot above the threshold, or
	// one whose alert is firing. (Every robot's value every pass was most
	// of the leader's work at 40,000 robots.)
	rows, err := s.db.QueryContext(ctx, candidatesQuery, string(r.Metric), r.Above, r.Name)
	if err != nil {
		return nil, fmt.Errorf("read latest %s values: %w", r.Metric, err)
	}
	type cand struct {
		robot string
		t     int64
		value float64
	}
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.robot, &c.t, &c.value); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read latest %s values: %w", r.Metric, err)
		}
		_, isFiring := firing[c.robot]
		if (isFiring && c.value <= r.clearLevel()) || (!isFiring && c.value > r.Above) {
			cands = append(cands, c)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	base := Alert{Rule: r.Name, Metric: r.Metric, Threshold: r.Above, Clear: r.clearLevel(), For: r.For.String(), At: now}
	var out []Alert
	for _, c := range cands {
		a := base
		a.RobotID, a.Value = c.robot, c.value
		if firedAt, ok := firing[c.robot]; ok {
			a.Type, a.FiredAt = store.TypeAlertResolved, firedAt
			out = append(out, a)
			continue
		}
		if now.Sub(time.Unix(0, c.t)) > DefaultStale {
			continue
		}
		since, err := s.aboveSince(ctx, c.robot, r, c.t)
		if err != nil {
			return nil, err
		}
		if now.Sub(since) >= r.For {
			a.Type, a.Since, a.FiredAt = store.TypeAlertFired, since, now
			out = append(out, a)
		}
	}
	return out, nil
}

// aboveSince is the start of the robot's current run of samples above
// the rule's threshold: the first raw sample after the last one at or
// below it. Values hold between samples (agents report on change), so
// the run lasts from there to now.
func (s *Store) aboveSince(ctx context.Context, robot string, r Rule, latest int64) (time.Time, error) {
	var since sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT min(t) FROM telemetry_raw WHERE robot_id = ?1 AND metric = ?2 AND t > coalesce(
			(SELECT max(t) FROM telemetry_raw WHERE robot_id = ?1 AND metric = ?2 AND value <= ?3), -1)`,
		robot, string(r.Metric), r.Above).Scan(&since)
	if err != nil {
		return time.Time{}, fmt.Errorf("find when robot %q went above %v %s: %w", robot, r.Above, r.Metric, err)
	}
	if !since.Valid {
		// Raw samples already pruned: the latest value is all we know.
		return time.Unix(0, latest).UTC(), nil
	}
	return time.Unix(0, since.Int64).UTC(), nil
}

// offlineChanges fires for robots offline longer than the rule allows
// (robots that were never online are not watched) and resolves firing
// ones that are online again or gone.
func (s *Store) offlineChanges(ctx context.Context, r Rule, now time.Time) ([]Alert, error) {
	firing, err := s.firing(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	offline := map[string]store.Robot{}
	after := ""
	for range 10_000 { // pages of 500: up to 5 million robots
		page, err := s.st.Robots(ctx, store.RobotFilter{State: store.StateOffline, AfterID: after, Limit: 500})
		if err != nil {
			return nil, err
		}
		for _, rb := range page {
			offline[rb.ID] = rb
		}
		if len(page) < 500 {
			break
		}
		after = page[len(page)-1].ID
	}
	base := Alert{Rule: r.Name, Threshold: r.Offline.Seconds(), For: r.Offline.String(), At: now}
	var out []Alert
	for id, rb := range offline {
		if _, ok := firing[id]; ok || rb.Status.Since.IsZero() || rb.Revoked {
			continue
		}
		if gone := now.Sub(rb.Status.LastSeen); gone >= r.Offline {
			a := base
			a.Type, a.RobotID, a.Value, a.Since, a.FiredAt = store.TypeAlertFired, id, gone.Seconds(), rb.Status.LastSeen, now
			out = append(out, a)
		}
	}
	for id, firedAt := range firing {
		if _, still := offline[id]; !still {
			a := base
			a.Type, a.RobotID, a.FiredAt = store.TypeAlertResolved, id, firedAt
			a.Value = now.Sub(firedAt).Seconds()
			out = append(out, a)
		}
	}
	return out, nil
}

// commitAlert appends the alert's event and changes its row in one
// transaction. errAlertRaced means the row was not as expected: another
// node got there first.
func (s *Store) commitAlert(ctx context.Context, a Alert) (Alert, error) {
	data, err := json.Marshal(a)
	if err != nil {
		return a, fmt.Errorf("encode %s of rule %q for robot %q: %w", a.Type, a.Rule, a.RobotID, err)
	}
	ev := store.Event{RobotID: a.RobotID, Type: a.Type, Time: a.At, Data: data, Actor: Actor}
	project := func(ctx context.Context, tx *sql.Tx, _ []store.Event) error {
		var res sql.Result
		var err error
		if a.Type == store.TypeAlertFired {
			res, err = tx.ExecContext(ctx, `INSERT INTO alerts (robot_id, rule, fired_at, value) VALUES (?, ?, ?, ?)
				ON CONFLICT (robot_id, rule) DO NOTHING`, a.RobotID, a.Rule, a.FiredAt.UnixNano(), a.Value)
		} else {
			res, err = tx.ExecContext(ctx, `DELETE FROM alerts WHERE robot_id = ? AND rule = ? AND fired_at = ?`,
				a.RobotID, a.Rule, a.FiredAt.UnixNano())
		}
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return errAlertRaced
		}
		return nil
	}
	var results []store.AppendResult
	write := func(ctx context.Context) error {
		var err error
		results, err = s.st.AppendWith(ctx, []store.Event{ev}, project)
		return err
	}
	if s.o.Submit != nil {
		err = s.o.Submit(ctx, write)
	} else {
		err = write(ctx)
	}
	if err != nil {
		if errors.Is(err, errAlertRaced) {
			return a, errAlertRaced
		}
		return a, fmt.Errorf("record %s of rule %q for robot %q: %w", a.Type, a.Rule, a.RobotID, err)
	}
	if len(results) == 1 {
		a.Seq = results[0].Seq
	}
	return a, nil
}

// Firing lists the firing alerts, by robot and rule.
func (s *Store) Firing(ctx context.Context) ([]FiringAlert, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT robot_id, rule, fired_at, value FROM alerts ORDER BY robot_id, rule`)
	if err != nil {
		return nil, fmt.Errorf("list firing alerts: %w", err)
	}
	defer rows.Close()
	out := []FiringAlert{}
	for rows.Next() {
		var f FiringAlert
		var at int64
		if err := rows.Scan(&f.RobotID, &f.Rule, &at, &f.Value); err != nil {
			return nil, fmt.Errorf("list firing alerts: %w", err)
		}
		f.FiredAt = time.Unix(0, at).UTC()
		out = append(out, f)
	}
	return out, rows.Err()
}

// FiringAlert is one alert currently firing.
type FiringAlert struct {
	RobotID string    `json:"robot_id"`
	Rule    string    `json:"rule"`
	FiredAt time.Time `json:"fired_at"`
	Value   float64   `json:"value"`
}
