package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a hub. Zero values take the defaults noted.
type Options struct {
	// QueueLimit is how many normal and bulk frames may wait for one
	// client before it is switched to latest-only delivery (default 256).
	QueueLimit int
	// CriticalLimit is how many critical frames may wait for one client;
	// a client that falls that far behind is disconnected rather than lose
	// a safety alert silently (default 1024).
	CriticalLimit int
	// MaxClients bounds concurrent subscribers (default 1000).
	MaxClients int
	// MaxSubscriptions bounds subscriptions per client (default 32).
	MaxSubscriptions int
	// Tick is how often throttled subscriptions deliver what their
	// interval held back (default 50 ms).
	Tick time.Duration
	// LaterQueue bounds messages handed to PublishLater and not yet
	// fanned out (default 8192); beyond it they are shed and counted.
	LaterQueue int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the hub's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() {
	if o.QueueLimit <= 0 {
		o.QueueLimit = 256
	}
	if o.CriticalLimit <= 0 {
		o.CriticalLimit = 1024
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 1000
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = 32
	}
	if o.Tick <= 0 {
		o.Tick = 50 * time.Millisecond
	}
	if o.LaterQueue <= 0 {
		o.LaterQueue = 8192
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Hub fans published messages out to subscribed clients. Publish never
// blocks on a client: each client has bounded queues and, when it cannot
// keep up, keeps only the newest message per topic.
type Hub struct {
	o   Options
	log *slog.Logger
	m   *metrics

	mu      sync.RWMutex
	clients map[*Client]struct{}
	closed  bool

	// later holds PublishLater's messages for Run's goroutine.
	later chan func() Message
}

// NewHub makes a hub; call Run to drive throttled deliveries.
func NewHub(o Options) *Hub {
	o.setDefaults()
	return &Hub{o: o, log: o.Logger.With("component", "stream"), m: newMetrics(o.Registerer), clients: map[*Client]struct{}{},
		later: make(chan func() Message, o.LaterQueue)}
}

// ErrTooManyClients is returned by Attach when the hub is full.
var ErrTooManyClients = errors.New("too many stream subscribers on this control node; try another node or later")

// ErrClosed is returned once the hub or client was closed.
var ErrClosed = errors.New("stream closed")

// Attach registers a new client.
func (h *Hub) Attach() (*Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if len(h.clients) >= h.o.MaxClients {
		return nil, ErrTooManyClients
	}
	c := &Client{hub: h, wake: make(chan struct{}, 1), done: make(chan struct{}),
		latest: [2]map[string]frame{{}, {}}}
	h.clients[c] = struct{}{}
	h.m.clients.Set(float64(len(h.clients)))
	return c, nil
}

func (h *Hub) detach(c *Client) {
	h.mu.Lock()
	delete(h.clients, c)
	h.m.clients.Set(float64(len(h.clients)))
	h.mu.Unlock()
}

// Clients is the number of attached clients.
func (h *Hub) Clients() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// Publish offers m to every client. It does not block on slow clients.
func (h *Hub) Publish(m Message) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if len(h.clients) == 0 {
		return
	}
	p, err := prepare(m)
	if err != nil {
		h.log.Warn("message not published", "err", err)
		return
	}
	h.m.published.WithLabelValues(m.Priority.String()).Inc()
	now := h.o.Now()
	for c := range h.clients {
		c.offer(p, now)
	}
}

// PublishLater queues a bulk message for Run's goroutine to build and
// publish, and reports whether it was queued: when LaterQueue messages
// already wait it is shed (counted in lekiwi_control_stream_shed_total).
//
// It is for hot paths whose latency robots feel: the gateway acknowledges
// a heartbeat on the goroutine that read it, and fanning that heartbeat
// out to a hundred dashboards there (matching, throttling and framing it
// for each) put the dashboards' cost on every robot's ack. build runs on
// the hub's goroutine, so it may encode; it must not block.
func (h *Hub) PublishLater(build func() Message) bool {
	select {
	case h.later <- build:
		return true
	default:
		h.m.shed.Inc()
		return false
	}
}

// Run delivers throttled messages whose interval ended, every Tick, and
// publishes what PublishLater queued, until ctx ends; then it closes every
// client.
func (h *Hub) Run(ctx context.Context) error {
	t := time.NewTicker(h.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.close()
			return ctx.Err()
		case <-t.C:
			h.tick(h.o.Now())
		case build := <-h.later:
			h.Publish(build())
		}
	}
}

func (h *Hub) tick(now time.Time) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.clients {
		c.tick(now)
	}
}

