package pid1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/jsimonetti/rtnetlink/rtnl"
	"golang.org/x/sys/unix"
)

// VendorClass is the DHCP vendor class (option 60) the provisioning
// environment sends, so the factory's DHCP and station logs tell it from
// the Pi bootloader ("PXEClient:Arch:00000:UNDI:002001") on the same MAC.
const VendorClass = "lekiwi-provisioning"

// netConfig tunes bringing up the factory network; zero values are the
// factory floor's (netDefaults).
type netConfig struct {
	sysRoot string // sysfs, to tell wireless links
	etcDir  string // where resolv.conf is written

	carrierWait time.Duration // for the links' carrier, each round
	dhcpTimeout time.Duration // for each DHCP answer
	dhcpRetries int           // sends of each DHCP message
	backoff     time.Duration // between rounds, doubling up to maxBackoff
	maxBackoff  time.Duration
	sleep       func(context.Context, time.Duration) error
	logf        func(format string, args ...any)
}

func (nc *netConfig) defaults() {
	if nc.carrierWait <= 0 {
		nc.carrierWait = 10 * time.Second
	}
	if nc.dhcpTimeout <= 0 {
		nc.dhcpTimeout = 2 * time.Second
	}
	if nc.dhcpRetries <= 0 {
		nc.dhcpRetries = 3
	}
	if nc.backoff <= 0 {
		nc.backoff = 2 * time.Second
	}
	if nc.maxBackoff <= 0 {
		nc.maxBackoff = 30 * time.Second
	}
	if nc.sleep == nil {
		nc.sleep = sleep
	}
	if nc.logf == nil {
		nc.logf = func(string, ...any) {}
	}
}

// lease is the DHCP lease the network step applied to a link; keep renews
// it. Its netlink and DHCP sockets were opened by the goroutine that ran
// bringUpNetwork, so they stay in that goroutine's network namespace.
type lease struct {
	link    *net.Interface
	addr    netip.Prefix
	router  netip.Addr // invalid when the lease has none
	dns     []netip.Addr
	server  netip.Addr
	expires time.Duration

	rt     *rtnl.Conn
	client *nclient4.Client
	raw    *nclient4.Lease
}

// Close releases the lease's sockets (the address stays on the link).
func (l *lease) Close() error {
	return errors.Join(l.client.Close(), l.rt.Close())
}

// bringUpNetwork brings every wired link up and leases an address by DHCP
// on the first that gets one, applying it (address, default route) and
// writing resolv.conf. It tries again, with a backoff, until it has a
// lease or ctx ends, printing each round's outcome.
func bringUpNetwork(ctx context.Context, nc netConfig) (*lease, error) {
	nc.defaults()
	wait := nc.backoff
	for round := 1; ; round++ {
		l, err := networkRound(ctx, nc)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		nc.logf("network: %v (round %d; trying again in %s)", err, round, wait)
		if err := nc.sleep(ctx, wait); err != nil {
			return nil, err
		}
		wait = min(2*wait, nc.maxBackoff)
	}
}

// networkRound is one attempt over every wired link.
func networkRound(ctx context.Context, nc netConfig) (*lease, error) {
	rt, err := rtnl.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	keepRT := false
	defer func() {
		if !keepRT {
			rt.Close()
		}
	}()
	links, err := wiredLinks(rt, nc.sysRoot)
	if err != nil {
		return nil, err
	}
	if len(links) == 0 {
		return nil, errors.New("no wired network interface: is the Ethernet driver in the initramfs's modules (see above), or the USB Ethernet adapter plugged in?")
	}
	for _, ifc := range links {
		if err := rt.LinkUp(ifc); err != nil {
			nc.logf("network: %s: set up: %v", ifc.Name, err)
		}
	}
	carrier := waitCarrier(ctx, rt, links, nc)
	var states []string
	for _, ifc := range links {
		if carrier[ifc.Index] {
			states = append(states, ifc.Name+" ("+ifc.HardwareAddr.String()+") carrier up")
		} else {
			states = append(states, ifc.Name+" ("+ifc.HardwareAddr.String()+") no carrier")
		}
	}
	nc.logf("network: %s", strings.Join(states, ", "))
	var tried []string
	for _, ifc := range links {
		if !carrier[ifc.Index] {
			continue
		}
		l, err := leaseOn(ctx, rt, ifc, nc)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			tried = append(tried, fmt.Sprintf("%s: %v", ifc.Name, err))
			continue
		}
		keepRT = true
		return l, nil
	}
	if len(tried) == 0 {
		return nil, fmt.Errorf("no carrier on any wired link after %s: plug the board into the factory switch (and check the switch port's light)", nc.carrierWait)
	}
	return nil, fmt.Errorf("no DHCP lease: %s: check the factory DHCP server", strings.Join(tried, "; "))
}

