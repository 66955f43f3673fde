package robotsim

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
)

// FleetOptions describe a simulated fleet. Each robot is the real agent
// runtime with its own on-disk queue and fixture /proc tree, connected over
// a real socket.
type FleetOptions struct {
	Robots int
	// FirstIndex numbers the robots from here, so several fleets (one per
	// process or per control node) have distinct ids.
	FirstIndex int
	Servers    []string // control base URLs
	Dir        string   // per-robot state and fixtures go under Dir/<robot id>
	// Sync makes queues fsync like a real robot (slow with many robots).
	Sync bool
	// Telemetry sampling and debounce (defaults: 1 s and 2 s; labs compress time).
	TelemetrySampleInterval time.Duration
	TelemetryMinInterval    time.Duration
	// SharedBoard gives the whole fleet one fixture board, sampled at most
	// once per TelemetrySampleInterval; each robot keeps its own hardware
	// (serial) and network identity (hostname, MAC, address), taken from
	// its Board without files. Scale runs: tens of thousands of robots each
	// with a /proc tree of their own measure the simulator's file reads and
	// the kernel's inode cache (gigabytes at 50,000), not control.
	SharedBoard bool
	// MemoryIdentity keeps the robots' keys and certificates in memory only
	// (no identity directory per robot); renewals cannot be saved.
	MemoryIdentity bool
	// FirstReconnectJitter and Backoff default to short lab values.
	FirstReconnectJitter time.Duration
	Backoff              backoff.Policy
	// OnAck, if set, sees every acknowledged sequence of every robot.
	OnAck  func(robot *Robot, seq uint64, t protocol.Type, latency time.Duration)
	Logger *slog.Logger
	Seed   uint64
	// CA, when set, gives every robot a key and a certificate signed by it
	// (as if enrolled) and connects with mTLS; servers must then be https.
	CA *pki.CA
	// CertLifetime of the simulated robots' certificates (default 90 days).
	CertLifetime time.Duration
	// Now is the robots' clock (renewal tests move it forward).
	Now func() time.Time
	// NoResumption disables TLS session resumption (benchmark baseline).
	NoResumption bool
	// LocalAddr, when valid, is the source address of every connection
	// (e.g. 127.0.0.3): each source address has its own ephemeral port
	// range, so scale runs spread tens of thousands of robots over several.
	LocalAddr netip.Addr
}

// Fleet is a set of simulated robots.
type Fleet struct {
	robots []*Robot
	shared *sharedSampler // with SharedBoard
}

// Robot is one simulated robot.
type Robot struct {
	ID    string
	Type  protocol.RobotType
	Board lab.Board

	dir   string
	roots collect.Roots
	opts  *FleetOptions
	seed  uint64

	identity *identity.Identity
	shared   *sharedSampler // nil: the robot samples its own board

	mu     sync.Mutex
	agent  *agent.Agent
	queue  *queue.Queue
	cancel context.CancelFunc
	done   chan error
}

// RobotID names the i-th simulated robot: every third is an XLE.
func RobotID(i int) (string, protocol.RobotType) {
	if i%3 == 2 {
		return fmt.Sprintf("xle-%05d", i), protocol.RobotXLE
	}
	return fmt.Sprintf("lekiwi-%05d", i), protocol.RobotLeKiwi
}

// NewFleet prepares the robots (fixture trees, state directories) without
// starting them.
func NewFleet(o FleetOptions) (*Fleet, error) {
	if o.Robots <= 0 || len(o.Servers) == 0 || o.Dir == "" {
		return nil, errors.New("fleet: robots > 0, at least one server and a directory are required")
	}
	if o.TelemetrySampleInterval == 0 {
		o.TelemetrySampleInterval = time.Second
	}
	if o.TelemetryMinInterval == 0 {
		o.TelemetryMinInterval = 2 * time.Second
	}
	if o.FirstReconnectJitter == 0 {
		o.FirstReconnectJitter = 500 * time.Millisecond
	}
	if o.Backoff == (backoff.Policy{}) {
		o.Backoff = backoff.Policy{Base: 100 * time.Millisecond, Cap: 2 * time.Second}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{}
	for i := o.FirstIndex; i < o.FirstIndex+o.Robots; i++ {
		id, typ := RobotID(i)
		r := &Robot{ID: id, Type: typ, Board: lab.Pi5(i, id), dir: filepath.Join(o.Dir, id), opts: &o, seed: o.Seed + uint64(i)}
		switch {
		case !o.SharedBoard:
			roots, err := r.Board.WriteTree(filepath.Join(r.dir, "board"))
			if err != nil {
				return nil, err
			}
			r.roots = roots
		case f.shared == nil:
			roots, err := r.Board.WriteTree(filepath.Join(o.Dir, "shared-board"))
			if err != nil {
				return nil, err
			}
			f.shared = &sharedSampler{every: o.TelemetrySampleInterval, base: newSimCollector(roots, r.interfaces())}
		}
		r.shared = f.shared
		if o.CA != nil {
			idDir := filepath.Join(r.dir, "identity")
			if o.MemoryIdentity {
				idDir = ""
			}
			var err error
			if r.identity, err = NewIdentity(o.CA, id, o.CertLifetime, idDir); err != nil {
				return nil, err
			}
		}
		f.robots = append(f.robots, r)
	}
	return f, nil
}

// Robots lists the fleet.
func (f *Fleet) Robots() []*Robot { return f.robots }

// Start starts every robot, spreading connections over spread so the
// control node sees a ramp rather than a single burst.
func (f *Fleet) Start(ctx context.Context, spread time.Duration) error {
	for i, r := range f.robots {
		if err := r.Start(ctx); err != nil {
			return err
		}
		if spread > 0 && len(f.robots) > 1 {
			time.Sleep(spread / time.Duration(len(f.robots)-1) * time.Duration(min(i, 1)))
		}
	}
	return nil
}

// Stop stops every robot (in parallel) and returns the first error.
func (f *Fleet) Stop() error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.robots))
	for i, r := range f.robots {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = r.Stop() }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Connected counts robots whose agent is in state Connected.
