package discovery

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lekiwi/heartbeat/protocol"
)

// Refresh timing of RFC 6762 §5.2: ask again at 80% of a record's TTL, and
// again every 5% until it expires.
const (
	refreshAt    = 0.80
	refreshEvery = 0.05
	// minAskGap limits how often one name is asked for when answers arrive
	// incomplete, so a responder that never sends a record is not hammered.
	minAskGap = time.Second
	// maxInstances bounds the cache against a network full of (or a host
	// faking) services; beyond it new instances are ignored until old ones
	// expire.
	maxInstances = 4096
)

// record is the lifetime of one cached resource record.
type record struct {
	received time.Time
	ttl      time.Duration
	asked    time.Time // last refresh query for it
}

func (r record) valid(now time.Time) bool { return r.ttl > 0 && now.Before(r.received.Add(r.ttl)) }

// dueForRefresh reports whether r is past 80% of its TTL and was not asked
// for in the last 5% of it.
func (r record) dueForRefresh(now time.Time) bool {
	if !r.valid(now) {
		return false
	}
	age := now.Sub(r.received)
	return age >= time.Duration(refreshAt*float64(r.ttl)) && now.Sub(r.asked) >= time.Duration(refreshEvery*float64(r.ttl))
}

func newRecord(ttl uint32, now time.Time) record {
	return record{received: now, ttl: time.Duration(ttl) * time.Second}
}

// instance is what is known about one service instance.
type instance struct {
	name    string // lowercase, "xle-7._xle._tcp.local."
	service string // "_xle._tcp.local."
	typ     protocol.RobotType
	ptr     record
	srv     record
	host    string
	port    int
	txt     record
	txtKV   map[string]string
	seen    time.Time
	asked   time.Time   // last query for missing SRV/TXT
	last    *Discovered // last reported, nil if never complete
	goodbye bool
}

type hostAddr struct {
	addr  netip.Addr
	rec   record
	asked time.Time
}

// cache holds the records of the browsed services. It is not safe for
// concurrent use; Browser serialises access.
type cache struct {
	instances map[string]*instance
	hosts     map[string]*hostAddr
}

func newCache() *cache {
	return &cache{instances: make(map[string]*instance), hosts: make(map[string]*hostAddr)}
}

// apply caches the records of one response and returns the instances they
// touched, PTRs first so that the other records find their instance.
func (c *cache) apply(types map[string]protocol.RobotType, rrs []dns.RR, now time.Time) []*instance {
	touched := make(map[string]*instance)
	for _, rr := range rrs {
		ptr, ok := rr.(*dns.PTR)
		if !ok {
			continue
		}
		service := strings.ToLower(ptr.Hdr.Name)
		typ, ok := types[service]
		if !ok {
			continue
		}
		name := strings.ToLower(ptr.Ptr)
		in := c.instance(name, service, typ, ptr.Hdr.Ttl > 0)
		if in == nil {
			continue
		}
		if ptr.Hdr.Ttl == 0 {
			in.goodbye = true // RFC 6762 §10.1
		} else {
			in.ptr, in.goodbye = newRecord(ptr.Hdr.Ttl, now), false
		}
		touched[name] = in
	}
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.SRV:
			in := c.instanceOf(types, rr.Hdr.Name, rr.Hdr.Ttl > 0)
			if in == nil {
				continue
			}
			in.srv, in.host, in.port = newRecord(rr.Hdr.Ttl, now), strings.ToLower(rr.Target), int(rr.Port)
			touched[in.name] = in
		case *dns.TXT:
			in := c.instanceOf(types, rr.Hdr.Name, rr.Hdr.Ttl > 0)
			if in == nil {
				continue
			}
			kv, err := ParseTXT(txtRData(rr))
			if err != nil {
				continue
			}
			in.txt, in.txtKV = newRecord(rr.Hdr.Ttl, now), kv
			touched[in.name] = in
		case *dns.A:
			addr, ok := netip.AddrFromSlice(rr.A.To4())
			if !ok {
				continue
			}
			host := strings.ToLower(rr.Hdr.Name)
			h := c.hosts[host]
			if h == nil {
				if rr.Hdr.Ttl == 0 {
					continue
				}
				h = &hostAddr{}
				c.hosts[host] = h
			}
			h.addr, h.rec = addr, newRecord(rr.Hdr.Ttl, now)
			for _, in := range c.instances {
				if in.host == host {
					touched[in.name] = in
				}
			}
		}
	}
	out := slices.Collect(maps.Values(touched))
	for _, in := range out {
		in.seen = now
	}
	slices.SortFunc(out, func(a, b *instance) int { return strings.Compare(a.name, b.name) })
	return out
}

