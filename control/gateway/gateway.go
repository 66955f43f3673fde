package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// Config tunes a gateway. Zero values take the defaults noted.
type Config struct {
	// NodeID names this control node in events and hello replies.
	NodeID string
	// HeartbeatInterval is what robots are told to use (default 30 s).
	HeartbeatInterval time.Duration
	// OfflineGrace is added to 1.5 heartbeat intervals before a silent robot
	// is declared offline (default 15 s).
	OfflineGrace time.Duration
	// FlushInterval is how often presence is written to the store and the
	// offline sweep runs (default: a third of the offline timeout, at most 5 s).
	FlushInterval time.Duration
	// HelloTimeout bounds the wait for a new connection's hello (default 10 s).
	HelloTimeout time.Duration
	// MaxBatch caps events per transaction (default and maximum
	// store.MaxAppendBatch).
	MaxBatch int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the gateway's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CA verifies robot certificates and signs renewals. Nil is the
	// --insecure development mode: no client certificates, robot ids taken
	// from hello as claimed.
	CA *pki.CA
	// RobotCertLifetime is a renewed certificate's validity (default 90 d).
	RobotCertLifetime time.Duration
	// CommitTimeout bounds one append transaction (default 5 s). A commit
	// that times out is not acknowledged; robots resend and duplicates are
	// recognised by their sequence numbers.
	CommitTimeout time.Duration
	// StoreProbeInterval is how often the store's reachability is checked
	// (default 1 s).
	StoreProbeInterval time.Duration
	// ShedAfter is how long the store may stay unreachable before robots
	// are sent to other nodes (default 6 s: longer than a leader election,
	// so a failover alone does not move robots).
	ShedAfter time.Duration
	// OnHeartbeat, when set, sees every accepted heartbeat (control/stream
	// publishes them live; heartbeats are not in the event log). It is
	// called on the session's reader and must not block.
	OnHeartbeat func(robotID string, receivedAt time.Time, hb protocol.Heartbeat)
}

func (c *Config) setDefaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.OfflineGrace <= 0 {
		c.OfflineGrace = 15 * time.Second
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = min(c.OfflineTimeout()/3, 5*time.Second)
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 10 * time.Second
	}
	if c.MaxBatch <= 0 || c.MaxBatch > store.MaxAppendBatch {
		c.MaxBatch = store.MaxAppendBatch
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RobotCertLifetime <= 0 {
		c.RobotCertLifetime = 90 * 24 * time.Hour
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 5 * time.Second
	}
	if c.StoreProbeInterval <= 0 {
		c.StoreProbeInterval = time.Second
	}
	if c.ShedAfter <= 0 {
		c.ShedAfter = 6 * time.Second
	}
}

// OfflineTimeout is how long a robot may stay silent before it is declared
// offline: 1.5 heartbeat intervals plus the grace.
func (c Config) OfflineTimeout() time.Duration {
	return c.HeartbeatInterval*3/2 + c.OfflineGrace
}

// Gateway accepts robot connections and feeds the store.
type Gateway struct {
	cfg     Config
	store   *store.Store
	log     *slog.Logger
	metrics *metrics
	commits chan commitReq
	// again is the batch to try again first (committer only): its
	// transaction was rolled back, first at againSince.
	again      []commitReq
	againSince time.Time
	// loopCtx is commitLoop's context (committer only; nil until it runs):
	// jobs run under a deadline of their own, the robot batches they
	// commit in between do not.
	loopCtx context.Context
	pending chan *session // hellos waiting for their outstanding commands

	mu       sync.Mutex
	sessions map[string]*session // by robot id
	closing  bool
	wg       sync.WaitGroup // sessions

	revMu   sync.RWMutex
	revoked map[string]time.Time // robot id → revocation time
	audit   *rate.Limiter        // budget for AccessDenied records

	fenced atomic.Bool // store unreachable: robots are sent elsewhere

	started time.Time // the offline sweep waits one timeout after it
}

// New creates a gateway over st.
func New(st *store.Store, cfg Config) (*Gateway, error) {
	if st == nil {
		return nil, errors.New("gateway: store is required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("gateway: node id is required")
	}
	cfg.setDefaults()
	return &Gateway{
		cfg:      cfg,
		store:    st,
		log:      cfg.Logger.With("component", "gateway", "node", cfg.NodeID),
		metrics:  newMetrics(cfg.Registerer),
		commits:  make(chan commitReq, 4096),
		pending:  make(chan *session, 4096),
		sessions: map[string]*session{},
		revoked:  map[string]time.Time{},
		audit:    rate.NewLimiter(20, 100),
		started:  cfg.Now(),
	}, nil
}

// Config returns the effective configuration (defaults filled in).
func (g *Gateway) Config() Config { return g.cfg }

// Run drives the committer and the presence loops until ctx ends.
func (g *Gateway) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(6)
	go func() { defer wg.Done(); g.pendingLoop(ctx) }()
	go func() { defer wg.Done(); g.watchStore(ctx) }()
	go func() { defer wg.Done(); g.commitLoop(ctx) }()
	go func() { defer wg.Done(); g.presenceLoop(ctx) }()
	go func() { defer wg.Done(); g.watchRevocations(ctx) }()
	go func() { defer wg.Done(); g.watchCommands(ctx) }()
	wg.Wait()
	return nil
}

