// Package admission bounds the connections a control node has accepted but
// not yet admitted: the TLS handshake, the HTTP request and, for a robot,
// the hello.
//
// A control node restarted under 19,000 robots sees all of them come back
// within the agents' reconnect jitter. Accepting them all at once runs
// thousands of handshakes and hellos side by side; each one progresses
// slowly, robots give up at their handshake timeout and retry (wasting the
// work done so far), and the node's own database traffic starves behind
// them. A bound on admissions in flight keeps the rest of the storm in the
// kernel's accept queue, where waiting costs the node nothing, and lets
// every admitted connection finish at full speed: a bounded queue in front
// of a fixed number of workers, not thousands of workers thrashing.
//
// The listener also bounds connections open at once (Options.MaxOpen): a
// process has a fixed number of file descriptors, and a node that spends
// them all on robots cannot open its own database connections — the
// failure that turned a 19,000-robot storm into a collapse (EMFILE on the
// dqlite dial, failed appends, sessions closed, more reconnects).
//
// While every slot is taken, connections wait in the kernel's accept queue,
// but not for long: one that has queued longer than Options.MaxQueueWait
// is reset without a handshake (shed). Its robot would otherwise wait out
// most of its handshake timeout in the queue and then give up — time in
// which it could have reached another control node with room. A reset
// fails its attempt at once, and the agent moves on to its next server.
// The queue is first in, first out, so shedding from its head keeps every
// connection still queued younger than MaxQueueWait (the idea of CoDel:
// bound the time in queue, not its length).
//
// Listener.Accept takes a slot for each connection it returns; the slot
// returns when the connection is admitted (Conn.Admit, called by the
// gateway after hello and by the HTTP layer for API requests), when it
// closes, or after Options.PendingTimeout, so a client that stalls
// mid-handshake cannot hold a slot for long.
package admission

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Defaults for Options fields left zero.
const (
	// DefaultMaxPending admissions in flight. An admission holds its slot
	// through the TLS handshake (the robot's round trips and its own CPU,
	// a Pi signs in it) and its hello (the record of the connection is
	// not waited for). By Little's law a node
	// admitting ~1,600 robots/s, the handshake capacity of 2 cores, needs
	// that many times the admission time in flight: 512 allows 0.3 s each.
	// The bound is against tens of thousands at once, not against hundreds.
	DefaultMaxPending = 512
	// DefaultPendingTimeout is longer than a robot's handshake timeout
	// (10 s): a connection that has not been admitted by then has given up.
	DefaultPendingTimeout = 15 * time.Second
	// DefaultMaxQueueWait is under a third of a robot's handshake timeout
	// (10 s for dial, TLS, hello and its reply): a robot shed then still
	// has most of that time for another server, and one admitted then
	// still has time to finish.
	DefaultMaxQueueWait = 3 * time.Second
)