// wiredLinks lists the Ethernet-like links: ARP type Ethernet, not
// loopback, not wireless (sysfs has a wireless or phy80211 entry for
// those).
func wiredLinks(rt *rtnl.Conn, sysRoot string) ([]*net.Interface, error) {
	msgs, err := rt.Conn.Link.List()
	if err != nil {
		return nil, fmt.Errorf("list network links: %w", err)
	}
	var out []*net.Interface
	for _, m := range msgs {
		if m.Type != unix.ARPHRD_ETHER || m.Flags&unix.IFF_LOOPBACK != 0 || m.Attributes == nil {
			continue
		}
		name := m.Attributes.Name
		if exists(filepath.Join(sysRoot, "class/net", name, "wireless")) || exists(filepath.Join(sysRoot, "class/net", name, "phy80211")) {
			continue
		}
		out = append(out, &net.Interface{Index: int(m.Index), Name: name, HardwareAddr: m.Attributes.Address, MTU: int(m.Attributes.MTU)})
	}
	slices.SortFunc(out, func(a, b *net.Interface) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// waitCarrier polls the links until all have carrier (IFF_LOWER_UP), or
// carrierWait passed, or 2 s passed since one had it (an unplugged second
// adapter must not hold up the plugged one), and returns which have it.
// An Ethernet PHY takes a few seconds to negotiate after the link is up.
func waitCarrier(ctx context.Context, rt *rtnl.Conn, links []*net.Interface, nc netConfig) map[int]bool {
	up := map[int]bool{}
	deadline := time.Now().Add(nc.carrierWait)
	for {
		for _, ifc := range links {
			if m, err := rt.Conn.Link.Get(uint32(ifc.Index)); err == nil && m.Flags&unix.IFF_LOWER_UP != 0 && !up[ifc.Index] {
				up[ifc.Index] = true
				if grace := time.Now().Add(2 * time.Second); grace.Before(deadline) {
					deadline = grace
				}
			}
		}
		if len(up) == len(links) || time.Now().After(deadline) || ctx.Err() != nil {
			return up
		}
		if nc.sleep(ctx, 100*time.Millisecond) != nil {
			return up
		}
	}
}

// dhcpModifiers make the provisioning environment's DHCP messages: the
// vendor class, and a client identifier of the usual form (type 1,
// Ethernet, and the MAC; RFC 2132 9.14), as udhcpc and dhclient send it.
func dhcpModifiers(mac net.HardwareAddr) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(VendorClass)),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, mac...))),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
			dhcpv4.OptionDomainName, dhcpv4.OptionDNSDomainSearchList),
	}
}

// leaseOn leases an address on ifc and applies it.
func leaseOn(ctx context.Context, rt *rtnl.Conn, ifc *net.Interface, nc netConfig) (*lease, error) {
	c, err := nclient4.New(ifc.Name, nclient4.WithTimeout(nc.dhcpTimeout), nclient4.WithRetry(nc.dhcpRetries))
	if err != nil {
		return nil, fmt.Errorf("open a DHCP socket: %w", err)
	}
	raw, err := c.Request(ctx, dhcpModifiers(ifc.HardwareAddr)...)
	if err != nil {
		c.Close()
		return nil, err
	}
	l, err := leaseFrom(raw.ACK)
	if err != nil {
		c.Close()
		return nil, err
	}
	l.link, l.rt, l.client, l.raw = ifc, rt, c, raw
	if err := l.apply(nc.etcDir); err != nil {
		c.Close()
		return nil, err
	}
	nc.logf("network: %s", l)
	return l, nil
}

