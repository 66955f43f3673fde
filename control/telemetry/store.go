package telemetry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// Retention is how long each resolution is kept.
type Retention struct {
	Raw    time.Duration `yaml:"raw"`
	Minute time.Duration `yaml:"minute"`
	Hour   time.Duration `yaml:"hour"`
}

// DefaultRetention keeps raw samples 1 h, 1-minute aggregates 7 days and
// 1-hour aggregates 90 days.
func DefaultRetention() Retention {
	return Retention{Raw: time.Hour, Minute: 7 * 24 * time.Hour, Hour: 90 * 24 * time.Hour}
}

// Validate checks that each resolution is kept at least as long as the
// finer one and at least one of its buckets.
func (r Retention) Validate() error {
	switch {
	case r.Raw <= 0:
		return fmt.Errorf("telemetry retention: raw %s must be positive", r.Raw)
	case r.Minute < r.Raw || r.Minute < time.Minute:
		return fmt.Errorf("telemetry retention: minute aggregates (%s) must be kept at least as long as raw samples (%s) and at least 1m", r.Minute, r.Raw)
	case r.Hour < r.Minute || r.Hour < time.Hour:
		return fmt.Errorf("telemetry retention: hour aggregates (%s) must be kept at least as long as minute aggregates (%s) and at least 1h", r.Hour, r.Minute)
	}
	return nil
}

// Transaction sizes. libdqlite 1.11.1 corrupted the database on large
// transactions (see store.MaxAppendBatch); these keep every telemetry
// transaction to a few tens of kilobytes of row data.
const (
	// DefaultIngestBatch is the most telemetry events one ingest
	// transaction carries: up to 4 samples each, so at most 128 raw rows
	// plus as many aggregate and latest-value upserts.
	DefaultIngestBatch = 32
	// DefaultPruneBatch is the most rows one prune transaction deletes
	// (rows are ~50 bytes; a robot document of the failing 512-event batch
	// was ~1.8 KB).
	DefaultPruneBatch = 512
	// maxParams is dqlite 1.11's limit of bind parameters per statement.
	maxParams = 255
)

// Options tune a Store.
type Options struct {
	// Now is the clock (default time.Now).
	Now       func() time.Time
	Logger    *slog.Logger
	Retention Retention // zero: DefaultRetention
	// IngestBatch and PruneBatch cap rows per transaction (defaults above).
	IngestBatch int
	PruneBatch  int
	// MaxEventsPerRun bounds one Ingest call (default 20,000); the next
	// call continues where it stopped.
	MaxEventsPerRun int
	// Submit, if set, runs each write transaction — for a node that routes
	// every write through one committer goroutine. Nil runs them directly.
	Submit func(ctx context.Context, write func(context.Context) error) error
}

// Store is the telemetry history on top of the control store.
type Store struct {
	st  *store.Store
	db  *sql.DB
	o   Options
	log *slog.Logger
}

// New returns the telemetry store of st.
func New(st *store.Store, o Options) (*Store, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Retention == (Retention{}) {
		o.Retention = DefaultRetention()
	}
	if err := o.Retention.Validate(); err != nil {
		return nil, err
	}
	if o.IngestBatch <= 0 {
		o.IngestBatch = DefaultIngestBatch
	}
	if o.IngestBatch > store.MaxAppendBatch {
		return nil, fmt.Errorf("telemetry ingest batch %d is above %d events, unsafe with libdqlite 1.11", o.IngestBatch, store.MaxAppendBatch)
	}
	if o.PruneBatch <= 0 {
		o.PruneBatch = DefaultPruneBatch
	}
	if o.MaxEventsPerRun <= 0 {
		o.MaxEventsPerRun = 20_000
	}
	return &Store{st: st, db: st.DB(), o: o, log: o.Logger}, nil
}

// write runs one write transaction, through Submit when set.
func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error) error {
	w := func(ctx context.Context) error { return store.WithTx(ctx, s.db, fn) }
	if s.o.Submit != nil {
		return s.o.Submit(ctx, w)
	}
	return w(ctx)
}

// Cursor is the sequence of the last event ingested.
func (s *Store) Cursor(ctx context.Context) (int64, error) {
	var seq int64
	err := s.db.QueryRowContext(ctx, `SELECT seq FROM telemetry_cursor WHERE name = 'ingest'`).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read telemetry ingest cursor: %w", err)
	}
	return seq, nil
}