// Options tune a Listener.
type Options struct {
	MaxPending     int
	PendingTimeout time.Duration
	// MaxQueueWait bounds the time a connection waits in the kernel's
	// accept queue while every slot is taken; older ones are shed.
	MaxQueueWait time.Duration
	// MaxOpen bounds connections open at once, admitted or not (0: no
	// bound). ReserveFor derives it from the process's file limit.
	MaxOpen int
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// Listener wraps a TCP listener with the admission bound.
type Listener struct {
	net.Listener
	o       Options
	slots   chan struct{}
	closed  chan struct{}
	closeMu sync.Once
	held    atomic.Int64
	open    chan struct{} // nil without MaxOpen

	openGauge prometheus.Gauge
	openFull  prometheus.Counter
	abandoned prometheus.Counter
	shed      prometheus.Counter

	pending prometheus.Gauge
	waits   prometheus.Counter
	expired prometheus.Counter
}

// NewListener bounds the admissions of ln.
func NewListener(ln net.Listener, o Options) *Listener {
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.PendingTimeout <= 0 {
		o.PendingTimeout = DefaultPendingTimeout
	}
	if o.MaxQueueWait <= 0 {
		o.MaxQueueWait = DefaultMaxQueueWait
	}
	l := &Listener{
		Listener: ln, o: o, slots: make(chan struct{}, o.MaxPending), closed: make(chan struct{}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lekiwi_control_admission_pending",
			Help: "Connections accepted and not yet admitted (TLS handshake, request, robot hello)."}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_admission_full_total",
			Help: "Connections accepted while every admission slot was taken, which waited for one (a reconnect storm: the rest queue in the kernel)."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_admission_expired_total",
			Help: "Connections whose admission slot was returned after the pending timeout (stalled clients)."}),
	}
	l.openGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "lekiwi_control_admission_open",
		Help: "Connections open on the listener (robots, API, dashboards)."})
	l.openFull = prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_admission_open_full_total",
		Help: "Times the listener stopped accepting because max open connections were reached (the rest of the file descriptors are the database's)."})
	l.abandoned = prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_admission_abandoned_total",
		Help: "Queued connections whose client had already given up when accepted; closed without a handshake."})
	l.shed = prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_admission_shed_total",
		Help: "Connections reset without a handshake because every admission slot was taken and they had queued longer than the max queue wait (their robots try another server)."})
	if o.MaxOpen > 0 {
		l.open = make(chan struct{}, o.MaxOpen)
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(l.pending, l.waits, l.expired, l.openGauge, l.openFull, l.abandoned, l.shed)
	}
	return l
}

// ReserveFor is the MaxOpen that leaves reserve file descriptors of a
// process limited to limit (RLIMIT_NOFILE) for everything but the
// listener's connections: database connections, raft peers, log and
// registry files. At least 1.
func ReserveFor(limit uint64, reserve int) int {
	if limit > 1<<30 {
		limit = 1 << 30
	}
	return max(1, int(limit)-reserve)
}

// Accept waits until fewer than MaxOpen connections are open, then for a
// connection and a free admission slot; connections that queue longer than
// MaxQueueWait for a slot meanwhile are shed.
func (l *Listener) Accept() (net.Conn, error) {
	if l.open != nil {
		if err := l.take(l.open, l.openFull); err != nil {
			return nil, err
		}
	}
	for {
		c, err := l.acceptLive()
		if err != nil {
			l.closeOne()
			return nil, err
		}
		admitted, err := l.slotFor(c)
		if err != nil {
			c.Close()
			l.closeOne()
			return nil, err
		}
		if admitted {
			return l.pendingConn(c), nil
		}
		l.shed.Inc()
		reset(c)
	}
}

// slotFor takes an admission slot for c, waiting while every slot is taken
// until c has been queued for MaxQueueWait (counting its time in the
// kernel's queue). It reports false when c waited too long.
func (l *Listener) slotFor(c net.Conn) (bool, error) {
	select {
	case l.slots <- struct{}{}:
		return true, nil
	default:
	}
	l.waits.Inc()
	left := l.o.MaxQueueWait - queuedFor(c)
	if left <= 0 {
		return false, nil
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true, nil
	case <-t.C:
		return false, nil
	case <-l.closed:
		return false, net.ErrClosed
	}
}

// pendingConn wraps c, which holds a slot, until it is admitted.
func (l *Listener) pendingConn(c net.Conn) *Conn {
	l.openGauge.Inc()
	l.held.Add(1)
	l.pending.Inc()
	ac := &Conn{Conn: c, l: l}
	ac.mu.Lock()
	ac.timer = time.AfterFunc(l.o.PendingTimeout, func() {
		if ac.admit() {
			l.expired.Inc()
		}
	})
	ac.mu.Unlock()
	return ac
}

// queuedFor is how long c's peer has been silent: for a connection just
// accepted, the time since its client's first bytes (a TLS ClientHello
// follows the TCP handshake at once) or, if it sent none, since it was
// established — its time in the accept queue. 0 when it cannot tell.
func queuedFor(c net.Conn) time.Duration {
	var ms uint32
	withTCPInfo(c, func(info *unix.TCPInfo) { ms = info.Last_data_recv })
	return time.Duration(ms) * time.Millisecond
}

