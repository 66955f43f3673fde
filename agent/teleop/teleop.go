// Package teleop detects teleoperation from what the robot's sockets show:
// an established TCP connection from a remote peer to one of the profile's
// teleop ports (LeKiwi's ZMQ 5555/5556, XLE's VR 8443/8442 and RTSP 8554),
// read from /proc/net/tcp and tcp6, plus connected UDP sockets of the
// process serving those ports (how WebRTC media shows up). It debounces
// what it sees into Started and Stopped transitions carrying the operator's
// address and the session start, and measures the command traffic rate
// from the kernel's per-connection byte counters (sock_diag), since
// /proc/net/tcp has none.
//
// Nothing here sends anything: the agent turns transitions into
// teleop.started / teleop.stopped events (Transition.Event).
package teleop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// Port is a local TCP port on which an established connection from a
// remote peer means someone is teleoperating the robot.
type Port struct {
	Number uint16
	Name   string // such as "zmq-cmd", for people and event messages
}

// Defaults for Config fields left zero.
const (
	DefaultStartAfter = 3 * time.Second
	DefaultStopAfter  = 30 * time.Second
	// interfaceRefresh is how often the robot's own addresses are re-read
	// when Config.LocalAddrs is nil (DHCP renewals change them rarely).
	interfaceRefresh = time.Minute
)

