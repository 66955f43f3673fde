package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
)

// Each statement is a round trip to the dqlite leader, so a batch costs a
// few multi-row statements instead of several per event: one query for
// duplicates, one for the robots touched, multi-row inserts of the events
// and multi-row upserts of the robots.

// eventColumns are the events table's columns written on insert.
const eventColumns = 10

// appendBatch is Append's transaction body.
func appendBatch(ctx context.Context, tx *sql.Tx, events []Event) ([]AppendResult, error) {
	results := make([]AppendResult, len(events))
	dup, err := findDuplicates(ctx, tx, events)
	if err != nil {
		return nil, err
	}
	robots := newRobotCache(tx)
	var ids []string
	for _, e := range events {
		if e.RobotID != "" {
			ids = append(ids, e.RobotID)
		}
	}
	if err := robots.prefetch(ctx, ids); err != nil {
		return nil, err
	}
	// Rows to insert, in order; idx maps a row back to its input event
	// (-1 for a RobotRegistered added before a robot's first connect).
	var rows []Event
	var idx []int
	registered := map[string]bool{}
	for i, e := range events {
		if dup[i] {
			results[i] = AppendResult{Duplicate: true}
			continue
		}
		if e.Type == TypeRobotConnected && e.RobotID != "" && !registered[e.RobotID] {
			if r := robots.robots[e.RobotID]; r == nil || r.ID == "" {
				reg, err := registration(e)
				if err != nil {
					return nil, err
				}
				rows, idx = append(rows, reg), append(idx, -1)
				registered[e.RobotID] = true
			}
		}
		rows, idx = append(rows, e), append(idx, i)
	}
	for start := 0; start < len(rows); {
		n := min(len(rows)-start, maxParams/eventColumns)
		last, err := insertEvents(ctx, tx, rows[start:start+n])
		if err != nil {
			return nil, err
		}
		// One statement, one writer: rowids are consecutive.
		for j := 0; j < n; j++ {
			rows[start+j].Seq = last - int64(n-1-j)
		}
		start += n
	}
	for j, e := range rows {
		if idx[j] >= 0 {
			results[idx[j]] = AppendResult{Seq: e.Seq}
		}
		if err := applySecurity(ctx, tx, e); err != nil {
			return nil, err
		}
		if err := applyCommands(ctx, tx, e); err != nil {
			return nil, err
		}
		if e.RobotID != "" && robotEvent(e.Type) {
			if err := robots.apply(ctx, e); err != nil {
				return nil, err
			}
		}
	}
	return results, robots.flush(ctx)
}

// registration is the RobotRegistered event preceding a robot's first
// RobotConnected.
func registration(e Event) (Event, error) {
	var d ConnectedData
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return Event{}, dataError(e, err)
	}
	reg, err := json.Marshal(RegisteredData{Type: d.Type, Hardware: d.Hardware})
	if err != nil {
		return Event{}, err
	}
	return Event{RobotID: e.RobotID, Type: TypeRobotRegistered, Time: e.Time, Data: reg, Actor: e.Actor, CorrelationID: e.CorrelationID}, nil
}

type dupKey struct {
	robot, stream string
	seq           uint64
}

// duplicatesQuery finds which of n (robot, stream, robot sequence) keys are
// in the log. A join from the keys, so each is one search of the unique
// index: the row-value form "(robot_id, stream, robot_seq) IN (VALUES …)"
// made SQLite scan the whole index for every batch, which on a 50,000-robot
// cluster was the leader's most expensive statement and grew with the log
// (TestFleetWideQueriesUseTheirIndexes).
func duplicatesQuery(n int) string {
	return `WITH k(robot_id, stream, robot_seq) AS (VALUES (?, ?, ?)` + strings.Repeat(", (?, ?, ?)", n-1) + `)
	SELECT e.robot_id, e.stream, e.robot_seq FROM k JOIN events e
	ON e.robot_id = k.robot_id AND e.stream = k.stream AND e.robot_seq = k.robot_seq`
}