// instance returns the named instance, creating it if create.
func (c *cache) instance(name, service string, typ protocol.RobotType, create bool) *instance {
	if in := c.instances[name]; in != nil {
		return in
	}
	if !create || len(c.instances) >= maxInstances || !strings.HasSuffix(name, "."+service) || len(name) == len(service)+1 {
		return nil
	}
	in := &instance{name: name, service: service, typ: typ}
	c.instances[name] = in
	return in
}

// instanceOf finds the instance a SRV or TXT record belongs to by the
// service type its name ends in.
func (c *cache) instanceOf(types map[string]protocol.RobotType, name string, create bool) *instance {
	name = strings.ToLower(name)
	for service, typ := range types {
		if strings.HasSuffix(name, "."+service) {
			return c.instance(name, service, typ, create)
		}
	}
	return nil
}

// txtRData returns the wire form of a TXT record's strings. miekg/dns
// hands them out escaped (`\"`, `\\`, `\DDD`); packing undoes that exactly.
func txtRData(rr *dns.TXT) []byte {
	t := &dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: rr.Txt}
	buf := make([]byte, dns.Len(t)+16)
	off, err := dns.PackRR(t, buf, 0, nil, false)
	const rootHeader = 1 + 10 // root name, type, class, TTL, rdlength
	if err != nil || off < rootHeader {
		return nil
	}
	return buf[rootHeader:off]
}

// discovered reports the instance as a Discovered if it is complete.
func (c *cache) discovered(in *instance) (Discovered, bool) {
	if in.srv.ttl == 0 || in.txt.ttl == 0 {
		return Discovered{}, false
	}
	h := c.hosts[in.host]
	if h == nil || !h.addr.IsValid() {
		return Discovered{}, false
	}
	id := in.txtKV[keyRobotID]
	if id == "" {
		id = strings.TrimSuffix(in.name, "."+in.service)
	}
	return Discovered{
		Instance: in.name, RobotID: id, Type: in.typ, Host: in.host, Addr: h.addr,
		Port: in.port, TXT: maps.Clone(in.txtKV), Seen: in.seen,
	}, true
}

// change decides whether to report the instance after new records: when it
// said goodbye (and was reported before), when it first became complete, or
// when its address, port or TXT differ from the last report.
func (c *cache) change(in *instance) (Discovered, bool) {
	if in.goodbye {
		delete(c.instances, in.name)
		if in.last == nil {
			return Discovered{}, false
		}
		d := *in.last
		d.Gone, d.Seen = true, in.seen
		return d, true
	}
	d, ok := c.discovered(in)
	if !ok {
		return Discovered{}, false
	}
	if in.last != nil && sameRobot(*in.last, d) {
		in.last.Seen = d.Seen
		return Discovered{}, false
	}
	in.last = &d
	return d, true
}

func sameRobot(a, b Discovered) bool {
	return a.Instance == b.Instance && a.RobotID == b.RobotID && a.Host == b.Host &&
		a.Addr == b.Addr && a.Port == b.Port && maps.Equal(a.TXT, b.TXT)
}

