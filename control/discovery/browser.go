package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/lekiwi/heartbeat/internal/mdnssock"
	"github.com/lekiwi/heartbeat/protocol"
)

// Discovered is a robot seen on the network.
type Discovered struct {
	Instance string             // DNS-SD instance, e.g. "xle-7._xle._tcp.local."
	RobotID  string             // TXT "id", else the instance label
	Type     protocol.RobotType // from the service type
	Host     string             // SRV target, e.g. "xle-7.local."
	Addr     netip.Addr         // an IPv4 address of Host
	Port     int                // SRV port
	TXT      map[string]string  // all TXT pairs (keys lowercase); "agent" and "os" carry versions
	Seen     time.Time          // when a record of the instance last arrived
	Gone     bool               // the robot said goodbye or its records expired
}

// AgentVersion and OSVersion return the versions from the TXT record.
func (d Discovered) AgentVersion() string { return d.TXT[keyAgentVersion] }
func (d Discovered) OSVersion() string    { return d.TXT[keyOSVersion] }

// DefaultMaxQueryInterval is the longest pause between browse queries once
// the back-off (1 s, 2 s, 4 s, …) reaches it.
const DefaultMaxQueryInterval = time.Minute

// Config says what to browse and where to report.
type Config struct {
	// Types to browse; default LeKiwi and XLE.
	Types []protocol.RobotType
	// Interfaces to browse on, by name; default every up, multicast,
	// non-loopback interface with an IPv4 address.
	Interfaces []string
	// MaxQueryInterval caps the query back-off; default
	// DefaultMaxQueryInterval.
	MaxQueryInterval time.Duration
	// OnChange is called from Run's goroutine when a robot is first
	// complete (SRV, TXT and address known), when its address, port or TXT
	// change, and when it is gone. It must not block for long.
	OnChange func(Discovered)
	Logger   *slog.Logger
}

// Browser finds robots on the local network; see the package comment.
type Browser struct {
	types    map[string]protocol.RobotType // "_xle._tcp.local." → xle
	ifaces   []net.Interface
	mcast    *ipv4.PacketConn // port 5353, in the group
	legacy   *ipv4.PacketConn // ephemeral port
	maxEvery time.Duration
	onChange func(Discovered)
	log      *slog.Logger

	mu    sync.Mutex // guards state for Snapshot; Run's goroutine is the only writer
	state *cache
}

// New binds the browser's sockets on the chosen interfaces (all socket work
// happens here, in the caller's network namespace). Call Run to browse.
func New(cfg Config) (*Browser, error) {
	ifaces, err := mdnssock.Interfaces(cfg.Interfaces)
	if err != nil {
		return nil, err
	}
	b := newBrowser(cfg)
	b.ifaces = ifaces
	if b.mcast, err = mdnssock.Listen(ifaces); err != nil {
		return nil, err
	}
	if b.legacy, err = listenLegacy(); err != nil {
		b.mcast.Close()
		return nil, err
	}
	return b, nil
}

