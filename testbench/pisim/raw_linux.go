package pisim

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// rawSender sends DHCP client frames on an AF_PACKET socket, so that each
// simulated Pi's DISCOVER leaves from 0.0.0.0:68 with the Pi's own MAC as
// the Ethernet source, as the real bootloader's do, even when the
// interface has an address (which the TFTP phase needs). The socket is
// opened with protocol 0: it sends, and receives nothing.
type rawSender struct {
	fd      int
	ifindex int
}

func openRawSender(iface string) (*rawSender, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("pisim: interface %q for the simulated Pis: %w", iface, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pisim: opening a packet socket on %s (needs root or CAP_NET_RAW): %w", iface, err)
	}
	return &rawSender{fd: fd, ifindex: ifi.Index}, nil
}

func (r *rawSender) send(src net.HardwareAddr, dhcp []byte) error {
	frame := buildDHCPFrame(src, dhcp)
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: r.ifindex, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	if err := unix.Sendto(r.fd, frame, 0, sa); err != nil {
		return fmt.Errorf("pisim: sending DHCP frame from %v: %w", src, err)
	}
	return nil
}

func (r *rawSender) close() error { return unix.Close(r.fd) }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// buildDHCPFrame wraps a DHCP message in Ethernet (broadcast destination,
// src as source), IPv4 (0.0.0.0 → 255.255.255.255, TTL 64) and UDP (68 →
// 67) headers with valid checksums.
func buildDHCPFrame(src net.HardwareAddr, dhcp []byte) []byte {
	const ethLen, ipLen, udpLen = 14, 20, 8
	f := make([]byte, ethLen+ipLen+udpLen+len(dhcp))
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_IP)
	ip := f[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipLen+udpLen+len(dhcp)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[16:20], []byte{255, 255, 255, 255}) // source stays 0.0.0.0
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip, 0))
	udp := f[ethLen+ipLen:]
	binary.BigEndian.PutUint16(udp[0:2], 68)
	binary.BigEndian.PutUint16(udp[2:4], 67)
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen+len(dhcp)))
	copy(udp[8:], dhcp)
	// Pseudo header: source 0.0.0.0, destination 255.255.255.255, protocol, length.
	pseudo := uint32(0xffff) + uint32(0xffff) + uint32(unix.IPPROTO_UDP) + uint32(udpLen+len(dhcp))
	cs := checksum(udp, pseudo)
	if cs == 0 {
		cs = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(udp[6:8], cs)
	return f
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