// Connected is the number of robot sessions on this node.
func (g *Gateway) Connected() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sessions)
}

// Shutdown closes every session with "going away" so robots reconnect to
// another node, records their disconnection and flushes presence.
func (g *Gateway) Shutdown(ctx context.Context) {
	g.mu.Lock()
	g.closing = true
	sessions := make([]*session, 0, len(g.sessions))
	for _, s := range g.sessions {
		sessions = append(sessions, s)
	}
	g.mu.Unlock()
	for _, s := range sessions {
		s.close(protocol.CloseGoingAway, "control node shutting down; reconnect to another")
	}
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	// Runs after the sessions' disconnect events, which are queued ahead.
	g.do(ctx, func(ctx context.Context) { g.flushPresence(ctx, sessions) })
}

// connectEvent is the RobotConnected event of a session.
func (g *Gateway) connectEvent(s *session, at time.Time) store.Event {
	data, _ := json.Marshal(s.connected)
	return store.Event{RobotID: s.robotID, Type: store.TypeRobotConnected, Time: at.UTC(), Data: data,
		Actor: "robot:" + s.robotID, CorrelationID: s.id}
}

// ServeHTTP upgrades a robot's request to a WebSocket session.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	closing := g.closing
	if !closing {
		g.wg.Add(1)
	}
	g.mu.Unlock()
	if closing {
		http.Error(w, "control node shutting down", http.StatusServiceUnavailable)
		return
	}
	// The connection holds an admission slot until its hello is answered
	// (or refused): that bounds handshakes and hellos in flight in a
	// reconnect storm (control/admission).
	adm := admission.FromContext(r.Context())
	handedOff := false
	defer func() {
		if !handedOff {
			adm.Admit()
			g.wg.Done()
		}
	}()
	if g.refuseFenced(w) {
		return
	}
	certRobot, certSerial, ok := g.peerIdentity(w, r)
	if !ok {
		return
	}
	hj := &leanHijacker{ResponseWriter: w}
	conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		g.log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(protocol.MaxFrameBytes)
	s := newSession(g, conn, r.RemoteAddr)
	s.raw = hj.conn
	s.idle = newIdleWaiter(hj.conn, hj.br)
	s.certRobotID, s.certSerial = certRobot, certSerial
	s.admission = adm
	// The session runs on a goroutine of its own so that this handler
	// returns: net/http then drops its per-connection state (request,
	// headers, buffers) and the goroutine whose stack grew during the TLS
	// handshake. Sessions end on close, not on the request's context, which
	// net/http cancels when this handler returns.
	handedOff = true
	go func() {
		defer g.wg.Done()
		g.metrics.connections.Inc()
		defer g.metrics.connections.Dec()
		s.serve(context.Background())
	}()
}

// attach makes s the robot's session, closing an older one on this node.
func (g *Gateway) attach(s *session) bool {
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		return false
	}
	old := g.sessions[s.robotID]
	g.sessions[s.robotID] = s
	g.mu.Unlock()
	if old != nil {
		old.close(protocol.ClosePolicyViolation, "replaced by a newer connection of the same robot")
	}
	return true
}

func (g *Gateway) detach(s *session) {
	g.mu.Lock()
	if g.sessions[s.robotID] == s {
		delete(g.sessions, s.robotID)
	}
	g.mu.Unlock()
}

// attached reports whether s is still the robot's session here.
func (g *Gateway) attached(s *session) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sessions[s.robotID] == s
}

func (g *Gateway) snapshot() []*session {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*session, 0, len(g.sessions))
	for _, s := range g.sessions {
		out = append(out, s)
	}
	return out
}

// presenceLoop flushes last-seen times, closes sessions gone silent, and
// sweeps robots no node has heard from to offline.
func (g *Gateway) presenceLoop(ctx context.Context) {
	t := time.NewTicker(g.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.do(ctx, g.presenceTick)
	}
}

// presenceTick runs on the committer: close silent sessions, flush
// presence, sweep silent robots offline, revive wrongly swept ones.
func (g *Gateway) presenceTick(ctx context.Context) {
	now := g.cfg.Now()
	timeout := g.cfg.OfflineTimeout()
	sessions := g.snapshot()
	for _, s := range sessions {
		if now.Sub(s.heard()) > timeout {
			s.close(protocol.ClosePolicyViolation, fmt.Sprintf("no message for %s (heartbeat interval %s)", timeout, g.cfg.HeartbeatInterval))
		}
	}
	g.flushPresence(ctx, sessions)
	// A node that just started sweeps nothing for one offline timeout:
	// the robots that were connected to it are coming back, and marking
	// them offline only for their hello to mark them online again doubled
	// a restart storm's writes. Other members keep sweeping meanwhile.
	if now.Sub(g.started) >= timeout {
		if err := g.sweep(ctx, now, timeout); err != nil {
			g.log.Warn("offline sweep failed; will retry", "err", err)
			return
		}
	}
	g.revive(ctx, now, sessions)
	if n, err := g.store.CountRobots(ctx, store.StateOnline); err == nil {
		g.metrics.robotsOnline.Set(float64(n))
	}
}

