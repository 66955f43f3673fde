package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Each statement is a round trip to the dqlite leader, made while this
// node holds the cluster's one write lock (lockForWrite), so a batch is a
// few statements whatever its size: one query for duplicates, one for the
// robots touched, one insert of the events and one upsert of the robots.
// dqlite's wire protocol takes at most 255 bind parameters per statement,
// so rows travel as one JSON array parameter read back with json_each
// (jsonRows); a batch with a string JSON cannot carry faithfully falls back
// to multi-row statements of bound parameters.

// eventColumns are the events table's columns written on insert.
const eventColumns = 10

// jsonRows encodes items as a JSON array of arrays (values gives an item's
// columns) for one json_each parameter. It reports false when one of the
// strings (strs) would not come back from SQLite's JSON functions as it
// went in — invalid UTF-8, which the encoder replaces, or NUL — and the
// caller must bind parameters instead.
func jsonRows[T any](items []T, values func(T) []any, strs func(T) []string) (string, bool) {
	rows := make([][]any, len(items))
	for i, it := range items {
		for _, s := range strs(it) {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				return "", false
			}
		}
		rows[i] = values(it)
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return "", false
	}
	return string(b), true
}

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
	if err := insertEvents(ctx, tx, rows); err != nil {
		return nil, err
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
// made SQLite scan the whole index for every batch, which on a 30,000-robot
// cluster was the leader's most expensive statement and grew with the log
// (TestFleetWideQueriesUseTheirIndexes).
func duplicatesQuery(n int) string {
	return `WITH k(robot_id, stream, robot_seq) AS (VALUES (?, ?, ?)` + strings.Repeat(", (?, ?, ?)", n-1) + `)
	SELECT e.robot_id, e.stream, e.robot_seq FROM k JOIN events e
	ON e.robot_id = k.robot_id AND e.stream = k.stream AND e.robot_seq = k.robot_seq`
}

// duplicatesJSONQuery is duplicatesQuery with the keys in one JSON
// parameter; CROSS JOIN keeps the keys the outer loop.
const duplicatesJSONQuery = `SELECT e.robot_id, e.stream, e.robot_seq FROM json_each(?) k CROSS JOIN events e
	ON e.robot_id = k.value ->> 0 AND e.stream = k.value ->> 1 AND e.robot_seq = k.value ->> 2`

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
	scan := func(rows *sql.Rows, err error) error {
		if err != nil {
			return fmt.Errorf("look for resent events: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var k dupKey
			var seq int64
			if err := rows.Scan(&k.robot, &k.stream, &seq); err != nil {
				return err
			}
			k.seq = uint64(seq)
			stored[k] = true
		}
		return rows.Err()
	}
	if arg, ok := jsonRows(keys, func(k dupKey) []any { return []any{k.robot, k.stream, int64(k.seq)} }, func(k dupKey) []string { return []string{k.robot, k.stream} }); ok && len(keys) > 0 {
		if err := scan(tx.QueryContext(ctx, duplicatesJSONQuery, arg)); err != nil {
			return nil, err
		}
		keys = nil
	}
	for start := 0; start < len(keys); start += maxParams / 3 {
		chunk := keys[start:min(len(keys), start+maxParams/3)]
		args := make([]any, 0, 3*len(chunk))
		for _, k := range chunk {
			args = append(args, k.robot, k.stream, int64(k.seq))
		}
		if err := scan(tx.QueryContext(ctx, duplicatesQuery(len(chunk)), args...)); err != nil {
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

// insertEvents inserts rows in order and sets their Seq.
func insertEvents(ctx context.Context, tx *sql.Tx, rows []Event) error {
	if len(rows) == 0 {
		return nil
	}
	if arg, ok := jsonRows(rows, eventValues, eventStrings); ok {
		return insertEventsStatement(ctx, tx, rows, insertEventsJSON, arg)
	}
	for start := 0; start < len(rows); start += maxParams / eventColumns {
		chunk := rows[start:min(len(rows), start+maxParams/eventColumns)]
		args := make([]any, 0, eventColumns*len(chunk))
		for _, e := range chunk {
			args = append(args, eventValues(e)...)
		}
		q := insertEventsPrefix + ` VALUES (?` + strings.Repeat(", ?", eventColumns-1) + `)` +
			strings.Repeat(`, (?`+strings.Repeat(", ?", eventColumns-1)+`)`, len(chunk)-1)
		if err := insertEventsStatement(ctx, tx, chunk, q, args...); err != nil {
			return err
		}
	}
	return nil
}

const insertEventsPrefix = `INSERT INTO events (robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time)`

// insertEventsJSON inserts the rows of a JSON array in array order.
const insertEventsJSON = insertEventsPrefix + ` SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
	value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9 FROM json_each(?) ORDER BY key`

// eventValues are e's column values in insertEventsPrefix's order.
func eventValues(e Event) []any {
	var stream, robotSeq, robotTime any
	if e.Stream != "" {
		stream, robotSeq = e.Stream, int64(e.RobotSeq)
	}
	if !e.RobotTime.IsZero() {
		robotTime = e.RobotTime.UnixNano()
	}
	return []any{e.RobotID, e.Type, e.Time.UnixNano(), string(e.Data), e.CorrelationID, e.CausationID, e.Actor, stream, robotSeq, robotTime}
}

func eventStrings(e Event) []string {
	return []string{e.RobotID, e.Type, string(e.Data), e.CorrelationID, e.CausationID, e.Actor, e.Stream}
}

// insertEventsStatement runs one insert of rows and sets their Seq: one
// statement of the one writer, so the rowids are consecutive.
func insertEventsStatement(ctx context.Context, tx *sql.Tx, rows []Event, q string, args ...any) error {
	res, err := tx.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("insert %d events (first: %s for robot %q): %w", len(rows), rows[0].Type, rows[0].RobotID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != int64(len(rows)) {
		return fmt.Errorf("insert %d events: %d rows written", len(rows), n)
	}
	last, err := res.LastInsertId()
	if err != nil {
		return err
	}
	for j := range rows {
		rows[j].Seq = last - int64(len(rows)-1-j)
	}
	return nil
}

// prefetch loads the robots of ids, in one query when it can.
func (c *robotCache) prefetch(ctx context.Context, ids []string) error {
	var want []string
	for _, id := range ids {
		if _, ok := c.robots[id]; !ok {
			c.robots[id] = &Robot{}
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		return nil
	}
	if arg, ok := jsonRows(want, func(id string) []any { return []any{id} }, func(id string) []string { return []string{id} }); ok {
		return c.read(ctx, len(want), `SELECT id, doc FROM robots WHERE id IN (SELECT value ->> 0 FROM json_each(?))`, arg)
	}
	for start := 0; start < len(want); start += maxParams {
		chunk := want[start:min(len(want), start+maxParams)]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		if err := c.read(ctx, len(chunk), `SELECT id, doc FROM robots WHERE id IN (?`+strings.Repeat(", ?", len(chunk)-1)+`)`, args...); err != nil {
			return err
		}
	}
	return nil
}

// read decodes the (id, doc) rows of q into the cache.
func (c *robotCache) read(ctx context.Context, n int, q string, args ...any) error {
	rows, err := c.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("read %d robots: %w", n, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, doc string
		if err := rows.Scan(&id, &doc); err != nil {
			return err
		}
		r := c.robots[id]
		if err := json.Unmarshal([]byte(doc), r); err != nil {
			return fmt.Errorf("robot %q projection is corrupt (rebuild it with `control projection rebuild`): %w", id, err)
		}
	}
	return rows.Err()
}

// robotColumns are the robots table's columns written on upsert.
const robotColumns = 6

const (
	upsertRobotsPrefix = `INSERT INTO robots (id, type, status, doc, version, last_event)`
	upsertRobotsSuffix = ` ON CONFLICT (id) DO UPDATE SET type = excluded.type, status = excluded.status, doc = excluded.doc,
	version = excluded.version, last_event = excluded.last_event`
	// upsertRobotsJSON upserts the rows of a JSON array; "WHERE true"
	// tells the parser the ON CONFLICT is the upsert's, not a join's.
	upsertRobotsJSON = upsertRobotsPrefix + ` SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
	FROM json_each(?) WHERE true` + upsertRobotsSuffix
)

// flush upserts the dirty robots, in one statement when it can.
func (c *robotCache) flush(ctx context.Context) error {
	rows := make([][]any, 0, len(c.dirty))
	for id := range c.dirty {
		r := c.robots[id]
		doc, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode robot %q: %w", r.ID, err)
		}
		rows = append(rows, []any{r.ID, string(r.Type), r.Status.State, string(doc), r.Version, r.Status.LastSeen.UnixNano()})
	}
	values := func(row []any) []any { return row }
	strs := func(row []any) []string {
		return []string{row[0].(string), row[1].(string), row[2].(string), row[3].(string)}
	}
	if arg, ok := jsonRows(rows, values, strs); ok && len(rows) > 0 {
		if _, err := c.tx.ExecContext(ctx, upsertRobotsJSON, arg); err != nil {
			return fmt.Errorf("write %d robots: %w", len(rows), err)
		}
		rows = nil
	}
	for start := 0; start < len(rows); start += maxParams / robotColumns {
		chunk := rows[start:min(len(rows), start+maxParams/robotColumns)]
		args := make([]any, 0, robotColumns*len(chunk))
		for _, row := range chunk {
			args = append(args, row...)
		}
		q := upsertRobotsPrefix + ` VALUES (?, ?, ?, ?, ?, ?)` + strings.Repeat(`, (?, ?, ?, ?, ?, ?)`, len(chunk)-1) + upsertRobotsSuffix
		if _, err := c.tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("write %d robots: %w", len(chunk), err)
		}
	}
	c.dirty = map[string]bool{}
	return nil
}