// leaseFrom reads what the init applies from a DHCP ACK.
func leaseFrom(ack *dhcpv4.DHCPv4) (*lease, error) {
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return nil, errors.New("the DHCP server's ACK has no address")
	}
	mask := ack.SubnetMask()
	ones, bits := mask.Size()
	if mask == nil || bits != 32 || ones == 0 {
		return nil, fmt.Errorf("the DHCP server's ACK for %s has no subnet mask (option 1): configure one on the server", ip)
	}
	l := &lease{addr: netip.PrefixFrom(ip, ones), expires: ack.IPAddressLeaseTime(0)}
	if rs := ack.Router(); len(rs) > 0 {
		l.router, _ = netip.AddrFromSlice(rs[0].To4())
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			l.dns = append(l.dns, a)
		}
	}
	l.server, _ = netip.AddrFromSlice(ack.ServerIdentifier().To4())
	return l, nil
}

func (l *lease) String() string {
	s := fmt.Sprintf("%s leased %s from %s", l.link.Name, l.addr, l.server)
	if l.router.IsValid() {
		s += ", router " + l.router.String()
	} else {
		s += ", no router"
	}
	if len(l.dns) > 0 {
		var ds []string
		for _, d := range l.dns {
			ds = append(ds, d.String())
		}
		s += ", DNS " + strings.Join(ds, " ")
	}
	if l.expires > 0 {
		s += ", for " + l.expires.String()
	}
	return s
}

// apply puts the lease's address on the link, makes its router the
// default route and writes resolv.conf. It can be repeated.
func (l *lease) apply(etcDir string) error {
	ipnet := &net.IPNet{IP: l.addr.Addr().AsSlice(), Mask: net.CIDRMask(l.addr.Bits(), 32)}
	if err := l.rt.AddrAdd(l.link, ipnet); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", l.addr, l.link.Name, err)
	}
	if l.router.IsValid() {
		dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if err := l.rt.RouteReplace(l.link, dst, l.router.AsSlice(), rtnl.WithRouteSrc(ipnet)); err != nil {
			return fmt.Errorf("default route via %s on %s: %w", l.router, l.link.Name, err)
		}
	}
	return writeResolvConf(etcDir, l)
}

// writeResolvConf writes the lease's name servers and domain for the Go
// resolver (the station is usually an address, but need not be).
func writeResolvConf(etcDir string, l *lease) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# from the DHCP lease on %s (Lekiwi provisioning init)\n", l.link.Name)
	for _, d := range l.dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if d := l.raw.ACK.DomainName(); d != "" {
		fmt.Fprintf(&b, "search %s\n", d)
	}
	if err := os.MkdirAll(etcDir, 0o755); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(etcDir, "resolv.conf"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

// keep renews the lease at half its time until ctx ends, so a board held
// for hours on the factory floor does not keep an address the DHCP server
// gave to another. A renewal that fails is retried; once the lease has run
// out the init asks for a new one (which the server usually grants with
// the same address) and applies it.
func (l *lease) keep(ctx context.Context, nc netConfig) {
	nc.defaults()
	if l.expires <= 0 {
		return // an infinite lease
	}
	got := time.Now()
	next := l.raw.ACK.IPAddressRenewalTime(l.expires / 2)
	for {
		if nc.sleep(ctx, next) != nil {
			return
		}
		raw, err := l.client.Renew(ctx, l.raw, dhcpModifiers(l.link.HardwareAddr)...)
		if err != nil && time.Since(got) >= l.expires {
			raw, err = l.client.Request(ctx, dhcpModifiers(l.link.HardwareAddr)...)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			next = max(min(l.expires-time.Since(got), time.Minute)/2, 5*time.Second)
			nc.logf("network: renewing the lease of %s on %s: %v (trying again in %s)", l.addr, l.link.Name, err, next)
			continue
		}
		l.raw = raw
		fresh, err := leaseFrom(raw.ACK)
		if err == nil {
			fresh.link, fresh.rt, fresh.client, fresh.raw = l.link, l.rt, l.client, raw
			if fresh.addr != l.addr {
				nc.logf("network: the DHCP server moved %s from %s to %s", l.link.Name, l.addr, fresh.addr)
				_ = l.rt.AddrDel(l.link, &net.IPNet{IP: l.addr.Addr().AsSlice(), Mask: net.CIDRMask(l.addr.Bits(), 32)})
			}
			err = fresh.apply(nc.etcDir)
		}
		if err != nil {
			nc.logf("network: applying the renewed lease on %s: %v", l.link.Name, err)
		} else {
			*l = *fresh
			nc.logf("network: renewed %s on %s for %s", l.addr, l.link.Name, l.expires)
		}
		got = time.Now()
		next = raw.ACK.IPAddressRenewalTime(l.expires / 2)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
