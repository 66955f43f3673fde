package discovery

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lekiwi/heartbeat/internal/mdnssock"
	"github.com/lekiwi/heartbeat/protocol"
)

func hdr(name string, rrtype uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET | mdnssock.ClassUnicast, Ttl: ttl}
}

// robotRecords are what agent/mdns announces for xle-7.
func robotRecords(ttl uint32, agent string) []dns.RR {
	return []dns.RR{
		&dns.PTR{Hdr: hdr("_xle._tcp.local.", dns.TypePTR, ttl), Ptr: "xle-7._xle._tcp.local."},
		&dns.SRV{Hdr: hdr("xle-7._xle._tcp.local.", dns.TypeSRV, ttl), Port: 9100, Target: "xle-7.local."},
		&dns.A{Hdr: hdr("xle-7.local.", dns.TypeA, ttl), A: net.IPv4(10, 0, 0, 7)},
		&dns.TXT{Hdr: hdr("xle-7._xle._tcp.local.", dns.TypeTXT, ttl), Txt: []string{"id=xle-7", "type=xle", "agent=" + agent, `os=12\\5`}},
	}
}

func response(rrs ...dns.RR) packet {
	return packet{msg: &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Answer: rrs},
		from: &net.UDPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 5353}}
}

func TestBrowserLifecycle(t *testing.T) {
	var events []Discovered
	b := newBrowser(Config{OnChange: func(d Discovered) { events = append(events, d) }})
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

	// Announcement: one complete report.
	b.handle(response(robotRecords(120, "1.4.0")...), t0)
	if len(events) != 1 {
		t.Fatalf("events after announcement = %+v, want 1", events)
	}
	want := Discovered{Instance: "xle-7._xle._tcp.local.", RobotID: "xle-7", Type: protocol.RobotXLE, Host: "xle-7.local.",
		Addr: netip.MustParseAddr("10.0.0.7"), Port: 9100, Seen: t0}
	got := events[0]
	if !sameRobot(got, Discovered{Instance: want.Instance, RobotID: want.RobotID, Host: want.Host, Addr: want.Addr, Port: want.Port, TXT: got.TXT}) ||
		got.Type != want.Type || !got.Seen.Equal(t0) || got.Gone || got.AgentVersion() != "1.4.0" || got.OSVersion() != `12\5` {
		t.Fatalf("report = %+v", got)
	}

	// The same records again (a periodic announcement): no new report, Seen moves.
	b.handle(response(robotRecords(120, "1.4.0")...), t0.Add(time.Minute))
	if len(events) != 1 {
		t.Fatalf("repeat announcement reported again: %+v", events[1:])
	}
	if s := b.Snapshot(); len(s) != 1 || !s[0].Seen.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Snapshot = %+v, want xle-7 seen at +1m", s)
	}

	// A new agent version: reported.
	b.handle(response(robotRecords(120, "1.5.0")...), t0.Add(2*time.Minute))
	if len(events) != 2 || events[1].AgentVersion() != "1.5.0" {
		t.Fatalf("version change not reported: %+v", events)
	}

	// Goodbye: reported gone, dropped.
	b.handle(response(robotRecords(0, "1.5.0")...), t0.Add(3*time.Minute))
	if len(events) != 3 || !events[2].Gone || events[2].RobotID != "xle-7" {
		t.Fatalf("goodbye not reported: %+v", events)
	}
	if s := b.Snapshot(); len(s) != 0 {
		t.Fatalf("Snapshot after goodbye = %+v", s)
	}
}

func TestBrowserExpiryAndRefresh(t *testing.T) {
	var events []Discovered
	b := newBrowser(Config{OnChange: func(d Discovered) { events = append(events, d) }})
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	b.handle(response(robotRecords(100, "1")...), t0)

	if qs := b.state.refresh(t0.Add(79 * time.Second)); len(qs) != 0 {
		t.Errorf("refresh at 79%% of TTL asks %v", qs)
	}
	qs := b.state.refresh(t0.Add(80 * time.Second))
	if len(qs) != 3 || qs[0].Qtype != dns.TypeSRV || qs[1].Qtype != dns.TypeTXT || qs[2].Qtype != dns.TypeA || qs[2].Name != "xle-7.local." {
		t.Errorf("refresh at 80%% asks %v, want SRV, TXT, A", qs)
	}
	if qs := b.state.refresh(t0.Add(82 * time.Second)); len(qs) != 0 {
		t.Errorf("refresh asked again within 5%% of TTL: %v", qs)
	}
	if qs := b.state.refresh(t0.Add(85 * time.Second)); len(qs) != 3 {
		t.Errorf("refresh at 85%% asks %v, want 3 questions", qs)
	}

	b.sweep(t0.Add(99 * time.Second))
	if len(events) != 1 {
		t.Fatalf("expired early: %+v", events)
	}
	b.sweep(t0.Add(100 * time.Second))
	if len(events) != 2 || !events[1].Gone {
		t.Fatalf("expiry not reported: %+v", events)
	}
	if len(b.state.instances) != 0 || len(b.state.hosts) != 0 {
		t.Errorf("cache not empty after expiry: %+v %+v", b.state.instances, b.state.hosts)
	}
}

