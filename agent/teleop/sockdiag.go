package teleop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// Bytes are a TCP connection's lifetime byte counters.
type Bytes struct {
	Received uint64 // tcpi_bytes_received: payload bytes from the peer
	Acked    uint64 // tcpi_bytes_acked: payload bytes sent and acknowledged by the peer
}

// ByteCounter reads a connection's byte counters. /proc/net/tcp has none,
// so the real one asks the kernel over NETLINK_SOCK_DIAG.
type ByteCounter interface {
	// TCPBytes returns the counters of the established TCP connection
	// local<->remote whose socket inode is inode. ok is false when the
	// kernel no longer knows the connection.
	TCPBytes(local, remote netip.AddrPort, inode uint64) (b Bytes, ok bool, err error)
	Close() error
}

// Netlink and inet_diag constants (linux/sock_diag.h, linux/inet_diag.h).
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagInfo     = 2  // INET_DIAG_INFO attribute: struct tcp_info
	reqLen           = 56 // sizeof(struct inet_diag_req_v2)
	msgLen           = 72 // sizeof(struct inet_diag_msg)
	// Offsets in struct tcp_info (linux/tcp.h); both fields exist since
	// Linux 4.2, so every Raspberry Pi OS kernel has them.
	tcpiBytesAcked    = 120
	tcpiBytesReceived = 128
)

// SockDiag is a ByteCounter over one NETLINK_SOCK_DIAG socket. It asks for
// one connection at a time by its exact address pair (not a dump of every
// socket), so its cost grows with teleop connections, not with all the
// robot's sockets. Safe for concurrent use.
type SockDiag struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// NewSockDiag opens the netlink socket. It needs no privileges for the
// caller's own network namespace.
func NewSockDiag() (*SockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open NETLINK_SOCK_DIAG socket (kernel without CONFIG_INET_DIAG?): %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind NETLINK_SOCK_DIAG socket: %w", err)
	}
	// A reply that never comes must not hang the poll loop.
	tv := unix.Timeval{Sec: 1}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &SockDiag{fd: fd, buf: make([]byte, 8192)}, nil
}

// Close closes the netlink socket.
func (s *SockDiag) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// TCPBytes implements ByteCounter.
func (s *SockDiag) TCPBytes(local, remote netip.AddrPort, inode uint64) (Bytes, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return Bytes{}, false, errors.New("sock_diag: closed")
	}
	s.seq++
	req := buildDiagRequest(s.seq, local, remote)
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Bytes{}, false, fmt.Errorf("sock_diag request for %s<->%s: %w", local, remote, err)
	}
	for range 4 { // a single-socket lookup answers with one message; skip stale ones
		n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
		if err != nil {
			return Bytes{}, false, fmt.Errorf("sock_diag reply for %s<->%s: %w", local, remote, err)
		}
		b, ok, seq, err := parseDiagReply(s.buf[:n], remote.Port(), inode)
		if seq != s.seq {
			continue
		}
		return b, ok, err
	}
	return Bytes{}, false, fmt.Errorf("sock_diag: no reply for %s<->%s", local, remote)
}

// buildDiagRequest builds nlmsghdr + inet_diag_req_v2 for one established
// TCP connection, without cookie (INET_DIAG_NOCOOKIE).
func buildDiagRequest(seq uint32, local, remote netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofNlMsghdr+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], seq)
	r := b[unix.SizeofNlMsghdr:]
	family := byte(unix.AF_INET)
	if !local.Addr().Is4() || !remote.Addr().Is4() {
		family = unix.AF_INET6
	}
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = 1 << (inetDiagInfo - 1)
	ne.PutUint32(r[4:], 1<<unix.BPF_TCP_ESTABLISHED)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	putDiagAddr(id[4:20], local.Addr(), family)
	putDiagAddr(id[20:36], remote.Addr(), family)
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	return b
}

func putDiagAddr(dst []byte, a netip.Addr, family byte) {
	if family == unix.AF_INET {
		a4 := a.As4()
		copy(dst, a4[:])
		return
	}
	a16 := a.As16() // IPv4 becomes ::ffff:a.b.c.d, as a dual-stack socket sees it
	copy(dst, a16[:])
}

// parseDiagReply reads one netlink reply: the inet_diag_msg's counters if
// its inode matches, ok=false if the kernel reports no such socket.
func parseDiagReply(b []byte, wantDport uint16, inode uint64) (Bytes, bool, uint32, error) {
	ne := binary.NativeEndian
	if len(b) < unix.SizeofNlMsghdr {
		return Bytes{}, false, 0, fmt.Errorf("sock_diag reply of %d bytes is shorter than a netlink header", len(b))
	}
	l := int(ne.Uint32(b[0:]))
	typ := ne.Uint16(b[4:])
	seq := ne.Uint32(b[8:])
	if l < unix.SizeofNlMsghdr || l > len(b) {
		return Bytes{}, false, seq, fmt.Errorf("sock_diag reply length %d does not fit %d bytes", l, len(b))
	}
	body := b[unix.SizeofNlMsghdr:l]
	switch typ {
	case unix.NLMSG_ERROR:
		if len(body) < 4 {
			return Bytes{}, false, seq, errors.New("sock_diag: short netlink error")
		}
		errno := -int32(ne.Uint32(body))
		if errno == 0 || unix.Errno(errno) == unix.ENOENT {
			return Bytes{}, false, seq, nil // gone since /proc/net/tcp was read
		}
		return Bytes{}, false, seq, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
	case sockDiagByFamily:
	default:
		return Bytes{}, false, seq, fmt.Errorf("sock_diag: unexpected netlink message type %d", typ)
	}
	if len(body) < msgLen {
		return Bytes{}, false, seq, fmt.Errorf("sock_diag: inet_diag_msg of %d bytes, want %d", len(body), msgLen)
	}
	// The kernel's lookup falls back to the listening socket when the
	// connection is gone: only an established socket with our peer counts.
	if body[1] != unix.BPF_TCP_ESTABLISHED || binary.BigEndian.Uint16(body[6:]) != wantDport {
		return Bytes{}, false, seq, nil
	}
	// idiag_inode is 32 bits wide; compare what it can hold.
	if got := ne.Uint32(body[68:]); inode != 0 && got != uint32(inode) {
		return Bytes{}, false, seq, nil // the address pair now belongs to another socket
	}
	for attrs := body[msgLen:]; len(attrs) >= 4; {
		alen := int(ne.Uint16(attrs[0:]))
		atyp := ne.Uint16(attrs[2:])
		if alen < 4 || alen > len(attrs) {
			return Bytes{}, false, seq, fmt.Errorf("sock_diag: attribute length %d out of range", alen)
		}
		if atyp == inetDiagInfo {
			info := attrs[4:alen]
			if len(info) < tcpiBytesReceived+8 {
				return Bytes{}, false, seq, fmt.Errorf("sock_diag: tcp_info of %d bytes has no byte counters (kernel older than 4.2)", len(info))
			}
			return Bytes{Acked: ne.Uint64(info[tcpiBytesAcked:]), Received: ne.Uint64(info[tcpiBytesReceived:])}, true, seq, nil
		}
		adv := (alen + 3) &^ 3
		if adv > len(attrs) {
			break
		}
		attrs = attrs[adv:]
	}
	return Bytes{}, false, seq, errors.New("sock_diag: reply without tcp_info")
}
