package dhcp

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Lease is one address bound to one client in full mode.
type Lease struct {
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
}

// leaseFileVersion guards the on-disk format.
const leaseFileVersion = 1

type leaseFile struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

// pool hands out addresses from [start, end] and remembers who had which,
// so a client keeps its address across lease expiry and server restarts as
// long as nobody else needed it. Not safe for concurrent use: Server holds
// its lock around every call.
type pool struct {
	start, end netip.Addr
	exclude    netip.Addr // the server's own address
	path       string     // lease file; "" keeps leases in memory only
	byMAC      map[string]*Lease
	byIP       map[netip.Addr]*Lease
	// offered holds addresses promised in an OFFER but not yet ACKed; they
	// are not persisted and expire quickly.
	offered map[string]Lease
}

// maxPoolSize bounds the linear free-address scan.
const maxPoolSize = 1 << 16

func newPool(start, end, exclude netip.Addr, path string) (*pool, error) {
	if !start.Is4() || !end.Is4() {
		return nil, fmt.Errorf("dhcp: pool %v-%v: both ends must be IPv4 addresses", start, end)
	}
	if end.Less(start) {
		return nil, fmt.Errorf("dhcp: pool %v-%v: end is before start", start, end)
	}
	if n := ip4(end) - ip4(start) + 1; n > maxPoolSize {
		return nil, fmt.Errorf("dhcp: pool %v-%v has %d addresses, at most %d are supported", start, end, n, maxPoolSize)
	}
	p := &pool{start: start, end: end, exclude: exclude, path: path,
		byMAC: map[string]*Lease{}, byIP: map[netip.Addr]*Lease{}, offered: map[string]Lease{}}
	if err := p.load(); err != nil {
		return nil, err
	}
	return p, nil
}

func ip4(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func fromU32(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func (p *pool) contains(a netip.Addr) bool {
	return a.Is4() && !a.Less(p.start) && !p.end.Less(a) && a != p.exclude
}

func (p *pool) load() error {
	if p.path == "" {
		return nil
	}
	b, err := os.ReadFile(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dhcp: reading lease file: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("dhcp: lease file %s is corrupt (%w); move it aside to start with no leases", p.path, err)
	}
	if f.Version != leaseFileVersion {
		return fmt.Errorf("dhcp: lease file %s has version %d, this build reads %d", p.path, f.Version, leaseFileVersion)
	}
	for _, l := range f.Leases {
		mac, err := net.ParseMAC(l.MAC)
		if err != nil || !p.contains(l.IP) {
			continue // pool changed since: forget leases outside it
		}
		l.MAC = mac.String()
		if _, dup := p.byIP[l.IP]; dup {
			continue
		}
		lc := l
		p.byMAC[lc.MAC] = &lc
		p.byIP[lc.IP] = &lc
	}
	return nil
}

// save rewrites the lease file atomically: temp file in the same directory,
// fsync, rename, fsync of the directory, so a crash leaves either the old or
// the new file, never a torn one.
func (p *pool) save() error {
	if p.path == "" {
		return nil
	}
	f := leaseFile{Version: leaseFileVersion, Leases: p.list()}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return fmt.Errorf("dhcp: encoding leases: %w", err)
	}
	dir := filepath.Dir(p.path)
	tmp, err := os.CreateTemp(dir, ".leases-*")
	if err != nil {
		return fmt.Errorf("dhcp: writing lease file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("dhcp: writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("dhcp: syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("dhcp: closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), p.path); err != nil {
		return fmt.Errorf("dhcp: replacing lease file %s: %w", p.path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("dhcp: opening %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("dhcp: syncing directory %s: %w", dir, err)
	}
	return nil
}

func (p *pool) list() []Lease {
	out := make([]Lease, 0, len(p.byMAC))
	for _, l := range p.byMAC {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// offer picks an address for mac: its current or past lease, else the
// address it asked for if free, else the first address that is free (never
// leased, or whose lease expired). ok is false when the pool is exhausted.
func (p *pool) offer(mac string, want netip.Addr, now time.Time, hold time.Duration) (netip.Addr, bool) {
	if o, ok := p.offered[mac]; ok && now.Before(o.Expires) {
		return o.IP, true
	}
	if l, ok := p.byMAC[mac]; ok {
		p.offered[mac] = Lease{MAC: mac, IP: l.IP, Expires: now.Add(hold)}
		return l.IP, true
	}
	free := func(a netip.Addr) bool {
		if !p.contains(a) {
			return false
		}
		if l, ok := p.byIP[a]; ok && l.MAC != mac && now.Before(l.Expires) {
			return false
		}
		for m, o := range p.offered {
			if m != mac && o.IP == a && now.Before(o.Expires) {
				return false
			}
		}
		return true
	}
	pick := netip.Addr{}
	if want.IsValid() && free(want) {
		pick = want
	} else {
		for v := ip4(p.start); v <= ip4(p.end); v++ {
			if a := fromU32(v); free(a) {
				if _, everLeased := p.byIP[a]; !everLeased {
					pick = a
					break
				}
				if !pick.IsValid() {
					pick = a // expired lease of another client: last resort
				}
			}
			if v == 0xffffffff {
				break
			}
		}
	}
	if !pick.IsValid() {
		return pick, false
	}
	p.offered[mac] = Lease{MAC: mac, IP: pick, Expires: now.Add(hold)}
	return pick, true
}

// bind commits a lease for mac on addr if addr is what we offered or what
// it already holds, and the address is not someone else's live lease.
func (p *pool) bind(mac string, addr netip.Addr, now time.Time, leaseTime time.Duration) (Lease, bool) {
	if !p.contains(addr) {
		return Lease{}, false
	}
	if l, ok := p.byIP[addr]; ok && l.MAC != mac && now.Before(l.Expires) {
		return Lease{}, false
	}
	o, offered := p.offered[mac]
	cur, has := p.byMAC[mac]
	if !(offered && o.IP == addr) && !(has && cur.IP == addr) {
		return Lease{}, false
	}
	delete(p.offered, mac)
	if has && cur.IP != addr {
		delete(p.byIP, cur.IP)
	}
	if old, ok := p.byIP[addr]; ok && old.MAC != mac {
		delete(p.byMAC, old.MAC) // expired lease of another client, taken over
	}
	l := &Lease{MAC: mac, IP: addr, Expires: now.Add(leaseTime)}
	p.byMAC[mac] = l
	p.byIP[addr] = l
	return *l, true
}

// release ends mac's lease early (DHCPRELEASE/DECLINE) but keeps the
// association so the client gets the same address next time if it is free.
func (p *pool) release(mac string, now time.Time) bool {
	delete(p.offered, mac)
	l, ok := p.byMAC[mac]
	if !ok {
		return false
	}
	l.Expires = now
	return true
}

// expireOffers drops offers past their hold time.
func (p *pool) expireOffers(now time.Time) {
	for m, o := range p.offered {
		if !now.Before(o.Expires) {
			delete(p.offered, m)
		}
	}
}
