package mdns

import (
	"net"
	"strings"
	"testing"

	hmdns "github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/lekiwi/heartbeat/internal/mdnssock"
)

func testAdvertiser(t testing.TB) *Advertiser {
	t.Helper()
	txt, err := EncodeTXT("xle-7", "xle", "1.4.0", `12\5`)
	if err != nil {
		t.Fatal(err)
	}
	zone, err := hmdns.NewMDNSService("xle-7", "_xle._tcp", "local.", "xle-7.local.", 9100, []net.IP{net.IPv4(10, 0, 0, 7)}, txt)
	if err != nil {
		t.Fatal(err)
	}
	return newAdvertiser(zone, "_xle._tcp", 0, nil)
}

// types renders the records' types, "!" marking the cache-flush bit.
func types(rrs []dns.RR) string {
	var s []string
	for _, rr := range rrs {
		h := rr.Header()
		flush := ""
		if h.Class&mdnssock.ClassUnicast != 0 {
			flush = "!"
		}
		s = append(s, dns.TypeToString[h.Rrtype]+flush)
	}
	return strings.Join(s, ",")
}

func TestAnnouncementAndGoodbye(t *testing.T) {
	a := testAdvertiser(t)
	m := a.announcement()
	if !m.Response || !m.Authoritative || m.Id != 0 || len(m.Question) != 0 {
		t.Fatalf("announcement header = %+v, want response, authoritative, id 0, no questions", m.MsgHdr)
	}
	// PTRs are shared (no cache-flush); SRV, A and TXT unique (cache-flush).
	if got, want := types(m.Answer), "PTR,PTR,SRV!,A!,TXT!"; got != want {
		t.Fatalf("announcement records = %s, want %s:\n%v", got, want, m)
	}
	if ptr := m.Answer[0].(*dns.PTR); ptr.Hdr.Name != "_services._dns-sd._udp.local." || ptr.Ptr != "_xle._tcp.local." {
		t.Errorf("service enumeration PTR = %v", ptr)
	}
	if ptr := m.Answer[1].(*dns.PTR); ptr.Hdr.Name != "_xle._tcp.local." || ptr.Ptr != "xle-7._xle._tcp.local." {
		t.Errorf("service PTR = %v", ptr)
	}
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 120 {
			t.Errorf("%v: TTL %d, want 120", rr, rr.Header().Ttl)
		}
	}
	// The packed packet parses back, and the TXT strings carry one literal
	// backslash on the wire.
	buf, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(buf), "\x07os=12\\5") {
		t.Errorf("TXT on the wire lacks os=12\\5 as one 7-byte string: %q", buf)
	}
	var back dns.Msg
	if err := back.Unpack(buf); err != nil || len(back.Answer) != 5 {
		t.Fatalf("announcement does not round-trip: %v, %v", err, back)
	}

	g := a.goodbye()
	if types(g.Answer) != types(m.Answer) {
		t.Errorf("goodbye records %s differ from announcement %s", types(g.Answer), types(m.Answer))
	}
	for _, rr := range g.Answer {
		if rr.Header().Ttl != 0 {
			t.Errorf("goodbye %v has TTL %d, want 0", rr, rr.Header().Ttl)
		}
	}
	if m.Answer[0].Header().Ttl != 120 {
		t.Error("goodbye changed the records of later announcements")
	}
}