func (f *Fleet) Connected() int {
	n := 0
	for _, r := range f.robots {
		if r.State() == agent.Connected {
			n++
		}
	}
	return n
}

// Start opens the robot's queue and runs its agent until Stop.
func (r *Robot) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agent != nil {
		return fmt.Errorf("robot %s already running", r.ID)
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return fmt.Errorf("robot %s state dir: %w", r.ID, err)
	}
	q, err := queue.Open(filepath.Join(r.dir, "queue.db"), queue.Options{NoSync: !r.opts.Sync})
	if err != nil {
		return fmt.Errorf("robot %s queue: %w", r.ID, err)
	}
	var col agent.Collector
	var hw protocol.Hardware
	if r.shared != nil {
		col, hw = &sharedSample{shared: r.shared, net: r.network()}, r.Board.Hardware()
	} else {
		col = newSimCollector(r.roots, r.interfaces())
		if hw, err = collect.ReadHardware(r.roots); err != nil {
			q.Close()
			return fmt.Errorf("robot %s hardware: %w", r.ID, err)
		}
	}
	opts := agent.Options{
		RobotID: r.ID, RobotType: r.Type, Servers: r.opts.Servers, Queue: q, Collector: col,
		Hardware: hw, AgentVersion: "sim",
		TelemetrySampleInterval: r.opts.TelemetrySampleInterval, TelemetryMinInterval: r.opts.TelemetryMinInterval,
		FirstReconnectJitter: r.opts.FirstReconnectJitter, Backoff: r.opts.Backoff,
		Rand:   rand.New(rand.NewPCG(r.seed, 0x5eed)),
		Logger: r.opts.Logger,
	}
	if r.identity != nil {
		opts.HTTPClient = r.identity.HTTPClient()
		if r.opts.NoResumption {
			cfg := r.identity.TLSConfig()
			cfg.ClientSessionCache = nil
			opts.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		}
		opts.Identity = r.identity
	}
	if r.opts.LocalAddr.IsValid() {
		opts.HTTPClient = bindSource(opts.HTTPClient, r.opts.LocalAddr)
	}
	if r.opts.Now != nil {
		opts.Now = r.opts.Now
	}
	if r.opts.OnAck != nil {
		opts.OnAck = func(seq uint64, t protocol.Type, latency time.Duration) { r.opts.OnAck(r, seq, t, latency) }
	}
	a, err := agent.New(opts)
	if err != nil {
		q.Close()
		return fmt.Errorf("robot %s: %w", r.ID, err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	r.agent, r.queue, r.cancel, r.done = a, q, cancel, make(chan error, 1)
	go func() { r.done <- a.Run(runCtx) }()
	return nil
}

// Stop ends the robot's agent and closes its queue; its state stays on
// disk so Start continues where it left off (like a reboot).
func (r *Robot) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agent == nil {
		return nil
	}
	r.cancel()
	err := <-r.done
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	err = errors.Join(err, r.queue.Close())
	r.agent, r.queue = nil, nil
	return err
}

// Emit queues an event on the robot (durably; sent when connected).
func (r *Robot) Emit(ctx context.Context, ev protocol.Event) error {
	r.mu.Lock()
	a := r.agent
	r.mu.Unlock()
	if a == nil {
		return fmt.Errorf("robot %s is stopped", r.ID)
	}
	return a.Emit(ctx, ev)
}