// findDuplicates marks events already in the log (or earlier in this
// batch) by (robot, stream, robot sequence).
func findDuplicates(ctx context.Context, tx *sql.Tx, events []Event) ([]bool, error) {
	dup := make([]bool, len(events))
	seen := map[dupKey]bool{}
	var keys []dupKey
	for i, e := range events {
		if e.Stream == "" {
			continue
		}
		k := dupKey{e.RobotID, e.Stream, e.RobotSeq}
		if seen[k] {
			dup[i] = true
			continue
		}
		seen[k] = true
		keys = append(keys, k)
	}
	stored := map[dupKey]bool{}
	for start := 0; start < len(keys); start += maxParams / 3 {
		chunk := keys[start:min(len(keys), start+maxParams/3)]
		args := make([]any, 0, 3*len(chunk))
		for _, k := range chunk {
			args = append(args, k.robot, k.stream, int64(k.seq))
		}
		rows, err := tx.QueryContext(ctx, duplicatesQuery(len(chunk)), args...)
		if err != nil {
			return nil, fmt.Errorf("look for resent events: %w", err)
		}
		for rows.Next() {
			var k dupKey
			var seq int64
			if err := rows.Scan(&k.robot, &k.stream, &seq); err != nil {
				rows.Close()
				return nil, err
			}
			k.seq = uint64(seq)
			stored[k] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for i, e := range events {
		if e.Stream != "" && stored[dupKey{e.RobotID, e.Stream, e.RobotSeq}] {
			dup[i] = true
		}
	}
	return dup, nil
}

// insertEvents inserts rows in one statement and returns the last rowid.
func insertEvents(ctx context.Context, tx *sql.Tx, rows []Event) (int64, error) {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO events (robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time) VALUES `)
	args := make([]any, 0, eventColumns*len(rows))
	for i, e := range rows {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
		var stream, robotSeq, robotTime any
		if e.Stream != "" {
			stream, robotSeq = e.Stream, int64(e.RobotSeq)
		}
		if !e.RobotTime.IsZero() {
			robotTime = e.RobotTime.UnixNano()
		}
		args = append(args, e.RobotID, e.Type, e.Time.UnixNano(), string(e.Data), e.CorrelationID, e.CausationID, e.Actor, stream, robotSeq, robotTime)
	}
	res, err := tx.ExecContext(ctx, sb.String(), args...)
	if err != nil {
		return 0, fmt.Errorf("insert %d events (first: %s for robot %q): %w", len(rows), rows[0].Type, rows[0].RobotID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	if n != int64(len(rows)) {
		return 0, fmt.Errorf("insert %d events: %d rows written", len(rows), n)
	}
	return res.LastInsertId()
}

// prefetch loads the robots of ids in few queries.
func (c *robotCache) prefetch(ctx context.Context, ids []string) error {
	var want []string
	for _, id := range ids {
		if _, ok := c.robots[id]; !ok {
			c.robots[id] = &Robot{}
			want = append(want, id)
		}
	}
	for start := 0; start < len(want); start += maxParams {
		chunk := want[start:min(len(want), start+maxParams)]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := c.tx.QueryContext(ctx, `SELECT id, doc FROM robots WHERE id IN (?`+strings.Repeat(", ?", len(chunk)-1)+`)`, args...)
		if err != nil {
			return fmt.Errorf("read %d robots: %w", len(chunk), err)
		}
		for rows.Next() {
			var id, doc string
			if err := rows.Scan(&id, &doc); err != nil {
				rows.Close()
				return err
			}
			r := c.robots[id]
			if err := json.Unmarshal([]byte(doc), r); err != nil {
				rows.Close()
				return fmt.Errorf("robot %q projection is corrupt (rebuild it with `control projection rebuild`): %w", id, err)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// robotColumns are the robots table's columns written on upsert.
const robotColumns = 6

// flushMany upserts the dirty robots in multi-row statements.
func (c *robotCache) flushMany(ctx context.Context) error {
	var dirty []*Robot
	for id := range c.dirty {
		dirty = append(dirty, c.robots[id])
	}
	for start := 0; start < len(dirty); start += maxParams / robotColumns {
		chunk := dirty[start:min(len(dirty), start+maxParams/robotColumns)]
		var sb strings.Builder
		sb.WriteString(`INSERT INTO robots (id, type, status, doc, version, last_event) VALUES `)
		args := make([]any, 0, robotColumns*len(chunk))
		for i, r := range chunk {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString("(?, ?, ?, ?, ?, ?)")
			doc, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode robot %q: %w", r.ID, err)
			}
			args = append(args, r.ID, string(r.Type), r.Status.State, string(doc), r.Version, r.Status.LastSeen.UnixNano())
		}
		sb.WriteString(` ON CONFLICT (id) DO UPDATE SET type = excluded.type, status = excluded.status, doc = excluded.doc,
			version = excluded.version, last_event = excluded.last_event`)
		if _, err := c.tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return fmt.Errorf("write %d robots: %w", len(chunk), err)
		}
	}
	c.dirty = map[string]bool{}
	return nil
}
