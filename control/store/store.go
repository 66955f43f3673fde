package store

import (
	"context"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	dqlitedriver "github.com/canonical/go-dqlite/driver"
)

// DatabaseName is the dqlite database holding all control state.
const DatabaseName = "heartbeat"

// DefaultRolesAdjustment is how often the leader rebalances roles. go-dqlite's
// own default (30 s) leaves a cluster with a single voter for up to half a
// minute after a member joins or leaves; a tick is one cluster query and a
// probe per member, cheap at three to five members.
const DefaultRolesAdjustment = 3 * time.Second

// MaxTxRetryTime bounds how long a transaction is retried on contention or
// a leader change when the caller's context has no earlier deadline.
const MaxTxRetryTime = 10 * time.Second

// Raft log retention defaults. dqlite's own (1,024 and 8,192) keep up to
// ~9,000 entries in memory, about 1 GiB on a busy node; a quarter of the
// trailing window costs a member that lags by more than ~2,000
// transactions a snapshot transfer instead.
const (
	DefaultSnapshotThreshold = 1024
	DefaultSnapshotTrailing  = 2048
)

// Options configure a store node.
type Options struct {
	// Dir holds this node's dqlite data (raft log, snapshots, identity).
	Dir string
	// Address is the host:port this node's dqlite listens on for peers.
	Address string
	// Join lists addresses of existing cluster members. Empty on the first
	// node; ignored once the node has joined (its membership is in Dir).
	Join []string
	// Logger receives dqlite's log lines. Nil means slog.Default().
	Logger *slog.Logger
	// RolesAdjustment is how often the leader rebalances voters and standbys.
	// Zero means DefaultRolesAdjustment.
	RolesAdjustment time.Duration
	// NetworkLatency is the expected one-way latency between members; raft
	// heartbeats and election timeouts scale with it. Zero keeps dqlite's
	// defaults (elections after 3 to 6 s).
	NetworkLatency time.Duration
	// SnapshotThreshold and SnapshotTrailing bound the raft log this node
	// keeps in memory: a snapshot after SnapshotThreshold entries, and
	// SnapshotTrailing entries kept behind it for members that lag (one
	// further behind gets the whole snapshot instead). Every entry holds the
	// pages its transaction wrote, so the log, not the database, dominates
	// a busy node's memory (docs/OPERATIONS.md). Zero takes
	// DefaultSnapshotThreshold and DefaultSnapshotTrailing; Trailing must not
	// be below Threshold.
	SnapshotThreshold, SnapshotTrailing uint64
	// ListenTLS and DialTLS, when set, make peer traffic mutual TLS
	// (node certificates from the fleet CA).
	ListenTLS, DialTLS *tls.Config
}

// Store is one control node's handle on the replicated state.
type Store struct {
	app *app.App
	db  *sql.DB
	log *slog.Logger
}

// snapshotParams applies the defaults and checks what dqlite would refuse
// with a bare "misuse".
func (o Options) snapshotParams() (dqlite.SnapshotParams, error) {
	p := dqlite.SnapshotParams{Threshold: o.SnapshotThreshold, Trailing: o.SnapshotTrailing}
	if p.Threshold == 0 {
		p.Threshold = DefaultSnapshotThreshold
	}
	if p.Trailing == 0 {
		p.Trailing = max(DefaultSnapshotTrailing, p.Threshold)
	}
	if p.Trailing < p.Threshold {
		return p, fmt.Errorf("store: snapshot trailing %d is below the snapshot threshold %d: keep at least as many entries as a snapshot covers", p.Trailing, p.Threshold)
	}
	return p, nil
}

