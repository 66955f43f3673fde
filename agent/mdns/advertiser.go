package mdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	hmdns "github.com/hashicorp/mdns"
	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/lekiwi/heartbeat/internal/mdnssock"
	"github.com/lekiwi/heartbeat/protocol"
)

// DefaultAnnounceEvery is how often the records are announced again after
// the start-up announcements. The records' TTL is 120 s (hashicorp/mdns), so
// a passive cache that hears every other announcement never expires them;
// one ~300-byte packet a minute is about 5 B/s.
const DefaultAnnounceEvery = 60 * time.Second

// legacyUnicastTTL caps TTLs in answers to legacy unicast queries
// (RFC 6762 §6.7).
const legacyUnicastTTL = 10

// startupAnnouncements are the delays before each start-up announcement,
// from Run's start: RFC 6762 §8.3 asks for at least two, one second apart,
// the interval doubling.
func startupAnnouncements() []time.Duration {
	return []time.Duration{0, time.Second, 3 * time.Second}
}

// ServiceType returns the DNS-SD service type of a robot type:
// "_lekiwi._tcp" or "_xle._tcp".
func ServiceType(t protocol.RobotType) string {
	return "_" + string(t) + "._tcp"
}

// Config says what to advertise and where.
type Config struct {
	RobotID      string             // instance name and TXT id; a DNS label (protocol.ValidRobotID)
	Type         protocol.RobotType // selects _lekiwi._tcp or _xle._tcp
	AgentVersion string             // TXT "agent"
	OSVersion    string             // TXT "os"
	Port         int                // SRV port, 1-65535: where on the robot the agent can be reached

	// HostName is the SRV target and A record name; default
	// "<robot id>.local.".
	HostName string
	// IPs are the host's addresses in A records; default the IPv4
	// addresses of Interfaces.
	IPs []net.IP
	// Interfaces to listen and announce on, by name; default every up,
	// multicast, non-loopback interface with an IPv4 address.
	Interfaces []string
	// AnnounceEvery is the period of announcements after start-up; default
	// DefaultAnnounceEvery.
	AnnounceEvery time.Duration
	Logger        *slog.Logger
}

// Advertiser answers mDNS queries for the robot's service and announces it.
// New binds the socket; Run serves until its context ends.
type Advertiser struct {
	zone          hmdns.Zone
	serviceName   string // "_xle._tcp.local."
	enumName      string // "_services._dns-sd._udp.local."
	conn          *ipv4.PacketConn
	ifaces        []net.Interface
	announceEvery time.Duration
	log           *slog.Logger
}

// New validates cfg, builds the records and binds the mDNS socket on the
// chosen interfaces (all socket work happens here, in the caller's network
// namespace). Call Run to serve.
func New(cfg Config) (*Advertiser, error) {
	if err := protocol.ValidRobotID(cfg.RobotID); err != nil {
		return nil, fmt.Errorf("mDNS instance name: %w", err)
	}
	if !cfg.Type.Valid() {
		return nil, fmt.Errorf("mDNS service for robot type %q: want %q or %q", cfg.Type, protocol.RobotLeKiwi, protocol.RobotXLE)
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("mDNS service port %d is outside 1-65535", cfg.Port)
	}
	txt, err := EncodeTXT(cfg.RobotID, string(cfg.Type), cfg.AgentVersion, cfg.OSVersion)
	if err != nil {
		return nil, err
	}
	ifaces, err := mdnssock.Interfaces(cfg.Interfaces)
	if err != nil {
		return nil, err
	}
	host := strings.ToLower(cfg.HostName)
	if host == "" {
		host = cfg.RobotID + ".local."
	}
	if !strings.HasSuffix(host, ".") {
		host += "."
	}
	ips := cfg.IPs
	if len(ips) == 0 {
		for _, ifi := range ifaces {
			ips = append(ips, mdnssock.IPv4Addrs(ifi)...)
		}
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("no IPv4 address on mDNS interfaces %v for the A record of %s: set Config.IPs", cfg.Interfaces, host)
	}
	service := ServiceType(cfg.Type)
	zone, err := hmdns.NewMDNSService(cfg.RobotID, service, "local.", host, cfg.Port, ips, txt)
	if err != nil {
		return nil, fmt.Errorf("build mDNS records for %s: %w", cfg.RobotID, err)
	}
	conn, err := mdnssock.Listen(ifaces)
	if err != nil {
		return nil, err
	}
	a := newAdvertiser(zone, service, cfg.AnnounceEvery, cfg.Logger)
	a.conn, a.ifaces = conn, ifaces
	return a, nil
}