// State is the agent's state (Stopped when not running).
func (r *Robot) State() agent.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agent == nil {
		return agent.Stopped
	}
	return r.agent.State()
}

// Stats returns the agent's counters (zero when stopped).
func (r *Robot) Stats() agent.Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agent == nil {
		return agent.Stats{}
	}
	return r.agent.Stats()
}

// bindSource returns c (or a default client) dialing from addr.
func bindSource(c *http.Client, addr netip.Addr) *http.Client {
	t := &http.Transport{}
	if c != nil {
		if ct, ok := c.Transport.(*http.Transport); ok {
			t = ct.Clone()
		}
	}
	t.DialContext = sourceDialer(addr).DialContext
	return &http.Client{Transport: t}
}

// sourceDialer dials TCP from addr.
func sourceDialer(addr netip.Addr) *net.Dialer {
	return &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)), Timeout: 10 * time.Second, Control: bindAddressNoPort}
}

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket about to be
// bound to a source address: the kernel then picks the port at connect,
// per destination, instead of at bind, where it searched the address's
// whole port table for one free of every binding. With 12,500 robots per
// source address that search (inet_csk_get_port, inet_bhash2_conflict)
// was a quarter of a simulator's CPU in a reconnect storm.
func bindAddressNoPort(network, _ string, c syscall.RawConn) error {
	if network != "tcp4" && network != "tcp" {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_BIND_ADDRESS_NO_PORT: %w", serr)
	}
	return nil
}

// newSimCollector reads a fixture board with a fixed disk and the given
// interfaces.
func newSimCollector(roots collect.Roots, ifs staticInterfaces) *collect.Collector {
	return collect.New(collect.Options{
		Roots: roots,
		Statfs: func(string) (collect.DiskUsage, error) {
			return collect.DiskUsage{TotalBytes: 64 << 30, UsedBytes: 9 << 30}, nil
		},
		Interfaces: ifs,
	})
}

// interfaces is the robot's one network interface, its MAC and address
// derived from its seed.
func (r *Robot) interfaces() staticInterfaces {
	ip := netip.AddrFrom4([4]byte{10, 42, byte(r.seed >> 8), byte(r.seed)})
	return staticInterfaces{{Name: "eth0", MAC: fmt.Sprintf("2c:cf:67:%02x:%02x:%02x", byte(r.seed>>16), byte(r.seed>>8), byte(r.seed)), IPs: []netip.Addr{ip}}}
}

// network is what the robot's telemetry says about its network, as its own
// board would report it.
func (r *Robot) network() protocol.Network {
	mac, ips := collect.Addresses(r.interfaces())
	return protocol.Network{Hostname: r.Board.Hostname, MAC: mac, IPs: ips}
}

// sharedSampler is one board's telemetry, sampled at most once per every,
// for a whole simulated fleet (FleetOptions.SharedBoard).
type sharedSampler struct {
	every time.Duration
	base  agent.Collector

	mu  sync.Mutex
	at  time.Time
	t   protocol.Telemetry
	err error
}

func (s *sharedSampler) sample(ctx context.Context) (protocol.Telemetry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || time.Since(s.at) >= s.every {
		s.t, s.err = s.base.Sample(ctx)
		s.at = time.Now()
	}
	return s.t, s.err
}

// sharedSample is one robot's view of a sharedSampler: the shared
// resources with the robot's own network identity.
type sharedSample struct {
	shared *sharedSampler
	net    protocol.Network
}

func (s *sharedSample) Sample(ctx context.Context) (protocol.Telemetry, error) {
	t, err := s.shared.sample(ctx)
	t.Network = s.net
	return t, err
}

type staticInterfaces []collect.Interface

func (s staticInterfaces) Interfaces() ([]collect.Interface, error) { return s, nil }

// NewIdentity gives a simulated robot what enrollment would: a key made
// for it and a certificate from the fleet CA, saved in dir (kept in memory
// only when dir is empty).
func NewIdentity(ca *pki.CA, robotID string, lifetime time.Duration, dir string) (*identity.Identity, error) {
	if dir != "" {
		if id, err := identity.Load(dir); err == nil {
			return id, nil
		}
	}
	key, csr, err := identity.NewKeyAndCSR(robotID)
	if err != nil {
		return nil, err
	}
	certPEM, _, err := ca.SignRobot(csr, robotID, lifetime, time.Now())
	if err != nil {
		return nil, fmt.Errorf("sign certificate of simulated robot %s: %w", robotID, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	id, err := identity.FromPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), certPEM, ca.CertPEM)
	if err != nil || dir == "" {
		return id, err
	}
	if err := id.Save(dir); err != nil {
		return nil, err
	}
	return identity.Load(dir)
}

// Identity is the robot's identity (nil without a CA).
func (r *Robot) Identity() *identity.Identity { return r.identity }
