package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/prometheus/client_golang/prometheus"
)

// Mode selects how the server answers.
type Mode string

const (
	// ModeProxy answers only Raspberry Pi PXE clients, without an address
	// (yiaddr 0): the network's DHCP server assigns addresses, we add the
	// boot options. Everything else is ignored (but still snooped).
	ModeProxy Mode = "proxy"
	// ModeFull assigns addresses from a pool to every client and adds the
	// boot options for Pi PXE clients.
	ModeFull Mode = "full"
)

// PXEPort is the PXE boot server port (proxyDHCP REQUESTs after the address
// is configured, PXE spec §2.2.3).
const PXEPort = 4011

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Interface is bound with SO_BINDTODEVICE; replies are broadcast on it.
	// Empty listens on all interfaces (broadcasts then follow the routing
	// table, so set it on a multi-homed station).
	Interface string
	// ServerIP is this station's address on Interface: option 54 (server
	// identifier) and, unless TFTPServer is set, option 66. Required.
	ServerIP netip.Addr
	// TFTPServer is option 66; default ServerIP.
	TFTPServer string
	// Mode defaults to ModeProxy.
	Mode Mode
	// Port is the DHCP server port; default 67.
	Port int
	// PXEPort additionally listens for proxyDHCP REQUESTs on this port
	// (normally PXEPort = 4011) in proxy mode; 0 disables it.
	PXEPort int

	// Full mode: the pool [PoolStart, PoolEnd], the mask, optional router
	// and DNS servers, the lease time (default 1 h) and the lease file
	// (empty keeps leases in memory only).
	PoolStart, PoolEnd netip.Addr
	SubnetMask         net.IPMask
	Router             netip.Addr
	DNS                []netip.Addr
	LeaseTime          time.Duration
	LeaseFile          string

	// EventQueue is the DeviceSeen queue length; default 1024. When it is
	// full new events are dropped and counted, and re-sent on the device's
	// next packet.
	EventQueue int
	// MaxDevices bounds the snooping table; the least recently seen device
	// is forgotten beyond it. Default 65536.
	MaxDevices int

	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// ListenPacket opens a server socket; default server4.NewIPv4UDPConn
	// (SO_BROADCAST, SO_REUSEADDR/PORT, SO_BINDTODEVICE). Tests replace it
	// to open the socket inside a network namespace.
	ListenPacket func(iface string, addr *net.UDPAddr) (net.PacketConn, error)
}

// DeviceSeen is one client observed on the network.
type DeviceSeen struct {
	MAC       string // aa:bb:cc:dd:ee:ff
	IsPi      bool
	Model     string // "Raspberry Pi 4B 8GB", "" when unknown
	Serial    string // 8 lowercase hex digits (the TFTP prefix), "" when unknown
	Revision  string // revision code in hex, "" when unknown
	FirstSeen time.Time
	LastSeen  time.Time
}

// Server is a running DHCP server. Create it with New, run it with Start (or
// Run), stop it with Close.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	events  chan DeviceSeen

	mu      sync.Mutex
	devices map[string]*device
	pool    *pool // nil in proxy mode

	servers []*server4.Server
	wg      sync.WaitGroup
	closed  bool
}

type device struct {
	seen     DeviceSeen
	reported DeviceSeen // last version delivered to the queue
	pending  bool       // a change not yet delivered (queue was full)
}

// New validates cfg, loads the lease file (full mode) and registers metrics.
// It does not open sockets.
func New(cfg Config) (*Server, error) {
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp: ServerIP %v must be this station's IPv4 address on the boot network", cfg.ServerIP)
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeProxy
	}
	if cfg.Mode != ModeProxy && cfg.Mode != ModeFull {
		return nil, fmt.Errorf("dhcp: mode %q: want %q or %q", cfg.Mode, ModeProxy, ModeFull)
	}
	if cfg.TFTPServer == "" {
		cfg.TFTPServer = cfg.ServerIP.String()
	}
	if cfg.Port == 0 {
		cfg.Port = dhcpv4.ServerPort
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.EventQueue <= 0 {
		cfg.EventQueue = 1024
	}
	if cfg.MaxDevices <= 0 {
		cfg.MaxDevices = 1 << 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func(iface string, addr *net.UDPAddr) (net.PacketConn, error) {
			return server4.NewIPv4UDPConn(iface, addr)
		}
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "dhcp", "mode", string(cfg.Mode)),
		events: make(chan DeviceSeen, cfg.EventQueue), devices: map[string]*device{}}
	if cfg.Mode == ModeFull {
		if cfg.SubnetMask == nil {
			return nil, errors.New("dhcp: full mode needs SubnetMask")
		}
		p, err := newPool(cfg.PoolStart, cfg.PoolEnd, cfg.ServerIP, cfg.LeaseFile)
		if err != nil {
			return nil, err
		}
		s.pool = p
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if s.pool != nil {
		s.metrics.leases.Set(float64(len(s.pool.byMAC)))
	}
	return s, nil
}

// Events delivers a DeviceSeen for every new device and whenever what we
// know about one changes (e.g. its serial appears). The channel is never
// closed; it is bounded, and the DHCP path never waits for a reader.
func (s *Server) Events() <-chan DeviceSeen { return s.events }

// Devices returns every device in the snooping table, oldest first.
func (s *Server) Devices() []DeviceSeen {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DeviceSeen, 0, len(s.devices))
	for _, d := range s.devices {
		out = append(out, d.seen)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].FirstSeen.Before(out[j].FirstSeen) })
	return out
}

// Leases returns the full-mode leases (nil in proxy mode).
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool == nil {
		return nil
	}
	return s.pool.list()
}

// Start opens the sockets and serves in the background until Close or ctx
// ends.
func (s *Server) Start(ctx context.Context) error {
	ports := []int{s.cfg.Port}
	if s.cfg.Mode == ModeProxy && s.cfg.PXEPort != 0 {
		ports = append(ports, s.cfg.PXEPort)
	}
	for _, port := range ports {
		addr := &net.UDPAddr{IP: net.IPv4zero, Port: port}
		conn, err := s.cfg.ListenPacket(s.cfg.Interface, addr)
		if err != nil {
			s.Close()
			return fmt.Errorf("dhcp: listening on %s port %d (needs root or CAP_NET_BIND_SERVICE, and no other DHCP server on it): %w", ifaceName(s.cfg.Interface), port, err)
		}
		port := port
		srv, err := server4.NewServer(s.cfg.Interface, addr, func(c net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
			s.handle(c, peer, m, port)
		}, server4.WithConn(conn))
		if err != nil {
			conn.Close()
			s.Close()
			return fmt.Errorf("dhcp: starting server on port %d: %w", port, err)
		}
		s.mu.Lock()
		s.servers = append(s.servers, srv)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("dhcp server stopped", "port", port, "err", err)
			}
		}()
	}
	s.log.Info("dhcp serving", "interface", ifaceName(s.cfg.Interface), "server_ip", s.cfg.ServerIP, "ports", ports)
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	return nil
}

// Run is Start, then wait for ctx, then Close.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// Close stops serving and waits for the listeners to return.
func (s *Server) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.closed = true
	s.mu.Unlock()
	for _, srv := range servers {
		srv.Close()
	}
	s.wg.Wait()
	return nil
}

func ifaceName(s string) string {
	if s == "" {
		return "all interfaces"
	}
	return s
}