// newAdvertiser is the socket-less part of New, for tests of the packets.
func newAdvertiser(zone hmdns.Zone, service string, every time.Duration, log *slog.Logger) *Advertiser {
	if every <= 0 {
		every = DefaultAnnounceEvery
	}
	if log == nil {
		log = slog.Default()
	}
	return &Advertiser{
		zone:          zone,
		serviceName:   service + ".local.",
		enumName:      "_services._dns-sd._udp.local.",
		announceEvery: every,
		log:           log.With("component", "mdns"),
	}
}

// Run announces the service, answers queries and, when ctx ends, sends
// goodbye packets (TTL 0) so that browsers drop the robot at once, closes
// the socket and returns. It returns an error only if sending every
// start-up announcement failed.
func (a *Advertiser) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.serve()
	}()
	defer func() {
		a.sendToGroup(a.goodbye())
		a.conn.Close()
		wg.Wait()
	}()

	start := time.Now()
	sent := 0
	for _, at := range startupAnnouncements() {
		if !sleepUntil(ctx, start.Add(at)) {
			return nil
		}
		if a.sendToGroup(a.announcement()) {
			sent++
		}
	}
	if sent == 0 {
		return errors.New("mDNS: no start-up announcement could be sent on any interface: check the interfaces' multicast route")
	}
	tick := time.NewTicker(a.announceEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			a.sendToGroup(a.announcement())
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// serve reads queries until the socket is closed.
func (a *Advertiser) serve() {
	buf := make([]byte, 9000) // RFC 6762 §17: up to 9000 bytes
	for {
		n, cm, src, err := a.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			a.log.Debug("mDNS read failed", "err", err)
			continue
		}
		udp, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		ifIndex := 0
		if cm != nil {
			ifIndex = cm.IfIndex
			// The kernel delivers the group's packets from every interface
			// where any socket joined it (an Avahi daemon, say); answer only
			// on ours.
			if !a.ours(ifIndex) {
				continue
			}
		}
		var query dns.Msg
		if err := query.Unpack(buf[:n]); err != nil {
			a.log.Debug("mDNS packet does not parse", "from", udp, "err", err)
			continue
		}
		for _, r := range a.respond(&query, udp, ifIndex) {
			a.send(r)
		}
	}
}

func (a *Advertiser) ours(ifIndex int) bool {
	for _, ifi := range a.ifaces {
		if ifi.Index == ifIndex {
			return true
		}
	}
	return false
}

// reply is one packet to send: to the group on an interface, or unicast.
type reply struct {
	msg     *dns.Msg
	to      *net.UDPAddr
	ifIndex int // for multicast: the interface to send on; 0 for unicast
}

// respond decides the answers to one received packet. Responses and
// malformed queries get none; QM questions get a multicast answer on the
// interface the query came in on; QU questions a unicast answer to the
// querier; legacy queries (source port not 5353) a unicast answer with the
// query's id, its questions and TTLs capped at 10 s.
func (a *Advertiser) respond(query *dns.Msg, src *net.UDPAddr, ifIndex int) []reply {
	// RFC 6762 §18.3, §18.11: ignore non-zero opcode and rcode.
	if query.Response || query.Opcode != dns.OpcodeQuery || query.Rcode != dns.RcodeSuccess {
		return nil
	}
	legacy := src.Port != mdnssock.Port
	var multicast, unicast []dns.RR
	for _, q := range query.Question {
		class := q.Qclass &^ mdnssock.ClassUnicast
		if class != dns.ClassINET && class != dns.ClassANY {
			continue
		}
		recs := a.zone.Records(dns.Question{Name: strings.ToLower(q.Name), Qtype: q.Qtype, Qclass: dns.ClassINET})
		recs = withoutKnownAnswers(recs, query.Answer)
		if legacy || q.Qclass&mdnssock.ClassUnicast != 0 {
			unicast = append(unicast, recs...)
		} else {
			multicast = append(multicast, recs...)
		}
	}
	var out []reply
	if len(multicast) > 0 {
		out = append(out, reply{msg: responseMsg(markCacheFlush(dedupe(multicast))), to: mdnssock.Group(), ifIndex: ifIndex})
	}
	if len(unicast) > 0 {
		if legacy {
			m := responseMsg(capTTL(dedupe(unicast), legacyUnicastTTL))
			m.Id = query.Id
			m.Question = query.Question
			out = append(out, reply{msg: m, to: src})
		} else {
			out = append(out, reply{msg: responseMsg(markCacheFlush(dedupe(unicast))), to: src})
		}
	}
	return out
}