// Config configures a Detector. Zero fields take the defaults noted.
type Config struct {
	// Ports are the teleop ports (required; see FromProfile).
	Ports []Port
	// StartAfter is how long a remote peer must be present continuously
	// before teleoperation counts as started (default DefaultStartAfter):
	// port scans and health probes do not start sessions.
	StartAfter time.Duration
	// StopAfter is how long every remote peer must be gone before
	// teleoperation counts as stopped (default: the profile's
	// idle_timeout, else DefaultStopAfter): a client reconnecting after a
	// Wi-Fi hiccup stays in the same session.
	StopAfter time.Duration
	// Proc is the procfs root (default "/proc").
	Proc string
	// LocalAddrs are the robot's own addresses: peers there are not
	// operators. Nil means loopback plus the addresses of the network
	// interfaces (re-read every minute). A connection whose remote
	// address equals its own local address is always local. Tests pass
	// 127.0.0.1/32 so that a client on 127.0.0.2 counts as remote.
	LocalAddrs []netip.Prefix
	// Counters reads per-connection byte counters. Nil means sock_diag
	// (NewSockDiag); when that cannot be opened, rates are not measured
	// and detection uses connection presence only.
	Counters ByteCounter
	// NoUDP turns off the WebRTC heuristic (connected UDP sockets of the
	// process that listens on a teleop port).
	NoUDP bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// FromProfile returns the configuration a profile asks for: its teleop
// ports and idle timeout.
func FromProfile(t profiles.Teleop) Config {
	c := Config{StopAfter: t.IdleTimeout}
	for _, p := range t.TCPPorts {
		if p.Port > 0 && p.Port <= 65535 {
			c.Ports = append(c.Ports, Port{Number: uint16(p.Port), Name: p.Name})
		}
	}
	return c
}

// Peer is one remote endpoint connected to a teleop port.
type Peer struct {
	Remote    netip.AddrPort
	Local     netip.AddrPort
	Port      string // the teleop port's name; "udp" for a UDP peer
	UDP       bool
	FirstSeen time.Time
}

// Session is a teleoperation session as seen so far.
type Session struct {
	Operator netip.Addr // remote address of the longest-connected peer at start
	Since    time.Time  // when that peer was first seen (before debouncing)
	Ended    time.Time  // set on Stopped: when the last peer was last seen
	Peers    []Peer     // peers present at the last poll
	// RxBytesPerSec is the command traffic: payload bytes per second
	// received from teleop TCP peers over the last poll interval.
	// TxBytesPerSec is what the robot sent them (observations, video).
	// Both are -1 when byte counters are unavailable.
	RxBytesPerSec, TxBytesPerSec float64
}

// Kind tells a Started from a Stopped transition.
type Kind int

const (
	Started Kind = iota + 1
	Stopped
)

func (k Kind) String() string {
	switch k {
	case Started:
		return "started"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Transition is a debounced change of the teleoperation state.
type Transition struct {
	Kind    Kind
	Session Session
}

// Event is the protocol event for the transition: teleop.started or
// teleop.stopped with TeleopData (operator address, session start).
func (t Transition) Event() protocol.Event {
	kind, msg := protocol.EventTeleopStarted, "teleoperation started"
	if t.Kind == Stopped {
		kind, msg = protocol.EventTeleopStopped, "teleoperation stopped"
	}
	op := ""
	if t.Session.Operator.IsValid() {
		op = t.Session.Operator.String()
		msg += " by " + op
	}
	if t.Kind == Stopped && !t.Session.Ended.IsZero() {
		msg += fmt.Sprintf(" after %s", t.Session.Ended.Sub(t.Session.Since).Round(time.Second))
	}
	data, _ := json.Marshal(protocol.TeleopData{Operator: op, Since: t.Session.Since.UTC()})
	return protocol.Event{Kind: kind, Severity: "info", Message: msg, Data: data}
}

// Detector polls the socket tables and debounces them into transitions.
// Poll and Run must not be called concurrently; Status is safe from any
// goroutine only through Run's emit callback or after Poll returns.
type Detector struct {
	cfg      Config
	ports    map[uint16]string
	now      func() time.Time
	counters ByteCounter
	ownsCtr  bool

	// reusable buffers: a poll allocates nothing in steady state
	buf     []byte
	sockets []Socket
	udp     []Socket

	ifAddrs   []netip.Prefix
	ifAddrsAt time.Time

	firstSeen map[peerKey]time.Time // present peers, by connection
	bytes     map[uint64]Bytes      // last counters, by socket inode
	lastPoll  time.Time
	owners    ownerCache

	active       bool
	presentSince time.Time // first poll of the current run of presence (inactive state)
	lastSeen     time.Time
	session      Session
}

type peerKey struct {
	local, remote netip.AddrPort
	udp           bool
}

// New validates cfg and opens the byte counter.
func New(cfg Config) (*Detector, error) {
	if len(cfg.Ports) == 0 {
		return nil, errors.New("teleop: no ports configured (the profile's teleop.tcp_ports is empty)")
	}
	if cfg.StartAfter < 0 || cfg.StopAfter < 0 {
		return nil, fmt.Errorf("teleop: negative debounce (start after %s, stop after %s)", cfg.StartAfter, cfg.StopAfter)
	}
	if cfg.StartAfter == 0 {
		cfg.StartAfter = DefaultStartAfter
	}
	if cfg.StopAfter == 0 {
		cfg.StopAfter = DefaultStopAfter
	}
	if cfg.Proc == "" {
		cfg.Proc = "/proc"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Detector{
		cfg:       cfg,
		ports:     make(map[uint16]string, len(cfg.Ports)),
		now:       cfg.Now,
		counters:  cfg.Counters,
		buf:       make([]byte, 256<<10), // one read() for ~1500 sockets: each read re-walks the hash table
		firstSeen: map[peerKey]time.Time{},
		bytes:     map[uint64]Bytes{},
	}
	for _, p := range cfg.Ports {
		if p.Number == 0 {
			return nil, fmt.Errorf("teleop: port %q has number 0", p.Name)
		}
		d.ports[p.Number] = p.Name
	}
	if d.counters == nil {
		if sd, err := NewSockDiag(); err == nil {
			d.counters, d.ownsCtr = sd, true
		}
	}
	return d, nil
}

// Close releases the byte counter if New opened it.
func (d *Detector) Close() error {
	if d.ownsCtr {
		return d.counters.Close()
	}
	return nil
}

// Active reports whether a session is in progress, and that session.
func (d *Detector) Active() (Session, bool) {
	if !d.active {
		return Session{}, false
	}
	s := d.session
	s.Peers = slices.Clone(s.Peers)
	return s, true
}

// Run polls every interval until ctx ends, calling emit for every
// transition (from this goroutine). A failed poll is passed to onErr (may
// be nil) and retried at the next tick; it does not end a session by
// itself, since an unreadable table says nothing about the peers.
func (d *Detector) Run(ctx context.Context, interval time.Duration, emit func(Transition), onErr func(error)) error {
	if interval <= 0 {
		return fmt.Errorf("teleop: poll interval %s must be positive", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		trs, err := d.Poll(ctx)
		if err != nil && onErr != nil {
			onErr(err)
		}
		for _, tr := range trs {
			emit(tr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Poll reads the socket tables once and returns the transitions (at most
// one) this poll causes.
func (d *Detector) Poll(ctx context.Context) ([]Transition, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := d.now()
	peers, rx, tx, err := d.scan(now)
	if err != nil {
		return nil, err
	}
	present := len(peers) > 0
	var out []Transition
	switch {
	case !d.active && present:
		if d.presentSince.IsZero() {
			d.presentSince = now
		}
		if now.Sub(d.presentSince) >= d.cfg.StartAfter {
			first := peers[0]
			for _, p := range peers[1:] {
				if p.FirstSeen.Before(first.FirstSeen) {
					first = p
				}
			}
			d.active, d.lastSeen = true, now
			d.session = Session{Operator: first.Remote.Addr(), Since: first.FirstSeen}
			d.setPeers(peers, rx, tx)
			out = append(out, Transition{Kind: Started, Session: d.copySession()})
		}
	case !d.active:
		d.presentSince = time.Time{}
	case present:
		d.lastSeen = now
		d.setPeers(peers, rx, tx)
	default:
		d.setPeers(nil, rx, tx)
		if now.Sub(d.lastSeen) >= d.cfg.StopAfter {
			d.session.Ended = d.lastSeen
			out = append(out, Transition{Kind: Stopped, Session: d.copySession()})
			d.active, d.presentSince, d.session = false, time.Time{}, Session{}
		}
	}
	return out, nil
}

func (d *Detector) setPeers(peers []Peer, rx, tx float64) {
	d.session.Peers = append(d.session.Peers[:0], peers...)
	d.session.RxBytesPerSec, d.session.TxBytesPerSec = rx, tx
}

func (d *Detector) copySession() Session {
	s := d.session
	s.Peers = slices.Clone(s.Peers)
	return s
}

// scan reads the tables and returns the remote peers on teleop ports and
// the TCP byte rates since the previous scan (-1 without counters).
func (d *Detector) scan(now time.Time) ([]Peer, float64, float64, error) {
	d.sockets = d.sockets[:0]
	var err error
	for _, name := range [...]string{"tcp", "tcp6"} {
		if d.sockets, err = d.readTable(name, d.sockets); err != nil {
			return nil, 0, 0, err
		}
	}
	local := d.localAddrs(now)
	var peers []Peer
	seen := make(map[peerKey]struct{}, 4)
	var listeners []uint64
	var rxBytes, txBytes uint64
	countersOK := d.counters != nil
	bytesNow := make(map[uint64]Bytes, 4)
	for _, s := range d.sockets {
		name, ok := d.ports[s.Local.Port()]
		if !ok {
			continue
		}
		if s.State == StateListen {
			listeners = append(listeners, s.Inode)
			continue
		}
		if s.State != StateEstablished || isLocal(s, local) {
			continue
		}
		k := peerKey{local: s.Local, remote: s.Remote}
		peers = append(peers, Peer{Remote: s.Remote, Local: s.Local, Port: name, FirstSeen: d.seen(k, now)})
		seen[k] = struct{}{}
		if countersOK {
			b, ok, err := d.counters.TCPBytes(s.Local, s.Remote, s.Inode)
			switch {
			case err != nil:
				countersOK = false
			case ok:
				bytesNow[s.Inode] = b
				if prev, had := d.bytes[s.Inode]; had && b.Received >= prev.Received && b.Acked >= prev.Acked {
					rxBytes += b.Received - prev.Received
					txBytes += b.Acked - prev.Acked
				}
			}
		}
	}
	if !d.cfg.NoUDP && len(listeners) > 0 {
		udpPeers, err := d.udpPeers(listeners, local, now)
		if err != nil {
			return nil, 0, 0, err
		}
		for _, p := range udpPeers {
			seen[peerKey{local: p.Local, remote: p.Remote, udp: true}] = struct{}{}
		}
		peers = append(peers, udpPeers...)
	}
	for k := range d.firstSeen {
		if _, ok := seen[k]; !ok {
			delete(d.firstSeen, k)
		}
	}
	rx, tx := -1.0, -1.0
	if countersOK {
		rx, tx = 0, 0
		if el := now.Sub(d.lastPoll).Seconds(); !d.lastPoll.IsZero() && el > 0 {
			rx, tx = float64(rxBytes)/el, float64(txBytes)/el
		}
	}
	d.bytes, d.lastPoll = bytesNow, now
	return peers, rx, tx, nil
}

func (d *Detector) seen(k peerKey, now time.Time) time.Time {
	t, ok := d.firstSeen[k]
	if !ok {
		t = now
		d.firstSeen[k] = t
	}
	return t
}

// udpPeers finds connected UDP sockets with a remote peer that belong to a
// process listening on a teleop port: WebRTC media and data channels of a
// teleop server show up that way when its ICE agent connects its sockets.
// Unconnected UDP sockets (sendto per packet) do not name a peer and are
// invisible here.
func (d *Detector) udpPeers(listeners []uint64, local []netip.Prefix, now time.Time) ([]Peer, error) {
	d.udp = d.udp[:0]
	var err error
	for _, name := range [...]string{"udp", "udp6"} {
		if d.udp, err = d.readTable(name, d.udp); err != nil {
			return nil, err
		}
	}
	var cand []Socket
	for _, s := range d.udp {
		if s.State == StateEstablished && !isLocal(s, local) {
			cand = append(cand, s)
		}
	}
	if len(cand) == 0 {
		return nil, nil // the common case: no process scan at all
	}
	inodes, err := d.owners.socketsOfListeners(d.cfg.Proc, listeners)
	if err != nil {
		return nil, err
	}
	var peers []Peer
	for _, s := range cand {
		if _, ok := inodes[s.Inode]; ok {
			k := peerKey{local: s.Local, remote: s.Remote, udp: true}
			peers = append(peers, Peer{Remote: s.Remote, Local: s.Local, Port: "udp", UDP: true, FirstSeen: d.seen(k, now)})
		}
	}
	return peers, nil
}

// readTable appends the sockets of /proc/net/<name>. A missing table (no
// IPv6 in the kernel) is empty.
func (d *Detector) readTable(name string, dst []Socket) ([]Socket, error) {
	path := filepath.Join(d.cfg.Proc, "net", name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return dst, nil
	}
	if err != nil {
		return dst, fmt.Errorf("teleop: read socket table: %w", err)
	}
	defer f.Close()
	n := 0
	for {
		if n == len(d.buf) {
			d.buf = append(d.buf, make([]byte, len(d.buf))...)
		}
		m, err := f.Read(d.buf[n:])
		n += m
		if m == 0 || err != nil {
			break
		}
	}
	out, err := parseProcNet(d.buf[:n], dst)
	if err != nil {
		return dst, fmt.Errorf("teleop: parse %s: %w", path, err)
	}
	return out, nil
}

func (d *Detector) localAddrs(now time.Time) []netip.Prefix {
	if d.cfg.LocalAddrs != nil {
		return d.cfg.LocalAddrs
	}
	if d.ifAddrs != nil && now.Sub(d.ifAddrsAt) < interfaceRefresh {
		return d.ifAddrs
	}
	addrs := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if ifas, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifas {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					addrs = append(addrs, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
				}
			}
		}
	}
	d.ifAddrs, d.ifAddrsAt = addrs, now
	return addrs
}

// isLocal reports whether the socket's peer is the robot itself (or no
// peer at all).
func isLocal(s Socket, local []netip.Prefix) bool {
	r := s.Remote.Addr()
	if !r.IsValid() || r.IsUnspecified() || r == s.Local.Addr() {
		return true
	}
	for _, p := range local {
		if p.Contains(r) {
			return true
		}
	}
	return false
}