// sweep marks silent robots offline one transaction at a time, and
// between transactions commits the robot messages waiting: a sweep of
// thousands (a site that lost power) must not hold every hello and ack of
// this node behind it. It runs on the committer.
func (g *Gateway) sweep(ctx context.Context, now time.Time, timeout time.Duration) error {
	for {
		gone, more, err := g.store.SweepOfflineBatch(ctx, now.Add(-timeout), now, timeout)
		for _, id := range gone {
			g.log.Info("robot offline", "robot", id, "timeout", timeout)
		}
		if err != nil || !more {
			return err
		}
		g.commitWaiting(ctx)
	}
}

// commitWaiting commits what is queued for the committer now, up to
// waitingBatches transactions, without waiting for more. Called on the
// committer itself, between the transactions of its own long jobs: robot
// messages (a storm's hellos) go first, four batches to one of the job's.
func (g *Gateway) commitWaiting(ctx context.Context) {
	// Robot messages get their own commit timeout, not what is left of
	// the job's deadline: cut short by it, their batches failed without
	// a retry and closed their sessions (seen in a 50,000-robot storm,
	// when the offline sweep of a restarted member's robots ran long).
	if g.loopCtx != nil {
		ctx = g.loopCtx
	}
	for range waitingBatches {
		batch := g.takeWaiting(g.takeAgain(make([]commitReq, 0, g.cfg.MaxBatch)))
		if len(batch) == 0 {
			return
		}
		g.commit(ctx, batch)
	}
}

// waitingBatches is how many batches of robot messages commitWaiting lets
// through between two transactions of a presence tick.
const waitingBatches = 4

// revive records as connected again the robots this node still hears from
// that some node's sweep marked offline — which happens when presence could
// not be flushed within the timeout (a slow or partitioned database).
func (g *Gateway) revive(ctx context.Context, now time.Time, sessions []*session) {
	timeout := g.cfg.OfflineTimeout()
	live := map[string]*session{}
	ids := make([]string, 0, len(sessions))
	for _, s := range sessions {
		// A session whose connection record is still queued is left to
		// that record: reviving it too would write the robot twice.
		if now.Sub(s.heard()) <= timeout && s.isRecorded.Load() {
			live[s.robotID] = s
			ids = append(ids, s.robotID)
		}
	}
	if len(ids) == 0 {
		return
	}
	offline, err := g.store.OfflineAmong(ctx, ids)
	if err != nil {
		g.log.Warn("cannot check connected robots against the projection; will retry", "err", err)
		return
	}
	// In batches between the waiting commits, like the sweep: after a
	// storm this can be thousands of robots.
	for len(offline) > 0 {
		chunk := offline[:min(len(offline), g.cfg.MaxBatch)]
		offline = offline[len(chunk):]
		events := make([]store.Event, 0, len(chunk))
		for _, id := range chunk {
			events = append(events, g.connectEvent(live[id], now))
		}
		if _, err := g.store.Append(ctx, events); err != nil {
			g.log.Warn("cannot record robots online again; will retry", "robots", len(chunk), "first", chunk[0], "err", err)
			return
		}
		for _, id := range chunk {
			g.log.Info("robot marked offline while connected here; recorded online again", "robot", id, "session", live[id].id)
		}
		g.commitWaiting(ctx)
	}
}

func (g *Gateway) flushPresence(ctx context.Context, sessions []*session) {
	batch := make([]store.Presence, 0, len(sessions))
	for _, s := range sessions {
		if p, ok := s.presenceSinceFlush(); ok {
			batch = append(batch, p)
		}
	}
	// In slices between the waiting commits: 19,000 robots are dozens
	// of transactions that hellos should not wait behind. Sorted first, so
	// each slice is a run of neighbouring rows.
	store.SortPresence(batch)
	const slice = 512
	for len(batch) > 0 {
		part := batch[:min(len(batch), slice)]
		batch = batch[len(part):]
		if err := g.store.FlushPresence(ctx, part); err != nil {
			g.log.Warn("presence flush failed; will retry with newer times", "robots", len(part)+len(batch), "err", err)
			for _, s := range sessions {
				s.unflush()
			}
			return
		}
		if len(batch) > 0 {
			g.commitWaiting(ctx)
		}
	}
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// capabilities this node offers robots.
func (g *Gateway) capabilities() []string {
	caps := []string{protocol.CapTelemetry, protocol.CapEvents, protocol.CapCommands, protocol.CapQueue}
	if g.cfg.CA != nil {
		caps = append(caps, protocol.CapRenew)
	}
	return caps
}