// announcement is the unsolicited response of RFC 6762 §8.3: every record
// of the service, including the DNS-SD service enumeration PTR.
func (a *Advertiser) announcement() *dns.Msg {
	var recs []dns.RR
	recs = append(recs, a.zone.Records(dns.Question{Name: a.enumName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})...)
	recs = append(recs, a.zone.Records(dns.Question{Name: a.serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})...)
	return responseMsg(markCacheFlush(dedupe(recs)))
}

// goodbye is the announcement with TTL 0 (RFC 6762 §10.1).
func (a *Advertiser) goodbye() *dns.Msg {
	m := a.announcement()
	for _, rr := range m.Answer {
		rr.Header().Ttl = 0
	}
	return m
}

func responseMsg(answers []dns.RR) *dns.Msg {
	return &dns.Msg{
		MsgHdr:   dns.MsgHdr{Response: true, Authoritative: true, Opcode: dns.OpcodeQuery},
		Compress: true,
		Answer:   answers,
	}
}

// withoutKnownAnswers drops records the querier listed as known with at
// least half our TTL left (RFC 6762 §7.1).
func withoutKnownAnswers(recs, known []dns.RR) []dns.RR {
	if len(known) == 0 {
		return recs
	}
	kept := recs[:0:0]
	for _, rr := range recs {
		suppressed := false
		for _, k := range known {
			kh := k.Header()
			if kh.Ttl >= rr.Header().Ttl/2 && sameRecord(rr, k) {
				suppressed = true
				break
			}
		}
		if !suppressed {
			kept = append(kept, rr)
		}
	}
	return kept
}

// sameRecord compares name (case-insensitively), type and data, ignoring
// TTL and the cache-flush bit.
func sameRecord(a, b dns.RR) bool {
	ah, bh := a.Header(), b.Header()
	if ah.Rrtype != bh.Rrtype || !strings.EqualFold(ah.Name, bh.Name) {
		return false
	}
	a2, b2 := dns.Copy(a), dns.Copy(b)
	a2.Header().Name, b2.Header().Name = strings.ToLower(ah.Name), strings.ToLower(ah.Name)
	a2.Header().Class, b2.Header().Class = dns.ClassINET, dns.ClassINET
	return dns.IsDuplicate(a2, b2)
}

// dedupe copies recs without repeats; answers to several questions overlap
// (hashicorp/mdns adds SRV and A to a PTR answer).
func dedupe(recs []dns.RR) []dns.RR {
	out := make([]dns.RR, 0, len(recs))
	for _, rr := range recs {
		dup := false
		for _, o := range out {
			if sameRecord(rr, o) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, dns.Copy(rr))
		}
	}
	return out
}

// markCacheFlush sets the cache-flush bit on unique records (all but PTR,
// which many hosts share), telling caches to replace what they hold
// (RFC 6762 §10.2). recs must be copies.
func markCacheFlush(recs []dns.RR) []dns.RR {
	for _, rr := range recs {
		if rr.Header().Rrtype != dns.TypePTR {
			rr.Header().Class = dns.ClassINET | mdnssock.ClassUnicast
		}
	}
	return recs
}

func capTTL(recs []dns.RR, ttl uint32) []dns.RR {
	for _, rr := range recs {
		if rr.Header().Ttl > ttl {
			rr.Header().Ttl = ttl
		}
	}
	return recs
}

// sendToGroup multicasts m on every interface; it reports whether any send
// succeeded.
func (a *Advertiser) sendToGroup(m *dns.Msg) bool {
	ok := false
	for _, ifi := range a.ifaces {
		if a.send(reply{msg: m, to: mdnssock.Group(), ifIndex: ifi.Index}) {
			ok = true
		}
	}
	return ok
}

func (a *Advertiser) send(r reply) bool {
	buf, err := r.msg.Pack()
	if err != nil {
		a.log.Warn("mDNS answer does not pack", "err", err)
		return false
	}
	var cm *ipv4.ControlMessage
	if r.ifIndex != 0 {
		cm = &ipv4.ControlMessage{IfIndex: r.ifIndex}
	}
	if _, err := a.conn.WriteTo(buf, cm, r.to); err != nil {
		a.log.Debug("mDNS send failed", "to", r.to, "ifindex", r.ifIndex, "err", err)
		return false
	}
	return true
}