// Open starts (or restarts) the local dqlite node, waits until it is part of
// a cluster with a leader, and migrates the schema.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("store: data directory is required")
	}
	if o.Address == "" {
		return nil, errors.New("store: dqlite address (host:port) is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(o.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", o.Dir, err)
	}
	log := o.Logger.With("component", "dqlite")
	opts := []app.Option{
		app.WithAddress(o.Address),
		app.WithLogFunc(func(l client.LogLevel, format string, a ...any) {
			level := slog.LevelDebug
			switch l {
			case client.LogWarn:
				level = slog.LevelWarn
			case client.LogError:
				level = slog.LevelError
			}
			log.Log(context.Background(), level, fmt.Sprintf(format, a...))
		}),
	}
	if len(o.Join) > 0 {
		opts = append(opts, app.WithCluster(o.Join))
	}
	if o.RolesAdjustment <= 0 {
		o.RolesAdjustment = DefaultRolesAdjustment
	}
	opts = append(opts, app.WithRolesAdjustmentFrequency(o.RolesAdjustment))
	if o.NetworkLatency > 0 {
		opts = append(opts, app.WithNetworkLatency(o.NetworkLatency))
	}
	snap, err := o.snapshotParams()
	if err != nil {
		return nil, err
	}
	opts = append(opts, app.WithSnapshotParams(snap))
	if o.ListenTLS != nil && o.DialTLS != nil {
		opts = append(opts, app.WithTLS(o.ListenTLS, o.DialTLS))
	}
	a, err := newApp(o, opts)
	if err != nil {
		return nil, fmt.Errorf("start dqlite node in %s at %s: %w (a data directory remembers its address: reuse the same --db-address)", o.Dir, o.Address, err)
	}
	if err := a.Ready(ctx); err != nil {
		a.Close()
		return nil, fmt.Errorf("dqlite node %s not ready (joining %v): %w", o.Address, o.Join, err)
	}
	db, err := a.Open(ctx, DatabaseName)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("open database %q: %w (no leader: is a majority of the cluster up?)", DatabaseName, err)
	}
	// dqlite serialises writes through the leader; a small pool is plenty
	// and bounds the connections each node holds to it.
	db.SetMaxOpenConns(16)
	// As many idle as open: with fewer, a burst of reads (a storm's hellos)
	// closes and reopens connections, each a TLS handshake with the leader.
	db.SetMaxIdleConns(16)
	s := &Store{app: a, db: db, log: o.Logger}
	if err := migrate(ctx, db); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close leaves the cluster gracefully (handing leadership over if this node
// holds it) and stops the local node.
func (s *Store) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dbErr := s.db.Close()
	if err := s.app.Handover(ctx); err != nil {
		s.log.Warn("dqlite handover failed; peers will elect a new leader after a timeout", "err", err)
	}
	appErr := s.app.Close()
	return errors.Join(dbErr, appErr)
}

// NodeID is this node's dqlite id.
func (s *Store) NodeID() uint64 { return s.app.ID() }

// Address is this node's dqlite address.
func (s *Store) Address() string { return s.app.Address() }

// DB exposes the database for packages that own their own tables.
func (s *Store) DB() *sql.DB { return s.db }

// Member is one node of the dqlite cluster.
type Member struct {
	ID      uint64 `json:"id"`
	Address string `json:"address"`
	Role    string `json:"role"`
}

// Cluster lists the members as the leader sees them, and the leader's address.
func (s *Store) Cluster(ctx context.Context) (leader string, members []Member, err error) {
	cli, err := s.app.Leader(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("find dqlite leader: %w", err)
	}
	defer cli.Close()
	nodes, err := cli.Cluster(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("list dqlite members: %w", err)
	}
	info, err := cli.Leader(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("ask dqlite leader: %w", err)
	}
	for _, n := range nodes {
		members = append(members, Member{ID: n.ID, Address: n.Address, Role: n.Role.String()})
	}
	if info != nil {
		leader = info.Address
	}
	return leader, members, nil
}

// IsLeader reports whether this node is the dqlite leader now. It asks the
// leader (a round trip), so bound ctx; an error means the cluster could not
// say (no leader elected, no quorum), and callers treat it as not leading.
func (s *Store) IsLeader(ctx context.Context) (bool, error) {
	leader, _, err := s.Cluster(ctx)
	if err != nil {
		return false, err
	}
	return leader == s.Address(), nil
}

// Ping checks that the database answers a query (a leader exists and is
// reachable from this node).
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("database query failed: %w", err)
	}
	return nil
}

