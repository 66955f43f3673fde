package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
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

// presenceChunk bounds one statement's size (SQLite allows 32766 variables).
const presenceChunk = 500

// FlushPresence records last-seen times for many robots in a few statements.
// A time never moves backwards: a late flush from a node the robot has left
// cannot hide a newer one.
func (s *Store) FlushPresence(ctx context.Context, batch []Presence) error {
	for len(batch) > 0 {
		n := min(len(batch), presenceChunk)
		chunk := batch[:n]
		batch = batch[n:]
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
		err := withTx(ctx, s.db, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, sb.String(), args...)
			return err
		})
		if err != nil {
			return fmt.Errorf("flush presence of %d robots: %w", len(chunk), err)
		}
	}
	return nil
}

// SweepOffline marks offline every online robot not heard from since cutoff
// (neither an event nor a flushed heartbeat), appending one RobotOffline
// event each. Selection and append share a transaction, so nodes sweeping at
// the same time do not record a robot going offline twice.
func (s *Store) SweepOffline(ctx context.Context, cutoff, now time.Time, timeout time.Duration) ([]string, error) {
	var gone []string
	err := withTx(ctx, s.db, func(tx *sql.Tx) error {
		gone = gone[:0]
		rows, err := tx.QueryContext(ctx, `SELECT r.id, max(r.last_event, coalesce(p.last_seen, 0)) FROM robots r
			LEFT JOIN presence p ON p.robot_id = r.id
			WHERE r.status = ? AND max(r.last_event, coalesce(p.last_seen, 0)) < ?
			ORDER BY r.id LIMIT 5000`, StateOnline, cutoff.UnixNano())
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
		cache := newRobotCache(tx)
		for _, r := range found {
			data, _ := json.Marshal(OfflineData{LastSeen: time.Unix(0, r.seen).UTC(), Timeout: timeout.String()})
			e := Event{RobotID: r.id, Type: TypeRobotOffline, Time: now.UTC(), Data: data, Actor: "control"}
			if _, err := appendOne(ctx, tx, cache, e); err != nil {
				return err
			}
			gone = append(gone, r.id)
		}
		return cache.flush(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("sweep offline robots: %w", err)
	}
	return gone, nil
}