func TestRespond(t *testing.T) {
	mdnsSrc := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5353}
	legacySrc := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 40000}
	q := func(name string, qtype uint16, qu bool) dns.Question {
		c := uint16(dns.ClassINET)
		if qu {
			c |= mdnssock.ClassUnicast
		}
		return dns.Question{Name: name, Qtype: qtype, Qclass: c}
	}
	known := &dns.PTR{Hdr: dns.RR_Header{Name: "_xle._tcp.local.", Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 100}, Ptr: "xle-7._xle._tcp.local."}
	staleKnown := &dns.PTR{Hdr: dns.RR_Header{Name: "_xle._tcp.local.", Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 30}, Ptr: "xle-7._xle._tcp.local."}
	tests := []struct {
		name    string
		msg     dns.Msg
		src     *net.UDPAddr
		want    []string // per reply: "m:<types>" multicast or "u:<types>" unicast
		checkFn func(t *testing.T, replies []reply)
	}{
		{name: "QM PTR gets a multicast answer on the query's interface", msg: dns.Msg{Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}}, src: mdnsSrc,
			want: []string{"m:PTR,SRV!,A!,TXT!"},
			checkFn: func(t *testing.T, r []reply) {
				if r[0].ifIndex != 3 || !r[0].to.IP.Equal(net.IPv4(224, 0, 0, 251)) || r[0].to.Port != 5353 || r[0].msg.Id != 0 {
					t.Errorf("multicast reply to %v on %d id %d", r[0].to, r[0].ifIndex, r[0].msg.Id)
				}
			}},
		{name: "names are case-insensitive", msg: dns.Msg{Question: []dns.Question{q("XLE-7._XLE._tcp.Local.", dns.TypeTXT, false)}}, src: mdnsSrc, want: []string{"m:TXT!"}},
		{name: "QU gets a unicast answer", msg: dns.Msg{Question: []dns.Question{q("xle-7._xle._tcp.local.", dns.TypeSRV, true)}}, src: mdnsSrc,
			want: []string{"u:SRV!,A!"},
			checkFn: func(t *testing.T, r []reply) {
				if r[0].to != mdnsSrc {
					t.Errorf("unicast reply to %v, want %v", r[0].to, mdnsSrc)
				}
			}},
		{name: "QM and QU mixed get both", msg: dns.Msg{Question: []dns.Question{q("xle-7.local.", dns.TypeA, false), q("xle-7._xle._tcp.local.", dns.TypeTXT, true)}}, src: mdnsSrc,
			want: []string{"m:A!", "u:TXT!"}},
		{name: "legacy query: unicast, id and question echoed, TTL capped, no cache-flush", msg: dns.Msg{MsgHdr: dns.MsgHdr{Id: 4242}, Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}}, src: legacySrc,
			want: []string{"u:PTR,SRV,A,TXT"},
			checkFn: func(t *testing.T, r []reply) {
				m := r[0].msg
				if m.Id != 4242 || len(m.Question) != 1 || r[0].to != legacySrc {
					t.Errorf("legacy reply id %d questions %v to %v", m.Id, m.Question, r[0].to)
				}
				for _, rr := range m.Answer {
					if rr.Header().Ttl != 10 {
						t.Errorf("legacy %v TTL %d, want 10", rr, rr.Header().Ttl)
					}
				}
			}},
		{name: "known answer with enough TTL suppresses the PTR", msg: dns.Msg{Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}, Answer: []dns.RR{known}}, src: mdnsSrc,
			want: []string{"m:SRV!,A!,TXT!"}},
		{name: "known answer near expiry does not suppress", msg: dns.Msg{Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}, Answer: []dns.RR{staleKnown}}, src: mdnsSrc,
			want: []string{"m:PTR,SRV!,A!,TXT!"}},
		{name: "service enumeration", msg: dns.Msg{Question: []dns.Question{q("_services._dns-sd._udp.local.", dns.TypePTR, false)}}, src: mdnsSrc, want: []string{"m:PTR"}},
		{name: "other service: silence", msg: dns.Msg{Question: []dns.Question{q("_lekiwi._tcp.local.", dns.TypePTR, false)}}, src: mdnsSrc},
		{name: "responses are not queries", msg: dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}}, src: mdnsSrc},
		{name: "non-zero opcode ignored", msg: dns.Msg{MsgHdr: dns.MsgHdr{Opcode: dns.OpcodeUpdate}, Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}}, src: mdnsSrc},
		{name: "non-zero rcode ignored", msg: dns.Msg{MsgHdr: dns.MsgHdr{Rcode: dns.RcodeServerFailure}, Question: []dns.Question{q("_xle._tcp.local.", dns.TypePTR, false)}}, src: mdnsSrc},
		{name: "CHAOS class ignored", msg: dns.Msg{Question: []dns.Question{{Name: "_xle._tcp.local.", Qtype: dns.TypePTR, Qclass: dns.ClassCHAOS}}}, src: mdnsSrc},
		{name: "truncated query still answered", msg: dns.Msg{MsgHdr: dns.MsgHdr{Truncated: true}, Question: []dns.Question{q("xle-7._xle._tcp.local.", dns.TypeTXT, false)}}, src: mdnsSrc, want: []string{"m:TXT!"}},
	}
	a := testAdvertiser(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			replies := a.respond(&tt.msg, tt.src, 3)
			var got []string
			for _, r := range replies {
				kind := "u:"
				if r.to.IP.IsMulticast() {
					kind = "m:"
				}
				got = append(got, kind+types(r.msg.Answer))
				if !r.msg.Response || !r.msg.Authoritative {
					t.Errorf("reply header %+v not an authoritative response", r.msg.MsgHdr)
				}
				if _, err := r.msg.Pack(); err != nil {
					t.Errorf("reply does not pack: %v", err)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("replies = %v, want %v", got, tt.want)
			}
			if tt.checkFn != nil {
				tt.checkFn(t, replies)
			}
		})
	}
}

// FuzzRespond feeds arbitrary packets to the responder: it must not panic
// and every reply must pack.
func FuzzRespond(f *testing.F) {
	for _, seed := range []*dns.Msg{
		new(dns.Msg).SetQuestion("_xle._tcp.local.", dns.TypePTR),
		new(dns.Msg).SetQuestion("xle-7._xle._tcp.local.", dns.TypeANY),
		new(dns.Msg).SetQuestion("xle-7.local.", dns.TypeA),
	} {
		buf, err := seed.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(buf, uint16(5353))
	}
	a := testAdvertiser(f)
	f.Fuzz(func(t *testing.T, packet []byte, port uint16) {
		var m dns.Msg
		if m.Unpack(packet) != nil {
			return
		}
		for _, r := range a.respond(&m, &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: int(port)}, 1) {
			if _, err := r.msg.Pack(); err != nil {
				t.Fatalf("reply to %v does not pack: %v", m, err)
			}
		}
	})
}