// reset closes c with a TCP reset rather than a FIN: its client learns at
// once that this attempt failed, and no TIME_WAIT is left behind.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// acceptLive accepts the next connection whose client is still there. In a
// storm, robots that waited in the accept queue longer than their handshake
// timeout have closed their end; their connection is still queued, and a
// TLS handshake with it (key exchange, signature) is work for nobody —
// measured as most of a starved node's handshake CPU. Such a connection is
// in CLOSE_WAIT when accepted, so it is closed without a handshake.
func (l *Listener) acceptLive() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !peerClosed(c) {
			return c, nil
		}
		l.abandoned.Inc()
		c.Close()
	}
}

// peerClosed reports whether the peer of a TCP connection has already
// closed its side (state CLOSE_WAIT). Anything it cannot tell is "no".
func peerClosed(c net.Conn) bool {
	closed := false
	withTCPInfo(c, func(info *unix.TCPInfo) { closed = info.State == tcpCloseWait })
	return closed
}

// withTCPInfo calls f with c's TCP_INFO; not at all when c is no TCP socket
// or the kernel does not answer.
func withTCPInfo(c net.Conn, f func(*unix.TCPInfo)) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			f(info)
		}
	})
}

// tcpCloseWait is Linux's TCP_CLOSE_WAIT (include/net/tcp_states.h).
const tcpCloseWait = 8

// closeOne returns an open-connection slot.
func (l *Listener) closeOne() {
	if l.open != nil {
		<-l.open
	}
}

// take puts a token into sem, counting in full each time it has to wait
// for room; it gives up when the listener closes.
func (l *Listener) take(sem chan struct{}, full prometheus.Counter) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	full.Inc()
	select {
	case sem <- struct{}{}:
		return nil
	case <-l.closed:
		return net.ErrClosed
	}
}

// Close stops Accept, including one waiting for a slot.
func (l *Listener) Close() error {
	l.closeMu.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Pending is the number of accepted connections holding a slot.
func (l *Listener) Pending() int { return int(l.held.Load()) }

// Conn is an accepted connection; it holds a slot until admitted or closed.
type Conn struct {
	net.Conn
	l     *Listener
	once  sync.Once
	shut  sync.Once
	mu    sync.Mutex // timer: set after AfterFunc returns, read by its callback
	timer *time.Timer
}

// Admit returns the connection's slot; later calls do nothing. A nil Conn
// is allowed (a connection that did not come through a Listener).
func (c *Conn) Admit() {
	if c != nil {
		c.admit()
	}
}

// admit reports whether this call returned the slot.
func (c *Conn) admit() (did bool) {
	c.once.Do(func() {
		c.mu.Lock()
		c.timer.Stop()
		c.mu.Unlock()
		c.l.held.Add(-1)
		c.l.pending.Dec()
		<-c.l.slots
		did = true
	})
	return did
}

// Close returns the slots the connection holds and closes it.
func (c *Conn) Close() error {
	c.admit()
	err := c.Conn.Close()
	c.shut.Do(func() {
		c.l.openGauge.Dec()
		c.l.closeOne()
	})
	return err
}

// SyscallConn is the socket's, so that code holding this Conn can still
// wait on the file descriptor (the gateway's idle waiter parks idle robots
// in the netpoller that way instead of in a deep read).
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("admission: %T has no file descriptor", c.Conn)
	}
	return sc.SyscallConn()
}

type connKey struct{}

// ConnContext is an http.Server ConnContext: it records the connection so
// that handlers can admit it (FromContext).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if ac, ok := c.(*Conn); ok {
		return context.WithValue(ctx, connKey{}, ac)
	}
	return ctx
}

// FromContext is the request's admission connection, or nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

// AdmitRequests admits the connection of every request that reaches next:
// for everything but the robots' endpoint, getting a request through is
// the admission.
func AdmitRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		FromContext(r.Context()).Admit()
		next.ServeHTTP(w, r)
	})
}
