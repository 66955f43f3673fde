package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Presence is when a gateway last heard from a robot.
type Presence struct {
	RobotID       string
	Node          string
	LastSeen      time.Time
	UptimeSeconds float64
}

// maxParams is the most bind parameters dqlite's wire protocol (v1, as
// spoken by go-dqlite 1.11) takes in one statement.
const maxParams = 255

// presenceChunk is the rows per presence upsert statement (4 parameters each).
const presenceChunk = maxParams / 4

// SortPresence puts a batch in the presence table's key order. A
// transaction of a sorted run writes neighbouring rows (the table is
// clustered by node, robot) instead of pages all over the table, and
// dqlite replicates and keeps every page a transaction writes: callers
// that split a flush into several transactions sort before splitting.
func SortPresence(batch []Presence) { slices.SortFunc(batch, comparePresence) }

// comparePresence orders by the presence table's key, (node, robot_id).
func comparePresence(a, b Presence) int {
	return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.RobotID, b.RobotID))
}

// FlushPresence records last-seen times for many robots in a few statements.
// A time never moves backwards: a late flush from a node the robot has left
// cannot hide a newer one.
func (s *Store) FlushPresence(ctx context.Context, batch []Presence) error {
	total := len(batch)
	if !slices.IsSortedFunc(batch, comparePresence) { // the gateway's slices come sorted
		batch = slices.Clone(batch)
		SortPresence(batch)
	}
	for len(batch) > 0 {
		// Presence rows are small; still, keep transactions modest (see
		// MaxAppendBatch).
		txRows := batch[:min(len(batch), 16*presenceChunk)]
		batch = batch[len(txRows):]
		err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
			for rest := txRows; len(rest) > 0; {
				n := min(len(rest), presenceChunk)
				if err := upsertPresence(ctx, tx, rest[:n]); err != nil {
					return err
				}
				rest = rest[n:]
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("flush presence of %d robots: %w", total, err)
		}
	}
	return nil
}

func upsertPresence(ctx context.Context, tx *sql.Tx, chunk []Presence) error {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO presence (robot_id, node, last_seen, uptime_seconds) VALUES `)
	args := make([]any, 0, 4*len(chunk))
	for i, p := range chunk {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString("(?, ?, ?, ?)")
		args = append(args, p.RobotID, p.Node, p.LastSeen.UnixNano(), p.UptimeSeconds)
	}
	sb.WriteString(` ON CONFLICT (robot_id) DO UPDATE SET node = excluded.node, last_seen = excluded.last_seen,
		uptime_seconds = excluded.uptime_seconds WHERE excluded.last_seen > presence.last_seen`)
	_, err := tx.ExecContext(ctx, sb.String(), args...)
	return err
}

// OfflineAmong returns which of ids are in state offline. A gateway uses it
// to find robots it still hears from that a sweep marked offline (because
// their presence could not be flushed in time) and bring them back.
func (s *Store) OfflineAmong(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) > maxParams-1 {
		// Every node asks this for all its robots every presence tick: at
		// 12,000 robots, dozens of round trips to the leader. Usually few
		// robots are offline, and listing them is one index-only query;
		// the chunked lookup is for fleets where most are.
		if out, ok, err := s.offlineAmongFew(ctx, ids); err != nil || ok {
			return out, err
		}
	}
	var out []string
	for rest := ids; len(rest) > 0; {
		n := min(len(rest), maxParams-1)
		chunk := rest[:n]
		rest = rest[n:]
		args := make([]any, 0, n+1)
		args = append(args, StateOffline)
		for _, id := range chunk {
			args = append(args, id)
		}
		q := `SELECT id FROM robots WHERE status = ? AND id IN (?` + strings.Repeat(",?", n-1) + `)`
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("check state of %d robots: %w", n, err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SweepOffline marks offline every online robot not heard from since cutoff
// (neither an event nor a flushed heartbeat), appending one RobotOffline
// event each. Selection and append share a transaction, so nodes sweeping at
// the same time do not record a robot going offline twice; transactions hold
// at most MaxAppendBatch robots each.
func (s *Store) SweepOffline(ctx context.Context, cutoff, now time.Time, timeout time.Duration) ([]string, error) {
	var all []string
	for {
		gone, more, err := s.SweepOfflineBatch(ctx, cutoff, now, timeout)
		all = append(all, gone...)
		if err != nil || !more {
			return all, err
		}
	}
}

// offlineAmongFew answers OfflineAmong from the list of offline robots;
// false when there are more of those than ids.
func (s *Store) offlineAmongFew(ctx context.Context, ids []string) ([]string, bool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM robots WHERE status = ? LIMIT ?`, StateOffline, len(ids)+1)
	if err != nil {
		return nil, false, fmt.Errorf("list offline robots: %w", err)
	}
	defer rows.Close()
	offline := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, false, err
		}
		offline[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list offline robots: %w", err)
	}
	if len(offline) > len(ids) {
		return nil, false, nil
	}
	var out []string
	for _, id := range ids {
		if offline[id] {
			out = append(out, id)
		}
	}
	return out, true, nil
}

// SweepOfflineBatch is one transaction of SweepOffline: at most
// MaxAppendBatch robots; more reports that the batch was full and more may
// wait. A caller with other writes queued (the gateway's hellos) runs them
// between batches instead of holding them behind a sweep of thousands.
func (s *Store) SweepOfflineBatch(ctx context.Context, cutoff, now time.Time, timeout time.Duration) (gone []string, more bool, err error) {
	gone, err = s.sweepOnce(ctx, cutoff, now, timeout)
	return gone, err == nil && len(gone) >= MaxAppendBatch, err
}

// sweepQuery finds online robots silent since a cutoff, oldest first. It
// runs on every member every presence tick: it must stay an index-only
// scan of robots_sweep (TestSweepQueryIsIndexOnly), never a read of every
// robot's document.
const sweepQuery = `SELECT r.id, max(r.last_event, coalesce(p.last_seen, 0)) FROM robots r
	LEFT JOIN presence p ON p.robot_id = r.id
	WHERE r.status = ? AND r.last_event < ? AND coalesce(p.last_seen, 0) < ?
	ORDER BY r.last_event, r.id LIMIT ?`

func (s *Store) sweepOnce(ctx context.Context, cutoff, now time.Time, timeout time.Duration) ([]string, error) {
	var gone []string
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		gone = gone[:0]
		rows, err := tx.QueryContext(ctx, sweepQuery, StateOnline, cutoff.UnixNano(), cutoff.UnixNano(), MaxAppendBatch)
		if err != nil {
			return fmt.Errorf("find silent robots: %w", err)
		}
		type silent struct {
			id   string
			seen int64
		}
		var found []silent
		for rows.Next() {
			var s silent
			if err := rows.Scan(&s.id, &s.seen); err != nil {
				rows.Close()
				return err
			}
			found = append(found, s)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(found) == 0 {
			return nil
		}
		// One batch append (robots read in one query, events in one
		// insert), not a round trip per robot: a sweep after an outage
		// covers thousands.
		events := make([]Event, 0, len(found))
		for _, r := range found {
			data, _ := json.Marshal(OfflineData{LastSeen: time.Unix(0, r.seen).UTC(), Timeout: timeout.String()})
			events = append(events, Event{RobotID: r.id, Type: TypeRobotOffline, Time: now.UTC(), Data: data, Actor: "control"})
			gone = append(gone, r.id)
		}
		_, err = appendBatch(ctx, tx, events)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sweep offline robots: %w", err)
	}
	return gone, nil
}
