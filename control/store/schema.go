package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migration is one schema step. Steps are append-only: never edit a released
// step, add a new one.
type migration struct {
	version int
	name    string
	sql     []string
}

var migrations = []migration{
	{1, "event log, robots projection, presence", []string{
		`CREATE TABLE events (
			seq            INTEGER PRIMARY KEY AUTOINCREMENT,
			robot_id       TEXT    NOT NULL DEFAULT '',
			type           TEXT    NOT NULL,
			time           INTEGER NOT NULL,
			data           TEXT    NOT NULL DEFAULT '{}',
			correlation_id TEXT    NOT NULL DEFAULT '',
			causation_id   TEXT    NOT NULL DEFAULT '',
			actor          TEXT    NOT NULL DEFAULT '',
			stream         TEXT,
			robot_seq      INTEGER,
			robot_time     INTEGER,
			UNIQUE (robot_id, stream, robot_seq)
		)`,
		`CREATE INDEX events_by_robot ON events (robot_id, seq)`,
		`CREATE TABLE robots (
			id      TEXT PRIMARY KEY,
			type    TEXT    NOT NULL,
			status  TEXT    NOT NULL,
			doc     TEXT    NOT NULL,
			version INTEGER NOT NULL,
			-- newest event time (unix ns), so the offline sweep needs no JSON
			last_event INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE INDEX robots_by_status ON robots (status)`,
		`CREATE TABLE presence (
			robot_id       TEXT PRIMARY KEY,
			node           TEXT    NOT NULL,
			last_seen      INTEGER NOT NULL,
			uptime_seconds REAL    NOT NULL
		)`,
	}},
	{2, "api tokens, enrollment tokens, certificates", []string{
		`CREATE TABLE tokens (
			id         TEXT PRIMARY KEY,
			name       TEXT    NOT NULL,
			role       TEXT    NOT NULL,
			hash       TEXT    NOT NULL,
			created_at INTEGER NOT NULL,
			expires_at INTEGER NOT NULL DEFAULT 0,
			revoked_at INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE TABLE enrollment_tokens (
			hash       TEXT PRIMARY KEY,
			robot_id   TEXT    NOT NULL,
			created_at INTEGER NOT NULL,
			expires_at INTEGER NOT NULL,
			used_at    INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE TABLE certificates (
			serial      TEXT PRIMARY KEY,
			robot_id    TEXT    NOT NULL,
			fingerprint TEXT    NOT NULL,
			not_before  INTEGER NOT NULL,
			not_after   INTEGER NOT NULL,
			revoked_at  INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE INDEX certificates_by_robot ON certificates (robot_id)`,
	}},
	{3, "events by type, for nodes tailing revocations and commands", []string{
		`CREATE INDEX events_by_type ON events (type, seq)`,
	}},
	{4, "command outbox", []string{
		`CREATE TABLE commands (
			id           TEXT PRIMARY KEY,
			robot_id     TEXT    NOT NULL,
			name         TEXT    NOT NULL,
			args         TEXT    NOT NULL DEFAULT 'null',
			status       TEXT    NOT NULL,
			created_at   INTEGER NOT NULL,
			deadline     INTEGER NOT NULL,
			delivered_by TEXT    NOT NULL DEFAULT '',
			delivered_at INTEGER NOT NULL DEFAULT 0,
			answered_at  INTEGER NOT NULL DEFAULT 0,
			response     TEXT    NOT NULL DEFAULT 'null',
			actor        TEXT    NOT NULL DEFAULT ''
		)`,
		`CREATE INDEX commands_pending ON commands (robot_id, status)`,
	}},
	// control/telemetry owns these tables. Samples are derived
	// from TelemetryReported events (the cursor says how far), so they
	// can be rebuilt from the log; alerts holds the firing alerts.
	{5, "telemetry samples, aggregates, alerts", []string{
		`CREATE TABLE telemetry_raw (
			robot_id TEXT    NOT NULL,
			metric   TEXT    NOT NULL,
			t        INTEGER NOT NULL,
			value    REAL    NOT NULL
		)`,
		`CREATE INDEX telemetry_raw_by_series ON telemetry_raw (robot_id, metric, t)`,
		`CREATE INDEX telemetry_raw_by_time ON telemetry_raw (t)`,
		`CREATE TABLE telemetry_1m (
			robot_id TEXT    NOT NULL,
			metric   TEXT    NOT NULL,
			bucket   INTEGER NOT NULL,
			count    INTEGER NOT NULL,
			sum      REAL    NOT NULL,
			min      REAL    NOT NULL,
			max      REAL    NOT NULL,
			PRIMARY KEY (robot_id, metric, bucket)
		)`,
		`CREATE INDEX telemetry_1m_by_bucket ON telemetry_1m (bucket)`,
		`CREATE TABLE telemetry_1h (
			robot_id TEXT    NOT NULL,
			metric   TEXT    NOT NULL,
			bucket   INTEGER NOT NULL,
			count    INTEGER NOT NULL,
			sum      REAL    NOT NULL,
			min      REAL    NOT NULL,
			max      REAL    NOT NULL,
			PRIMARY KEY (robot_id, metric, bucket)
		)`,
		`CREATE INDEX telemetry_1h_by_bucket ON telemetry_1h (bucket)`,
		`CREATE TABLE telemetry_latest (
			robot_id TEXT    NOT NULL,
			metric   TEXT    NOT NULL,
			t        INTEGER NOT NULL,
			value    REAL    NOT NULL,
			PRIMARY KEY (robot_id, metric)
		)`,
		`CREATE TABLE telemetry_cursor (
			name TEXT PRIMARY KEY,
			seq  INTEGER NOT NULL
		)`,
		`CREATE TABLE alerts (
			robot_id TEXT    NOT NULL,
			rule     TEXT    NOT NULL,
			fired_at INTEGER NOT NULL,
			value    REAL    NOT NULL,
			PRIMARY KEY (robot_id, rule)
		)`,
	}},
	// Presence clustered by node. Every presence flush rewrites
	// the pages holding its robots, and dqlite ships and keeps (raft log)
	// each page a transaction wrote. With rows in connection order, a
	// node's robots were spread over the whole table and a 512-robot flush
	// wrote most of its pages; keyed by (node, robot_id) they sit together
	// and a sorted flush writes a few dozen. The unique index keeps one row
	// per robot (the upsert's conflict target); a last_seen update does
	// not touch it.
	{6, "presence clustered by node", []string{
		`CREATE TABLE presence_by_node (
			node           TEXT    NOT NULL,
			robot_id       TEXT    NOT NULL,
			last_seen      INTEGER NOT NULL,
			uptime_seconds REAL    NOT NULL,
			PRIMARY KEY (node, robot_id)
		) WITHOUT ROWID`,
		`INSERT INTO presence_by_node (node, robot_id, last_seen, uptime_seconds)
			SELECT node, robot_id, last_seen, uptime_seconds FROM presence`,
		`DROP TABLE presence`,
		`ALTER TABLE presence_by_node RENAME TO presence`,
		`CREATE UNIQUE INDEX presence_robot ON presence (robot_id)`,
	}},
	// Every member sweeps every few seconds, and the sweep read
	// each online robot's whole row (last_event sits after the JSON doc):
	// at 40,000 robots that scan was most of the leader's CPU. A covering
	// index answers it from (status, last_event, id) alone, and lets it
	// skip robots whose own last event is recent. robots_by_state (status,
	// id) replaces robots_by_status so that listing the robots in a state
	// (the offline alert, every 10 s) reads those robots in id order, not
	// every robot; it changes only when a robot's state does.
	{7, "robots indexes for the offline sweep and state listings", []string{
		`CREATE INDEX robots_sweep ON robots (status, last_event, id)`,
		`CREATE INDEX robots_by_state ON robots (status, id)`,
		`DROP INDEX robots_by_status`,
	}},
	// An alert rule asks, every 10 s on the leader, which robots
	// are above its threshold. telemetry_latest is keyed by robot, so that
	// was a scan of every robot's every metric per rule; by (metric,
	// value) it is a range of the few above.
	{8, "latest telemetry by value, for alert rules", []string{
		`CREATE INDEX telemetry_latest_by_value ON telemetry_latest (metric, value)`,
	}},
}

// migrate brings the schema to the newest version. Each step runs in its own
// transaction and records itself, so concurrent nodes starting together and
// restarts half way through are both safe: a step is applied exactly once.
func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	for _, m := range migrations {
		err := WithTx(ctx, db, func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			for _, stmt := range m.sql {
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return fmt.Errorf("%.60s…: %w", stmt, err)
				}
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return fmt.Errorf("schema migration %d (%s): %w", m.version, m.name, err)
		}
	}
	return nil
}

// SchemaVersion is the newest migration applied to the database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), nil
}
