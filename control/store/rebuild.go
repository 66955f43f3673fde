package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// rebuildPage is how many events Rebuild reads per query.
const rebuildPage = 2000

// Rebuild replays the whole event log through Apply and returns the robots
// projection it yields, keyed by robot id.
func (s *Store) Rebuild(ctx context.Context) (map[string]*Robot, error) {
	robots, _, err := s.rebuild(ctx)
	return robots, err
}

// rebuild also returns the sequence of the last event it applied.
func (s *Store) rebuild(ctx context.Context) (map[string]*Robot, int64, error) {
	robots := map[string]*Robot{}
	var after int64
	for {
		page, err := s.Events(ctx, after, rebuildPage, "")
		if err != nil {
			return nil, 0, fmt.Errorf("rebuild projection: %w", err)
		}
		for _, e := range page {
			after = e.Seq
			if e.RobotID == "" || !robotEvent(e.Type) {
				continue
			}
			r := robots[e.RobotID]
			if r == nil {
				r = &Robot{}
				robots[e.RobotID] = r
			}
			if err := Apply(r, e); err != nil {
				return nil, 0, fmt.Errorf("rebuild projection: %w", err)
			}
		}
		if len(page) < rebuildPage {
			return robots, after, nil
		}
	}
}

// Mismatch is one robot whose live projection differs from the rebuilt one.
type Mismatch struct {
	RobotID string `json:"robot_id"`
	Live    string `json:"live"`    // JSON document, empty when missing
	Rebuilt string `json:"rebuilt"` // JSON document, empty when missing
}

// Verify rebuilds the robots projection from the log and compares it with
// the stored one, document by document (presence overlay excluded).
func (s *Store) Verify(ctx context.Context) ([]Mismatch, error) {
	rebuilt, err := s.Rebuild(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]string{}
	rows, err := s.db.QueryContext(ctx, `SELECT id, doc FROM robots`)
	if err != nil {
		return nil, fmt.Errorf("read live projection: %w", err)
	}
	for rows.Next() {
		var id, doc string
		if err := rows.Scan(&id, &doc); err != nil {
			rows.Close()
			return nil, err
		}
		live[id] = doc
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []Mismatch
	for id, r := range rebuilt {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		if live[id] != string(b) {
			out = append(out, Mismatch{RobotID: id, Live: live[id], Rebuilt: string(b)})
		}
		delete(live, id)
	}
	for id, doc := range live {
		out = append(out, Mismatch{RobotID: id, Live: doc})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RobotID < out[j].RobotID })
	return out, nil
}

// RebuildInPlace replaces the stored robots projection with one rebuilt from
// the log, in one transaction. Use it after a projection bug is fixed. The
// replay runs outside the transaction so live appends are not blocked for
// its duration; if the log grew meanwhile, it replays again.
func (s *Store) RebuildInPlace(ctx context.Context) (int, error) {
	for attempt := 0; ; attempt++ {
		n, err := s.rebuildInPlaceOnce(ctx)
		if !errors.Is(err, errLogMoved) || attempt == 4 {
			return n, err
		}
	}
}

var errLogMoved = errors.New("event log grew during the rebuild; the fleet is busy, try again")

func (s *Store) rebuildInPlaceOnce(ctx context.Context) (int, error) {
	rebuilt, last, err := s.rebuild(ctx)
	if err != nil {
		return 0, err
	}
	// Replace the projection in transactions of MaxAppendBatch robots (see
	// there). Each checks the log has not moved; if it has, start over.
	guard := func(tx *sql.Tx) error {
		var now sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT max(seq) FROM events`).Scan(&now); err != nil {
			return err
		}
		if now.Int64 != last {
			return errLogMoved
		}
		return nil
	}
	if err := s.rebuildTables(ctx, guard); err != nil {
		return 0, fmt.Errorf("rebuild security and command tables: %w", err)
	}
	err = WithTx(ctx, s.db, func(tx *sql.Tx) error {
		if err := guard(tx); err != nil {
			return err
		}
		// Robots the log no longer knows go; the rest are overwritten below.
		rows, err := tx.QueryContext(ctx, `SELECT id FROM robots`)
		if err != nil {
			return err
		}
		var stale []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			if rebuilt[id] == nil {
				stale = append(stale, id)
			}
		}
		rows.Close()
		for _, id := range stale {
			if _, err := tx.ExecContext(ctx, `DELETE FROM robots WHERE id = ?`, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("replace robots projection: %w", err)
	}
	robots := make([]*Robot, 0, len(rebuilt))
	for _, r := range rebuilt {
		robots = append(robots, r)
	}
	for len(robots) > 0 {
		chunk := robots[:min(len(robots), MaxAppendBatch)]
		robots = robots[len(chunk):]
		err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
			if err := guard(tx); err != nil {
				return err
			}
			for _, r := range chunk {
				if err := putRobot(ctx, tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("replace robots projection: %w", err)
		}
	}
	return len(rebuilt), nil
}

// rebuildTables replays the security and command events into fresh
// token, enrollment, certificate and command tables, in transactions of at
// most MaxAppendBatch events, each checked by guard.
func (s *Store) rebuildTables(ctx context.Context, guard func(*sql.Tx) error) error {
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		if err := guard(tx); err != nil {
			return err
		}
		for _, t := range []string{"tokens", "enrollment_tokens", "certificates", "commands"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+t); err != nil {
				return fmt.Errorf("clear %s: %w", t, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	var after int64
	for {
		page, err := s.EventsOfTypes(ctx, after, MaxAppendBatch,
			TypeTokenCreated, TypeTokenRevoked, TypeEnrollmentCreated, TypeRobotEnrolled, TypeCertificateIssued, TypeRobotRevoked,
			TypeCommandQueued, TypeCommandDelivered, TypeCommandResponse)
		if err != nil || len(page) == 0 {
			return err
		}
		err = WithTx(ctx, s.db, func(tx *sql.Tx) error {
			if err := guard(tx); err != nil {
				return err
			}
			for _, e := range page {
				if err := applySecurity(ctx, tx, e); err != nil {
					return err
				}
				if err := applyCommands(ctx, tx, e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		after = page[len(page)-1].Seq
	}
}