func TestBrowserIncompleteAsks(t *testing.T) {
	var events []Discovered
	b := newBrowser(Config{Types: []protocol.RobotType{protocol.RobotXLE}, OnChange: func(d Discovered) { events = append(events, d) }})
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rrs := robotRecords(120, "1")
	b.state.apply(b.types, rrs[:1], t0)
	in := b.state.instances["xle-7._xle._tcp.local."]
	if qs := b.state.missing(in, t0); len(qs) != 2 || qs[0].Qtype != dns.TypeSRV || qs[1].Qtype != dns.TypeTXT {
		t.Fatalf("PTR only: asks %v, want SRV and TXT", qs)
	}
	if qs := b.state.missing(in, t0.Add(time.Second/2)); len(qs) != 0 {
		t.Fatalf("asked again within %v: %v", minAskGap, qs)
	}
	b.state.apply(b.types, []dns.RR{rrs[1], rrs[3]}, t0.Add(time.Second))
	if qs := b.state.missing(in, t0.Add(time.Second)); len(qs) != 1 || qs[0].Qtype != dns.TypeA || qs[0].Name != "xle-7.local." {
		t.Fatalf("without address: asks %v, want A of xle-7.local.", qs)
	}
	if len(events) != 0 {
		t.Fatalf("incomplete robot reported: %+v", events)
	}
	// Records for a type not browsed, and a bare service name, are ignored.
	b.handle(response(&dns.PTR{Hdr: hdr("_lekiwi._tcp.local.", dns.TypePTR, 120), Ptr: "l-1._lekiwi._tcp.local."},
		&dns.SRV{Hdr: hdr("_xle._tcp.local.", dns.TypeSRV, 120), Port: 1, Target: "x.local."}), t0)
	if len(b.state.instances) != 1 {
		t.Errorf("instances = %v, want only xle-7", b.state.instances)
	}
	// Known answers list the PTR while more than half its TTL is left.
	if ka := b.state.knownAnswers(t0.Add(59 * time.Second)); len(ka) != 1 || ka[0].Header().Ttl != 61 {
		t.Errorf("known answers at 59 s = %v", ka)
	}
	if ka := b.state.knownAnswers(t0.Add(61 * time.Second)); len(ka) != 0 {
		t.Errorf("known answers at 61 s = %v, want none", ka)
	}
}

func TestBrowserIgnores(t *testing.T) {
	b := newBrowser(Config{OnChange: func(d Discovered) { t.Errorf("reported %+v", d) }})
	now := time.Now()
	query := response(robotRecords(120, "1")...)
	query.msg.Response = false
	b.handle(query, now)
	wrongPort := response(robotRecords(120, "1")...)
	wrongPort.from.Port = 53
	b.handle(wrongPort, now)
	if len(b.state.instances) != 0 {
		t.Errorf("cached records from a query or a non-mDNS port: %v", b.state.instances)
	}
}

// FuzzHandle feeds arbitrary packets to the browser: no panic, and every
// report is complete.
func FuzzHandle(f *testing.F) {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Answer: robotRecords(120, "1")}
	buf, err := m.Pack()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(buf)
	m.Answer = robotRecords(0, "1")
	if buf, err = m.Pack(); err != nil {
		f.Fatal(err)
	}
	f.Add(buf)
	f.Fuzz(func(t *testing.T, packet []byte) {
		var msg dns.Msg
		if msg.Unpack(packet) != nil {
			return
		}
		b := newBrowser(Config{OnChange: func(d Discovered) {
			if !d.Gone && (!d.Addr.IsValid() || d.RobotID == "" || d.Instance == "" || !d.Type.Valid()) {
				t.Fatalf("incomplete report %+v", d)
			}
		}})
		now := time.Now()
		b.handle(response(append(msg.Answer, msg.Extra...)...), now)
		b.sweep(now.Add(time.Hour))
		b.state.knownAnswers(now)
	})
}