// newBrowser is the socket-less part of New, for tests of the logic.
func newBrowser(cfg Config) *Browser {
	types := cfg.Types
	if len(types) == 0 {
		types = []protocol.RobotType{protocol.RobotLeKiwi, protocol.RobotXLE}
	}
	b := &Browser{
		types:    make(map[string]protocol.RobotType),
		maxEvery: cfg.MaxQueryInterval,
		onChange: cfg.OnChange,
		log:      cfg.Logger,
		state:    newCache(),
	}
	for _, t := range types {
		b.types["_"+string(t)+"._tcp.local."] = t
	}
	if b.maxEvery <= 0 {
		b.maxEvery = DefaultMaxQueryInterval
	}
	if b.onChange == nil {
		b.onChange = func(Discovered) {}
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.log = b.log.With("component", "discovery")
	return b
}

// Snapshot returns the robots currently known with complete records.
func (b *Browser) Snapshot() []Discovered {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Discovered
	for _, in := range b.state.instances {
		if d, ok := b.state.discovered(in); ok {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(x, y Discovered) int { return strings.Compare(x.Instance, y.Instance) })
	return out
}

// packet is a received message and the socket it came from.
type packet struct {
	msg    *dns.Msg
	from   *net.UDPAddr
	legacy bool
}

// Run browses until ctx ends, then closes the sockets.
func (b *Browser) Run(ctx context.Context) error {
	packets := make(chan packet, 64)
	var wg sync.WaitGroup
	for _, c := range []struct {
		conn   *ipv4.PacketConn
		legacy bool
	}{{b.mcast, false}, {b.legacy, true}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.read(ctx, c.conn, c.legacy, packets)
		}()
	}
	defer func() {
		b.mcast.Close()
		b.legacy.Close()
		wg.Wait()
	}()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	every := time.Second
	nextQuery := time.Now()
	first := true
	for {
		now := time.Now()
		if !now.Before(nextQuery) {
			b.sendBrowseQuery(now, first)
			first = false
			nextQuery = now.Add(every)
			every = min(2*every, b.maxEvery)
		}
		b.sweep(now)
		select {
		case <-ctx.Done():
			return nil
		case p := <-packets:
			b.handle(p, time.Now())
		case <-tick.C:
		}
	}
}

func (b *Browser) read(ctx context.Context, conn *ipv4.PacketConn, legacy bool, out chan<- packet) {
	buf := make([]byte, 9000)
	for {
		n, _, src, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		udp, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		msg := new(dns.Msg)
		if err := msg.Unpack(buf[:n]); err != nil {
			b.log.Debug("mDNS packet does not parse", "from", udp, "err", err)
			continue
		}
		select {
		case out <- packet{msg: msg, from: udp, legacy: legacy}:
		case <-ctx.Done():
			return
		}
	}
}

// handle applies one received packet and reports changes.
func (b *Browser) handle(p packet, now time.Time) {
	// RFC 6762 §6: responses come from port 5353 (legacy answers too, to
	// the querier's port); queries and bad opcodes carry nothing for us.
	if !p.msg.Response || p.msg.Opcode != dns.OpcodeQuery || p.msg.Rcode != dns.RcodeSuccess || p.from.Port != mdnssock.Port {
		return
	}
	b.mu.Lock()
	changed := b.state.apply(b.types, append(slices.Clip(p.msg.Answer), p.msg.Extra...), now)
	var events []Discovered
	var missing []dns.Question
	for _, in := range changed {
		if d, emit := b.state.change(in); emit {
			events = append(events, d)
		}
		missing = append(missing, b.state.missing(in, now)...)
	}
	b.mu.Unlock()
	if len(missing) > 0 {
		b.sendQuery(&dns.Msg{Question: missing}, false)
	}
	for _, d := range events {
		b.onChange(d)
	}
}

// sweep drops expired records, reports robots gone and asks again for
// records past 80% of their TTL.
func (b *Browser) sweep(now time.Time) {
	b.mu.Lock()
	gone := b.state.expire(now)
	refresh := b.state.refresh(now)
	b.mu.Unlock()
	if len(refresh) > 0 {
		b.sendQuery(&dns.Msg{Question: refresh}, false)
	}
	for _, d := range gone {
		b.onChange(d)
	}
}

// sendBrowseQuery asks for every service type's PTRs, listing the ones
// known with more than half their TTL left (RFC 6762 §7.1).
func (b *Browser) sendBrowseQuery(now time.Time, unicastAnswers bool) {
	m := new(dns.Msg)
	for _, name := range slices.Sorted(maps.Keys(b.types)) {
		m.Question = append(m.Question, dns.Question{Name: name, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	}
	b.mu.Lock()
	m.Answer = b.state.knownAnswers(now)
	b.mu.Unlock()
	b.sendQuery(m, unicastAnswers)
	// The legacy query (no known answers: legacy responders may not
	// suppress, and its answers reach this socket only).
	legacy := &dns.Msg{Question: m.Question}
	legacy.Id = dns.Id()
	b.sendOn(b.legacy, legacy)
}

// sendQuery multicasts m from port 5353 on every interface, with the QU bit
// on every question if unicastAnswers.
func (b *Browser) sendQuery(m *dns.Msg, unicastAnswers bool) {
	if unicastAnswers {
		for i := range m.Question {
			m.Question[i].Qclass |= mdnssock.ClassUnicast
		}
	}
	b.sendOn(b.mcast, m)
}

func (b *Browser) sendOn(conn *ipv4.PacketConn, m *dns.Msg) {
	if conn == nil {
		return // tests without sockets
	}
	buf, err := m.Pack()
	if err != nil {
		b.log.Warn("mDNS query does not pack", "err", err)
		return
	}
	for _, ifi := range b.ifaces {
		if _, err := conn.WriteTo(buf, &ipv4.ControlMessage{IfIndex: ifi.Index}, mdnssock.Group()); err != nil {
			b.log.Debug("mDNS query send failed", "interface", ifi.Name, "err", err)
		}
	}
}

// listenLegacy binds an ephemeral UDP port for legacy unicast queries.
func listenLegacy() (*ipv4.PacketConn, error) {
	pc, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return nil, fmt.Errorf("bind a UDP port for legacy mDNS queries: %w", err)
	}
	p := ipv4.NewPacketConn(pc)
	if err := p.SetMulticastTTL(255); err != nil {
		pc.Close()
		return nil, fmt.Errorf("set mDNS multicast TTL: %w", err)
	}
	return p, nil
}
