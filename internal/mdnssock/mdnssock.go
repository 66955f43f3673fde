// Package mdnssock opens the IPv4 multicast DNS socket (RFC 6762) that both
// the robot's advertiser (agent/mdns) and control's browser
// (control/discovery) use: bound to 0.0.0.0:5353 with SO_REUSEADDR so that
// it coexists with an Avahi daemon on the same host, joined to 224.0.0.251
// on each chosen interface, with IP TTL 255 and multicast loopback, and
// reporting the interface each packet arrived on so that multicast answers
// go out the same way. It knows nothing of DNS messages; the callers parse
// and build those.
package mdnssock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Port is the mDNS port (RFC 6762 §3). Responses must come from it and
// queries sent from it are "fully compliant", answered by multicast.
const Port = 5353

// ClassUnicast is the top bit of a question's class: the querier prefers a
// unicast answer (a "QU" question, RFC 6762 §5.4). In a record's class the
// same bit is the cache-flush bit (RFC 6762 §10.2).
const ClassUnicast = 1 << 15

// Group returns the IPv4 mDNS group address 224.0.0.251:5353. It is a new
// value on each call, so callers may keep or modify it.
func Group() *net.UDPAddr {
	return &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: Port}
}

// Interfaces resolves names to interfaces; with no names, every interface
// that is up, multicast-capable, not loopback and has an IPv4 address.
func Interfaces(names []string) ([]net.Interface, error) {
	if len(names) > 0 {
		ifaces := make([]net.Interface, 0, len(names))
		for _, name := range names {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return nil, fmt.Errorf("mDNS interface %q: %w", name, err)
			}
			ifaces = append(ifaces, *ifi)
		}
		return ifaces, nil
	}
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces for mDNS: %w", err)
	}
	var ifaces []net.Interface
	for _, ifi := range all {
		if usable(ifi) {
			ifaces = append(ifaces, ifi)
		}
	}
	if len(ifaces) == 0 {
		return nil, errors.New("no up, multicast-capable, non-loopback interface with an IPv4 address for mDNS: name one in the configuration or bring a network up")
	}
	return ifaces, nil
}

// usable reports whether Interfaces picks ifi when no names are given.
func usable(ifi net.Interface) bool {
	if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 || ifi.Flags&net.FlagLoopback != 0 {
		return false
	}
	return len(IPv4Addrs(ifi)) > 0
}

// IPv4Addrs returns the IPv4 addresses of ifi, in their 4-byte form; none if
// they cannot be listed.
func IPv4Addrs(ifi net.Interface) []net.IP {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			ips = append(ips, ipn.IP.To4())
		}
	}
	return ips
}

// Listen binds 0.0.0.0:5353 with SO_REUSEADDR (so that it coexists with an
// Avahi daemon on the same host, which does the same) and joins the mDNS
// group on each interface; it fails only if no interface could join.
// Packets carry the interface they arrived on (ipv4.FlagInterface) so that
// multicast answers go out the same way.
func Listen(ifaces []net.Interface) (*ipv4.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		if err := c.Control(func(fd uintptr) {
			sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}); err != nil {
			return err
		}
		return sockErr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", Port))
	if err != nil {
		return nil, fmt.Errorf("bind UDP port %d for mDNS (is another responder bound without SO_REUSEADDR?): %w", Port, err)
	}
	p := ipv4.NewPacketConn(pc)
	joined := 0
	var joinErr error
	for i := range ifaces {
		if err := p.JoinGroup(&ifaces[i], Group()); err != nil {
			joinErr = errors.Join(joinErr, fmt.Errorf("join mDNS group on %s: %w", ifaces[i].Name, err))
			continue
		}
		joined++
	}
	if joined == 0 {
		pc.Close()
		return nil, fmt.Errorf("could not join the mDNS group on any interface: %w", joinErr)
	}
	for _, set := range []func() error{
		func() error { return p.SetControlMessage(ipv4.FlagInterface, true) },
		// RFC 6762 §11: mDNS packets are sent with IP TTL 255.
		func() error { return p.SetMulticastTTL(255) },
		func() error { return p.SetTTL(255) },
		// Loopback lets an Avahi daemon on the same host hear us.
		func() error { return p.SetMulticastLoopback(true) },
	} {
		if err := set(); err != nil {
			pc.Close()
			return nil, fmt.Errorf("set mDNS socket option: %w", err)
		}
	}
	return p, nil
}