// WithTx runs fn in a transaction on db, retrying the whole transaction
// when the failure is one a new attempt can fix (leadership moved, database
// busy) until ctx's deadline or MaxTxRetryTime, whichever comes first.
// Packages that own tables in the store's database (DB) write through it
// too, so every writer waits its turn the same way. fn may run more than
// once, so it must keep no effects outside tx; an error it returns that is
// not transient ends the retries and is returned as is.
func WithTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	// Writers on different nodes meet on the leader, where SQLite answers a
	// second writer "database is locked" at once rather than queueing it.
	// A fixed number of retries starved the API's writes while two busy
	// gateways kept committing (seen with 1,000 robots), so retry until the
	// caller's deadline (MaxTxRetryTime without one), with short jittered
	// waits that give every writer its turn.
	deadline := time.Now().Add(MaxTxRetryTime)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var err error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			wait := min(2*time.Millisecond<<min(attempt, 6), 100*time.Millisecond)
			wait = wait/2 + rand.N(wait)
			if time.Now().Add(wait).After(deadline) {
				return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
			}
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(wait):
			}
		}
		err = runTx(ctx, db, fn)
		if err == nil || !retryable(err) {
			return err
		}
	}
}

// lockForWrite makes tx the database's one writer before it reads
// anything. Transactions begin deferred and take the write lock at their
// first write; Append reads (resent events, robots) before it writes, so a
// writer that lost the race to another node found out only after those
// reads, on the leader, and WithTx ran them all again. With four gateways
// committing during a reconnect storm most of the leader's work was such
// wasted attempts. The statement changes nothing, so a transaction that
// writes nothing else commits no frames.
func lockForWrite(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `UPDATE schema_migrations SET version = version WHERE 0`); err != nil {
		return fmt.Errorf("take the write lock: %w", err)
	}
	return nil
}

// ErrRolledBack marks the error of a transaction that failed before its
// commit: nothing of it was written, so running it again cannot apply it
// twice. (An error of the commit itself is not marked: the leader may
// have committed it.)
var ErrRolledBack = errors.New("transaction rolled back")

// rolledBack is a transaction error marked ErrRolledBack, worded as the
// error itself.
type rolledBack struct{ err error }

func (e rolledBack) Error() string   { return e.err.Error() }
func (e rolledBack) Unwrap() []error { return []error{e.err, ErrRolledBack} }

// Transient reports whether err may go away on its own (a busy or
// changing leader, a lost connection, a deadline), so that the same write
// is worth trying again later.
func Transient(err error) bool {
	return retryable(err) || errors.Is(err, context.DeadlineExceeded)
}

func runTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return rolledBack{fmt.Errorf("begin transaction: %w", err)}
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return rolledBack{err}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// retryable reports whether err is transient in a replicated database.
func retryable(err error) bool {
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, dqlitedriver.ErrNoAvailableLeader) {
		return true
	}
	msg := err.Error()
	// "no available dqlite leader" is go-dqlite's wording of
	// ErrNoAvailableLeader (during an election), for when the chain does
	// not unwrap to it.
	for _, s := range []string{"database is locked", "not leader", "leadership lost", "no available leader", "no available dqlite leader", "checkpoint in progress", "bad connection", "SQLITE_BUSY"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// appNew serialises app.New calls that set SNAP_INSTANCE_NAME (see newApp):
// the variable is process-wide and read inside app.New.
var appNew sync.Mutex

// newApp starts the go-dqlite app. With TLS, go-dqlite binds the local
// dqlite engine to the abstract Unix socket "@dqlite-<node id>", and the
// first node of every cluster has the same id (dqlite.BootstrapID): two
// clusters' first nodes in one network namespace (two test clusters, or a
// witness host that also bootstrapped a lab cluster) collide with "failed to
// set bind address". The only knob go-dqlite 1.11 offers on that name is
// SNAP_INSTANCE_NAME (meant for snap confinement: the socket becomes
// "@snap.<name>.dqlite-<id>"), so it is set to a name derived from this
// node's address, unique in the namespace because the address is bound too.
func newApp(o Options, opts []app.Option) (*app.App, error) {
	if o.ListenTLS == nil {
		return app.New(o.Dir, opts...)
	}
	appNew.Lock()
	defer appNew.Unlock()
	prev, had := os.LookupEnv("SNAP_INSTANCE_NAME")
	name := "lekiwi-" + strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return '_'
	}, o.Address)
	if had && prev != "" {
		name = prev + "." + name // inside a snap: keep its prefix
	}
	os.Setenv("SNAP_INSTANCE_NAME", name)
	defer func() {
		if had {
			os.Setenv("SNAP_INSTANCE_NAME", prev)
		} else {
			os.Unsetenv("SNAP_INSTANCE_NAME")
		}
	}()
	return app.New(o.Dir, opts...)
}
