package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Event types written by control. Robot-originated events keep the agent's
// stream and sequence so replays are recognised.
const (
	TypeRobotRegistered   = "RobotRegistered"
	TypeRobotConnected    = "RobotConnected"
	TypeRobotDisconnected = "RobotDisconnected"
	TypeRobotOffline      = "RobotOffline"
	TypeTelemetryReported = "TelemetryReported"
	TypeRobotEvent        = "RobotEvent"
	TypeCommandResponse   = "CommandResponse"
	// Reported by netboot stations (control/api factory routes): a device
	// seen on the factory network, and a step of a board's factory run.
	TypeDeviceSeen  = protocol.EventDeviceSeen
	TypeFactoryStep = protocol.EventFactoryStep
	// Written by the leader's alert rules (control/telemetry). They name
	// the robot the alert is about but are not news from it: they stay out
	// of the robots projection (last_seen must not move).
	TypeAlertFired    = "AlertFired"
	TypeAlertResolved = "AlertResolved"
	// Written by the leader's mDNS browser (control/discovery): a robot
	// advertising itself on the network while not connected. What it
	// advertises is unauthenticated, so it stays out of the robots
	// projection too (DeviceDiscoveredData).
	TypeDeviceDiscovered = "DeviceDiscovered"
)

// DeviceDiscoveredData is the data of DeviceDiscovered: what the robot
// advertises over mDNS, unverified.
type DeviceDiscoveredData struct {
	Instance     string             `json:"instance"` // DNS-SD instance, like "lekiwi-7._lekiwi._tcp.local."
	Type         protocol.RobotType `json:"type"`
	Host         string             `json:"host,omitempty"`
	Address      string             `json:"address,omitempty"`
	Port         int                `json:"port,omitempty"`
	AgentVersion string             `json:"agent_version,omitempty"`
	OSVersion    string             `json:"os_version,omitempty"`
	Node         string             `json:"node"` // the control node that saw it
}

// Event is one entry of the append-only log.
type Event struct {
	// Seq is the global, gap-free-in-commit-order sequence assigned on append.
	Seq           int64           `json:"seq"`
	RobotID       string          `json:"robot_id,omitempty"`
	Type          string          `json:"type"`
	Time          time.Time       `json:"time"`
	Data          json.RawMessage `json:"data"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	CausationID   string          `json:"causation_id,omitempty"`
	Actor         string          `json:"actor,omitempty"`
	// Stream and RobotSeq identify a message from a robot; (RobotID, Stream,
	// RobotSeq) is unique, which is what makes resends idempotent.
	Stream   string `json:"stream,omitempty"`
	RobotSeq uint64 `json:"robot_seq,omitempty"`
	// RobotTime is the robot's own timestamp of the message; Time is when
	// control received it (robot clocks may be wrong).
	RobotTime time.Time `json:"robot_time,omitzero"`
}

// AppendResult says what happened to one appended event.
type AppendResult struct {
	Seq       int64 // global sequence; 0 for a duplicate
	Duplicate bool  // same (robot, stream, robot sequence) was already stored
}

// MaxAppendBatch is the most events one Append (one transaction) may
// carry. libdqlite 1.11.1 (Debian bookworm) fails the commit of large
// transactions that update many robots with "disk I/O error" and leaves the
// database malformed: measured here, 1,024 robot updates of ~1.8 KB failed
// on a 5,000-robot database, and 512 failed during a 5,000-robot shutdown.
// 64 keeps a wide margin; writers that have more split it over transactions.
const MaxAppendBatch = 64

// Append writes events to the log in order and applies them to the
// projections, all in one transaction: either every event is durable and
// projected, or none is. Events already in the log (by robot, stream and
// robot sequence) are skipped and reported as duplicates. A robot's first
// RobotConnected is preceded by a RobotRegistered made from its data.
func (s *Store) Append(ctx context.Context, events []Event) ([]AppendResult, error) {
	if len(events) == 0 {
		return nil, nil
	}
	if len(events) > MaxAppendBatch {
		return nil, fmt.Errorf("append %d events: more than %d in one transaction is unsafe with libdqlite 1.11; split the batch", len(events), MaxAppendBatch)
	}
	for i := range events {
		if err := CheckEvent(&events[i]); err != nil {
			return nil, err
		}
	}
	var results []AppendResult
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		if err := lockForWrite(ctx, tx); err != nil {
			return err
		}
		var err error
		results, err = appendBatch(ctx, tx, events)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("append %d events: %w", len(events), err)
	}
	return results, nil
}

// CheckEvent is what Append requires of an event (it fills in empty data
// as {}). Writers that batch other sources' events — the gateway, for its
// robots — check each one first: one bad event fails its whole batch.
func CheckEvent(e *Event) error {
	if e.Type == "" {
		return errors.New("append event: type is required")
	}
	if e.Time.IsZero() {
		return fmt.Errorf("append %s event: time is required", e.Type)
	}
	if len(e.Data) == 0 {
		e.Data = json.RawMessage("{}")
	}
	if !json.Valid(e.Data) {
		return fmt.Errorf("append %s event: data is not valid JSON", e.Type)
	}
	if (e.Stream == "") != (e.RobotSeq == 0) {
		return fmt.Errorf("append %s event: stream and robot sequence go together", e.Type)
	}
	// dqlite's wire protocol ends text at a NUL byte: the stored event
	// would silently lose the rest.
	for _, f := range []struct{ name, v string }{{"robot id", e.RobotID}, {"type", e.Type}, {"data", string(e.Data)},
		{"correlation id", e.CorrelationID}, {"causation id", e.CausationID}, {"actor", e.Actor}, {"stream", e.Stream}} {
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("append %s event: %s %q contains a NUL byte, which the database cannot store", e.Type, f.name, f.v)
		}
	}
	return nil
}

func appendOne(ctx context.Context, tx *sql.Tx, robots *robotCache, e Event) (AppendResult, error) {
	var stream, robotSeq, robotTime any
	if e.Stream != "" {
		stream, robotSeq = e.Stream, int64(e.RobotSeq)
	}
	if !e.RobotTime.IsZero() {
		robotTime = e.RobotTime.UnixNano()
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO events
		(robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (robot_id, stream, robot_seq) DO NOTHING`,
		e.RobotID, e.Type, e.Time.UnixNano(), string(e.Data), e.CorrelationID, e.CausationID, e.Actor, stream, robotSeq, robotTime)
	if err != nil {
		return AppendResult{}, fmt.Errorf("insert %s event for robot %q: %w", e.Type, e.RobotID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return AppendResult{}, err
	}
	if n == 0 {
		return AppendResult{Duplicate: true}, nil
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return AppendResult{}, err
	}
	e.Seq = seq
	if err := applySecurity(ctx, tx, e); err != nil {
		return AppendResult{}, err
	}
	if err := applyCommands(ctx, tx, e); err != nil {
		return AppendResult{}, err
	}
	if e.RobotID != "" && robotEvent(e.Type) {
		if err := robots.apply(ctx, e); err != nil {
			return AppendResult{}, err
		}
	}
	return AppendResult{Seq: seq}, nil
}

