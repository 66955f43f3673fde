package teleop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Socket states as the kernel prints them in the "st" column (include/net/tcp_states.h).
// UDP sockets reuse them: a connected UDP socket is StateEstablished, an
// unconnected one StateClose.
const (
	StateEstablished uint8 = 0x01
	StateClose       uint8 = 0x07
	StateListen      uint8 = 0x0A
)

// Socket is one line of /proc/net/tcp, tcp6, udp or udp6.
type Socket struct {
	Local  netip.AddrPort // IPv4-mapped IPv6 addresses are unmapped
	Remote netip.AddrPort
	State  uint8
	UID    uint32
	Inode  uint64
}

// parseProcNet appends the sockets of a /proc/net/{tcp,tcp6,udp,udp6} table
// to dst. The first line is the column header and is skipped. Addresses are
// printed by the kernel as 32-bit words in host byte order (%08X of a
// __be32 loaded as a native integer), so they are decoded with the
// machine's native byte order: the table is always read on the machine that
// wrote it. Ports are printed after ntohs, so they are plain hex numbers.
//
// A malformed line makes the whole table an error: the format is fixed by
// the kernel, and a table we cannot read exactly must not be half-trusted.
func parseProcNet(data []byte, dst []Socket) ([]Socket, error) {
	// Skip the header line.
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return dst, nil // empty, or a header without sockets
	}
	rest := data[nl+1:]
	for lineNo := 2; len(rest) > 0; lineNo++ {
		var line []byte
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			line, rest = rest, nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		s, err := parseLine(line)
		if err != nil {
			return dst, fmt.Errorf("line %d %q: %w", lineNo, truncate(line, 80), err)
		}
		dst = append(dst, s)
	}
	return dst, nil
}

// parseLine parses "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...".
func parseLine(line []byte) (Socket, error) {
	var fields [10][]byte
	n := 0
	for i := 0; i < len(line) && n < len(fields); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		start := i
		for i < len(line) && line[i] != ' ' && line[i] != '\t' {
			i++
		}
		if i > start {
			fields[n] = line[start:i]
			n++
		}
	}
	if n < len(fields) {
		return Socket{}, fmt.Errorf("%d fields, want at least %d (is this a /proc/net/tcp or udp table?)", n, len(fields))
	}
	var s Socket
	var err error
	if s.Local, err = parseAddrPort(fields[1]); err != nil {
		return Socket{}, fmt.Errorf("local address: %w", err)
	}
	if s.Remote, err = parseAddrPort(fields[2]); err != nil {
		return Socket{}, fmt.Errorf("remote address: %w", err)
	}
	if bytes.IndexByte(fields[1], ':') != bytes.IndexByte(fields[2], ':') {
		return Socket{}, errors.New("local and remote addresses differ in length (mixed IPv4 and IPv6)")
	}
	st, err := parseHex(fields[3], 2)
	if err != nil {
		return Socket{}, fmt.Errorf("state: %w", err)
	}
	s.State = uint8(st)
	uid, err := parseDec(fields[7], 32)
	if err != nil {
		return Socket{}, fmt.Errorf("uid: %w", err)
	}
	s.UID = uint32(uid)
	if s.Inode, err = parseDec(fields[9], 64); err != nil {
		return Socket{}, fmt.Errorf("inode: %w", err)
	}
	return s, nil
}

// parseAddrPort parses "0100007F:0CEA" (IPv4) or 32 hex digits ":" 4 hex
// digits (IPv6). IPv4-mapped IPv6 addresses are returned as IPv4.
func parseAddrPort(b []byte) (netip.AddrPort, error) {
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return netip.AddrPort{}, fmt.Errorf("%q has no ':' between address and port", truncate(b, 40))
	}
	hexAddr, hexPort := b[:colon], b[colon+1:]
	port, err := parseHex(hexPort, 4)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", truncate(hexPort, 10), err)
	}
	var addr netip.Addr
	switch len(hexAddr) {
	case 8:
		w, err := parseHex(hexAddr, 8)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("IPv4 address %q: %w", hexAddr, err)
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], uint32(w))
		addr = netip.AddrFrom4(a)
	case 32:
		var a [16]byte
		for i := range 4 {
			w, err := parseHex(hexAddr[i*8:i*8+8], 8)
			if err != nil {
				return netip.AddrPort{}, fmt.Errorf("IPv6 address %q: %w", hexAddr, err)
			}
			binary.NativeEndian.PutUint32(a[i*4:], uint32(w))
		}
		addr = netip.AddrFrom16(a).Unmap()
	default:
		return netip.AddrPort{}, fmt.Errorf("address %q has %d hex digits, want 8 (IPv4) or 32 (IPv6)", truncate(hexAddr, 40), len(hexAddr))
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// parseHex parses exactly 1..maxDigits hex digits.
func parseHex(b []byte, maxDigits int) (uint64, error) {
	if len(b) == 0 || len(b) > maxDigits {
		return 0, fmt.Errorf("want 1-%d hex digits, got %d", maxDigits, len(b))
	}
	var v uint64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, fmt.Errorf("%q is not a hex digit", c)
		}
		v = v<<4 | uint64(d)
	}
	return v, nil
}

// parseDec parses an unsigned decimal that fits in bits.
func parseDec(b []byte, bits int) (uint64, error) {
	if len(b) == 0 || len(b) > 20 {
		return 0, fmt.Errorf("want 1-20 decimal digits, got %d", len(b))
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a decimal digit", c)
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, fmt.Errorf("%s overflows %d bits", b, bits)
		}
		v = v*10 + d
	}
	if bits < 64 && v>>bits != 0 {
		return 0, fmt.Errorf("%s overflows %d bits", b, bits)
	}
	return v, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