func (h *Hub) close() {
	h.mu.Lock()
	h.closed = true
	clients := make([]*Client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.mu.Unlock()
	for _, c := range clients {
		c.fail(ErrClosed)
	}
}

// Subscription is what a client asked for.
type Subscription struct {
	// ID names the subscription in its frames; chosen by the client.
	ID string `json:"id"`
	// Topics are patterns ("robot.*.heartbeat", "alert.>"); at least one.
	Topics []string `json:"topics"`
	// Robots, when set, keep only messages about these robots.
	Robots []string `json:"robots,omitempty"`
	// Kinds, when set, keep only messages of these kinds (robot event kinds
	// such as teleop.started, or log event types such as RobotOffline).
	Kinds    []string `json:"kinds,omitempty"`
	Throttle Throttle `json:"throttle,omitzero"`
}

// Subscription limits.
const (
	MaxTopicsPerSubscription = 16
	MaxFilterValues          = 1000
	MaxSubscriptionIDLen     = 64
)

type subscription struct {
	id       string
	idJSON   []byte
	patterns []Pattern
	robots   map[string]struct{}
	kinds    map[string]struct{}
	throttle *throttler // nil: unthrottled
}

func compile(s Subscription) (*subscription, error) {
	if s.ID == "" || len(s.ID) > MaxSubscriptionIDLen {
		return nil, fmt.Errorf("subscription id must be 1-%d characters", MaxSubscriptionIDLen)
	}
	if len(s.Topics) == 0 || len(s.Topics) > MaxTopicsPerSubscription {
		return nil, fmt.Errorf("subscription %q: need 1-%d topics, got %d", s.ID, MaxTopicsPerSubscription, len(s.Topics))
	}
	if len(s.Robots) > MaxFilterValues || len(s.Kinds) > MaxFilterValues {
		return nil, fmt.Errorf("subscription %q: at most %d robots and %d kinds", s.ID, MaxFilterValues, MaxFilterValues)
	}
	if err := s.Throttle.validate(); err != nil {
		return nil, fmt.Errorf("subscription %q: %w", s.ID, err)
	}
	id, _ := json.Marshal(s.ID)
	sub := &subscription{id: s.ID, idJSON: id}
	for _, t := range s.Topics {
		p, err := ParsePattern(t)
		if err != nil {
			return nil, fmt.Errorf("subscription %q: %w", s.ID, err)
		}
		sub.patterns = append(sub.patterns, p)
	}
	sub.robots = set(s.Robots)
	sub.kinds = set(s.Kinds)
	if s.Throttle.Rate > 0 {
		sub.throttle = newThrottler(s.Throttle)
	}
	return sub, nil
}

func set(values []string) map[string]struct{} {
	if len(values) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(values))
	for _, v := range values {
		m[v] = struct{}{}
	}
	return m
}

func (s *subscription) matches(p *published) bool {
	if s.robots != nil {
		if _, ok := s.robots[p.RobotID]; !ok {
			return false
		}
	}
	if s.kinds != nil {
		if _, ok := s.kinds[p.Kind]; !ok {
			return false
		}
	}
	for _, pat := range s.patterns {
		for _, t := range p.topics {
			if pat.Match(t) {
				return true
			}
		}
	}
	return false
}

// frame is one encoded frame waiting for a client's writer.
type frame struct {
	data  []byte
	pri   Priority
	topic string
	sub   string // subscription id; with topic, the key latest-only delivery keeps
}

// Client is one subscriber: its subscriptions and what waits to be sent.
type Client struct {
	hub  *Hub
	wake chan struct{} // one pending wake-up for Next
	done chan struct{} // closed by fail

	mu       sync.Mutex
	subs     []*subscription
	critical []frame
	queue    [2][]frame          // by priority: bulk, normal
	latest   [2]map[string]frame // latest-only mode: sub+topic → newest frame, by priority
	lagging  bool
	replies  [][]byte // answers to the client's requests, after critical frames
	notice   []byte   // lagging notice, after replies
	dropped  uint64   // frames replaced while lagging
	err      error
}

// Subscribe adds or replaces (same id) a subscription.
func (c *Client) Subscribe(s Subscription) error {
	sub, err := compile(s)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if i := slices.IndexFunc(c.subs, func(x *subscription) bool { return x.id == s.ID }); i >= 0 {
		c.subs[i] = sub
		return nil
	}
	if len(c.subs) >= c.hub.o.MaxSubscriptions {
		return fmt.Errorf("subscription %q: a client may hold at most %d subscriptions; unsubscribe one first", s.ID, c.hub.o.MaxSubscriptions)
	}
	c.subs = append(c.subs, sub)
	return nil
}

// Unsubscribe removes a subscription; frames of it already queued are
// still delivered. It reports whether the id existed.
func (c *Client) Unsubscribe(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.subs)
	c.subs = slices.DeleteFunc(c.subs, func(x *subscription) bool { return x.id == id })
	return len(c.subs) != n
}

// Close detaches the client from the hub.
func (c *Client) Close() { c.fail(ErrClosed) }

// Done is closed when the client was closed or failed; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the client ended (nil while it runs).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.critical, c.queue, c.latest = nil, [2][]frame{}, [2]map[string]frame{}
	close(c.done)
	c.mu.Unlock()
	c.hub.detach(c)
}

func (c *Client) offer(p *published, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	for _, s := range c.subs {
		if !s.matches(p) {
			continue
		}
		// Critical messages are never throttled.
		if s.throttle != nil && p.Priority != Critical && !s.throttle.offer(p, now) {
			continue
		}
		c.enqueue(frame{data: p.frameFor(s.idJSON), pri: p.Priority, topic: p.Topic, sub: s.id})
	}
}