// robotEvent reports whether an event type belongs to the robots
// projection. Audit records and enrollment bookkeeping name a robot id
// (possibly one that never connected) but must not create a robot.
func robotEvent(t string) bool {
	switch t {
	case TypeAccessDenied, TypeEnrollmentCreated, TypeCommandQueued, TypeCommandDelivered, TypeDeviceSeen, TypeFactoryStep,
		TypeAlertFired, TypeAlertResolved, TypeDeviceDiscovered:
		return false
	}
	return true
}

// Events returns up to limit events with seq > after, oldest first.
func (s *Store) Events(ctx context.Context, after int64, limit int, robotID string) ([]Event, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list events: limit must be positive, got %d", limit)
	}
	q := `SELECT seq, robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time
		FROM events WHERE seq > ?`
	args := []any{after}
	if robotID != "" {
		q += ` AND robot_id = ?`
		args = append(args, robotID)
	}
	q += ` ORDER BY seq LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", after, err)
	}
	return scanEvents(rows)
}

// LastSeq is the newest global sequence in the log (0 when empty).
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT max(seq) FROM events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read last event sequence: %w", err)
	}
	return seq.Int64, nil
}

// scanEvents reads every row of rows as an event and closes rows.
func scanEvents(rows *sql.Rows) ([]Event, error) {
	defer rows.Close()
	var out []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func scanEvent(rows *sql.Rows) (Event, error) {
	var (
		e        Event
		ts       int64
		data     string
		stream   sql.NullString
		robotSeq sql.NullInt64
		robotTs  sql.NullInt64
	)
	if err := rows.Scan(&e.Seq, &e.RobotID, &e.Type, &ts, &data, &e.CorrelationID, &e.CausationID, &e.Actor, &stream, &robotSeq, &robotTs); err != nil {
		return Event{}, fmt.Errorf("read event row: %w", err)
	}
	e.Time = time.Unix(0, ts).UTC()
	e.Data = json.RawMessage(data)
	e.Stream = stream.String
	e.RobotSeq = uint64(robotSeq.Int64)
	if robotTs.Valid {
		e.RobotTime = time.Unix(0, robotTs.Int64).UTC()
	}
	return e, nil
}

// EventsOfTypes returns up to limit events of the given types with
// seq > after, oldest first — how nodes tail the log for what concerns them.
func (s *Store) EventsOfTypes(ctx context.Context, after int64, limit int, types ...string) ([]Event, error) {
	if len(types) == 0 || len(types) > maxParams-2 {
		return nil, fmt.Errorf("list events by type: need 1-%d types", maxParams-2)
	}
	q := `SELECT seq, robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time
		FROM events WHERE seq > ? AND type IN (?` + strings.Repeat(",?", len(types)-1) + `) ORDER BY seq LIMIT ?`
	args := []any{after}
	for _, t := range types {
		args = append(args, t)
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list %v events after %d: %w", types, after, err)
	}
	return scanEvents(rows)
}