// missing returns questions for what an instance still lacks: its SRV and
// TXT, or its host's address; at most once per minAskGap per name.
func (c *cache) missing(in *instance, now time.Time) []dns.Question {
	if in.goodbye {
		return nil
	}
	var qs []dns.Question
	if (in.srv.ttl == 0 || in.txt.ttl == 0) && now.Sub(in.asked) >= minAskGap {
		in.asked = now
		qs = append(qs,
			dns.Question{Name: in.name, Qtype: dns.TypeSRV, Qclass: dns.ClassINET},
			dns.Question{Name: in.name, Qtype: dns.TypeTXT, Qclass: dns.ClassINET})
	}
	if in.host != "" {
		h := c.hosts[in.host]
		if h == nil {
			h = &hostAddr{}
			c.hosts[in.host] = h
		}
		if !h.addr.IsValid() && now.Sub(h.asked) >= minAskGap {
			h.asked = now
			qs = append(qs, dns.Question{Name: in.host, Qtype: dns.TypeA, Qclass: dns.ClassINET})
		}
	}
	return qs
}

// expire drops records past their TTL and returns the reported robots that
// have no record left.
func (c *cache) expire(now time.Time) []Discovered {
	var gone []Discovered
	for _, name := range slices.Sorted(maps.Keys(c.instances)) {
		in := c.instances[name]
		for _, r := range []*record{&in.ptr, &in.srv, &in.txt} {
			if r.ttl > 0 && !r.valid(now) {
				*r = record{}
			}
		}
		if in.ptr.ttl > 0 || in.srv.ttl > 0 || in.txt.ttl > 0 {
			continue
		}
		delete(c.instances, name)
		if in.last != nil {
			d := *in.last
			d.Gone = true
			gone = append(gone, d)
		}
	}
	used := make(map[string]bool, len(c.instances))
	for _, in := range c.instances {
		used[in.host] = true
	}
	for name, h := range c.hosts {
		if (h.addr.IsValid() && !h.rec.valid(now)) || (!h.addr.IsValid() && !used[name]) {
			delete(c.hosts, name)
		}
	}
	return gone
}

// refresh returns questions for records of reported robots that are past
// 80% of their TTL (RFC 6762 §5.2).
func (c *cache) refresh(now time.Time) []dns.Question {
	var qs []dns.Question
	for _, name := range slices.Sorted(maps.Keys(c.instances)) {
		in := c.instances[name]
		if in.last == nil {
			continue
		}
		if in.srv.dueForRefresh(now) {
			in.srv.asked = now
			qs = append(qs, dns.Question{Name: in.name, Qtype: dns.TypeSRV, Qclass: dns.ClassINET})
		}
		if in.txt.dueForRefresh(now) {
			in.txt.asked = now
			qs = append(qs, dns.Question{Name: in.name, Qtype: dns.TypeTXT, Qclass: dns.ClassINET})
		}
		if h := c.hosts[in.host]; h != nil && h.rec.dueForRefresh(now) {
			h.rec.asked = now
			qs = append(qs, dns.Question{Name: in.host, Qtype: dns.TypeA, Qclass: dns.ClassINET})
		}
	}
	return qs
}

// knownAnswers lists the PTRs with more than half their TTL left, for
// known-answer suppression (RFC 6762 §7.1).
func (c *cache) knownAnswers(now time.Time) []dns.RR {
	var out []dns.RR
	for _, name := range slices.Sorted(maps.Keys(c.instances)) {
		in := c.instances[name]
		if !in.ptr.valid(now) {
			continue
		}
		left := in.ptr.received.Add(in.ptr.ttl).Sub(now)
		if left <= in.ptr.ttl/2 {
			continue
		}
		out = append(out, &dns.PTR{
			Hdr: dns.RR_Header{Name: in.service, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: uint32(left / time.Second)},
			Ptr: in.name,
		})
	}
	return out
}