func (c *Client) tick(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	for _, s := range c.subs {
		if s.throttle == nil {
			continue
		}
		for _, f := range s.throttle.flush(now, s.idJSON) {
			f.sub = s.id
			c.enqueue(f)
		}
	}
}

// enqueue adds f under c.mu. A client whose queue is full switches to
// latest-only delivery: what is queued is folded into a map keeping the
// newest frame per subscription and topic, so memory stays bounded by the
// number of topics, not by how far behind the client is.
func (c *Client) enqueue(f frame) {
	switch {
	case f.pri == Critical:
		if len(c.critical) >= c.hub.o.CriticalLimit {
			c.hub.m.disconnected.Inc()
			go c.fail(fmt.Errorf("client did not read %d critical messages; disconnected so it reconnects instead of missing alerts", len(c.critical)))
			return
		}
		c.critical = append(c.critical, f)
	case c.lagging:
		c.keepLatest(f)
	case len(c.queue[Bulk])+len(c.queue[Normal]) >= c.hub.o.QueueLimit:
		c.lagging = true
		c.hub.m.lagging.Inc()
		for _, q := range c.queue {
			for _, old := range q {
				c.keepLatest(old)
			}
		}
		c.queue = [2][]frame{}
		c.keepLatest(f)
		c.notice = []byte(`{"type":"lagging","message":"this client reads slower than messages arrive: until it catches up it gets only the newest message per topic"}`)
	default:
		c.queue[f.pri] = append(c.queue[f.pri], f)
	}
	c.hub.m.queued.Inc()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// maxReplies bounds answers waiting for a client that sends requests but
// does not read.
const maxReplies = 64

// reply queues the answer to a request.
func (c *Client) reply(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if len(c.replies) >= maxReplies {
		return fmt.Errorf("%d answers to requests are unread; read the stream", maxReplies)
	}
	c.replies = append(c.replies, b)
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *Client) keepLatest(f frame) {
	key := f.sub + "\x00" + f.topic
	m := c.latest[f.pri]
	if _, ok := m[key]; ok {
		c.dropped++
		c.hub.m.coalesced.Inc()
	}
	m[key] = f
}

// Next returns the next frame to send: critical first, then normal, then
// bulk. It blocks until one is there, the client ends or ctx ends.
func (c *Client) Next(ctx context.Context) ([]byte, error) {
	for {
		if f, ok, err := c.pop(); ok || err != nil {
			return f, err
		}
		select {
		case <-c.wake:
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *Client) pop() ([]byte, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, false, c.err
	}
	if len(c.critical) > 0 {
		f := c.critical[0]
		c.critical[0] = frame{}
		c.critical = c.critical[1:]
		return f.data, true, nil
	}
	if len(c.replies) > 0 {
		r := c.replies[0]
		c.replies = c.replies[1:]
		return r, true, nil
	}
	if c.notice != nil {
		n := c.notice
		c.notice = nil
		return n, true, nil
	}
	for _, pri := range []Priority{Normal, Bulk} {
		if q := c.queue[pri]; len(q) > 0 {
			f := q[0]
			q[0] = frame{}
			c.queue[pri] = q[1:]
			return f.data, true, nil
		}
	}
	for _, pri := range []Priority{Normal, Bulk} {
		for k, f := range c.latest[pri] {
			delete(c.latest[pri], k)
			return f.data, true, nil
		}
	}
	if c.lagging {
		c.lagging = false
		n := fmt.Appendf(nil, `{"type":"caught_up","replaced":%d}`, c.dropped)
		c.dropped = 0
		return n, true, nil
	}
	return nil, false, nil
}

// pending is how many frames wait for the client (tests, metrics).
func (c *Client) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.critical) + len(c.queue[Bulk]) + len(c.queue[Normal]) + len(c.latest[Bulk]) + len(c.latest[Normal])
}

type metrics struct {
	clients      prometheus.Gauge
	published    *prometheus.CounterVec
	queued       prometheus.Counter
	coalesced    prometheus.Counter
	lagging      prometheus.Counter
	disconnected prometheus.Counter
	shed         prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lekiwi_control_stream_clients", Help: "Connected /v1/stream subscribers."}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lekiwi_control_stream_published_total",
			Help: "Messages published to the stream hub while it had subscribers, by priority."}, []string{"priority"}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_stream_frames_total", Help: "Frames queued for subscribers."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_stream_coalesced_total",
			Help: "Frames replaced by a newer one of the same topic because the subscriber was too slow."}),
		lagging: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_stream_lagging_total",
			Help: "Times a subscriber fell behind and was switched to latest-only delivery."}),
		disconnected: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_stream_slow_disconnects_total",
			Help: "Subscribers disconnected because they did not read critical messages."}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_stream_shed_total",
			Help: "Live messages (heartbeats) not published because the hub's queue was full: dashboards cost more than the node can spare."}),
	}
	if r != nil {
		r.MustRegister(m.clients, m.published, m.queued, m.coalesced, m.lagging, m.disconnected, m.shed)
	}
	return m
}
