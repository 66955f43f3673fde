// Package tftptest is a TFTP client that behaves like the Raspberry Pi 4/5
// bootloader, for tests and the testbench's simulated Pis: before fetching a
// file it sends a read request with tsize=0 and blksize, takes the OACK to
// learn the size, and ends that transfer at once with ERROR code 0 "Early
// terminate"; then it sends the real read request with blksize and receives
// the file in lock-step (no windowsize).
//
// It is written from the protocol (RFC 1350, 2347, 2348, 2349) rather than on
// top of a TFTP library so that the packets on the wire are exactly the ones
// a Pi sends.
package tftptest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// TFTP opcodes.
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// Client fetches files from one TFTP server. The zero value of each field
// means its default.
type Client struct {
	Server    netip.AddrPort // the server's request port (69 in production)
	BlockSize int            // blksize asked for; default 1468 (what the Pi bootloader asks)
	Timeout   time.Duration  // wait per packet before retransmitting; default 1 s
	Retries   int            // retransmissions per packet; default 5
}

// Result describes one transfer.
type Result struct {
	TSize     int64 // size from the OACK; -1 if the server did not answer tsize
	BlockSize int   // negotiated blksize (512 when the server sent no OACK)
	Bytes     int64 // file bytes received
}

// ServerError is an ERROR packet from the server.
type ServerError struct {
	Code    uint16
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("TFTP server error %d: %s", e.Code, e.Message)
}

// Probe asks for name with tsize=0 and blksize, reads the OACK and ends the
// transfer with ERROR 0 "Early terminate", as the Pi does before each file.
func (c Client) Probe(ctx context.Context, name string) (Result, error) {
	t, err := c.start(ctx, name, true)
	if err != nil {
		return Result{}, err
	}
	defer t.conn.Close()
	if !t.oack {
		// A server without option support answers with DATA 1; stop it the
		// same way.
		t.sendError(0, "Early terminate")
		return t.res, fmt.Errorf("probing %q: server sent data instead of an OACK, so it does not support tsize", name)
	}
	return t.res, t.sendError(0, "Early terminate")
}

// Get fetches name with blksize (no tsize) into w.
func (c Client) Get(ctx context.Context, name string, w io.Writer) (Result, error) {
	t, err := c.start(ctx, name, false)
	if err != nil {
		return Result{}, err
	}
	defer t.conn.Close()
	if err := t.receive(ctx, w); err != nil {
		return t.res, fmt.Errorf("fetching %q: %w", name, err)
	}
	return t.res, nil
}

// Fetch does what the Pi bootloader does for one file: Probe, then Get, and
// checks that the received length matches the probed tsize.
func (c Client) Fetch(ctx context.Context, name string) ([]byte, Result, error) {
	probe, err := c.Probe(ctx, name)
	if err != nil {
		return nil, probe, err
	}
	var buf bytes.Buffer
	res, err := c.Get(ctx, name, &buf)
	if err != nil {
		return nil, res, err
	}
	res.TSize = probe.TSize
	if probe.TSize >= 0 && res.Bytes != probe.TSize {
		return nil, res, fmt.Errorf("fetching %q: received %d bytes but tsize said %d", name, res.Bytes, probe.TSize)
	}
	return buf.Bytes(), res, nil
}

func (c Client) withDefaults() Client {
	if c.BlockSize == 0 {
		c.BlockSize = 1468
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.Retries <= 0 {
		c.Retries = 5
	}
	return c
}

// transfer is one read request in progress.
type transfer struct {
	c       Client
	conn    *net.UDPConn
	peer    *net.UDPAddr // server's transfer port, once known
	last    []byte       // last packet sent, for retransmission
	pending []byte       // first packet after the request/OACK (DATA 1 when no OACK)
	oack    bool
	res     Result
	buf     []byte
}

// start sends the RRQ and waits for the first answer: OACK, DATA 1 or ERROR.
func (c Client) start(ctx context.Context, name string, withTSize bool) (*transfer, error) {
	c = c.withDefaults()
	if !c.Server.IsValid() {
		return nil, errors.New("tftptest: Client.Server is not set")
	}
	network := "udp4"
	if c.Server.Addr().Is6() && !c.Server.Addr().Is4In6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("tftptest: opening client socket: %w", err)
	}
	t := &transfer{c: c, conn: conn, res: Result{TSize: -1, BlockSize: 512}, buf: make([]byte, 65536)}
	opts := [][2]string{{"blksize", strconv.Itoa(c.BlockSize)}}
	if withTSize {
		opts = [][2]string{{"tsize", "0"}, {"blksize", strconv.Itoa(c.BlockSize)}}
	}
	t.last = packRRQ(name, opts)
	pkt, err := t.exchange(ctx, net.UDPAddrFromAddrPort(c.Server))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("requesting %q from %s: %w", name, c.Server, err)
	}
	switch binary.BigEndian.Uint16(pkt) {
	case opOACK:
		opts, err := ParseOACK(pkt)
		if err != nil {
			t.sendError(8, "bad OACK")
			conn.Close()
			return nil, err
		}
		t.oack = true
		if v, ok := opts["tsize"]; ok {
			if t.res.TSize, err = strconv.ParseInt(v, 10, 64); err != nil || t.res.TSize < 0 {
				t.sendError(8, "bad tsize")
				conn.Close()
				return nil, fmt.Errorf("requesting %q: OACK tsize %q is not a size", name, v)
			}
		}
		if v, ok := opts["blksize"]; ok {
			bs, err := strconv.Atoi(v)
			if err != nil || bs < 8 || bs > c.BlockSize {
				t.sendError(8, "bad blksize")
				conn.Close()
				return nil, fmt.Errorf("requesting %q: OACK blksize %q is not in 8..%d (what we asked)", name, v, c.BlockSize)
			}
			t.res.BlockSize = bs
		}
	case opDATA:
		t.pending = pkt
	}
	return t, nil
}

// receive runs the DATA/ACK lock-step until the short last block.
func (t *transfer) receive(ctx context.Context, w io.Writer) error {
	var expect uint16 = 1
	pkt := t.pending
	if pkt == nil { // we had an OACK: acknowledge it with ACK 0
		t.last = packACK(0)
		var err error
		if pkt, err = t.exchange(ctx, t.peer); err != nil {
			return err
		}
	}
	// Bounded: one iteration per block plus retransmissions, each of which
	// either advances or costs a timeout (exchange gives up after Retries).
	for {
		if binary.BigEndian.Uint16(pkt) != opDATA || len(pkt) < 4 {
			return fmt.Errorf("expected DATA %d, got opcode %d", expect, binary.BigEndian.Uint16(pkt))
		}
		block := binary.BigEndian.Uint16(pkt[2:4])
		data := pkt[4:]
		if block != expect {
			// A retransmitted older block: our ACK got lost. Re-ACK it.
			if block == expect-1 {
				t.last = packACK(block)
				var err error
				if pkt, err = t.exchange(ctx, t.peer); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("expected DATA %d, got DATA %d", expect, block)
		}
		if len(data) > t.res.BlockSize {
			return fmt.Errorf("DATA %d carries %d bytes, more than blksize %d", block, len(data), t.res.BlockSize)
		}
		if _, err := w.Write(data); err != nil {
			t.sendError(3, "write failed")
			return fmt.Errorf("writing received data: %w", err)
		}
		t.res.Bytes += int64(len(data))
		t.last = packACK(block)
		if len(data) < t.res.BlockSize {
			// Final ACK: the server may retransmit the last block if this is
			// lost; a real Pi does not linger, neither do we.
			_, err := t.conn.WriteToUDP(t.last, t.peer)
			return err
		}
		expect++
		var err error
		if pkt, err = t.exchange(ctx, t.peer); err != nil {
			return err
		}
	}
}

// exchange sends t.last to addr and returns the next packet from the server
// (an ERROR becomes a *ServerError), retransmitting on timeout.
func (t *transfer) exchange(ctx context.Context, addr *net.UDPAddr) ([]byte, error) {
	for attempt := 0; attempt <= t.c.Retries; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := t.conn.WriteToUDP(t.last, addr); err != nil {
			return nil, fmt.Errorf("sending to %s: %w", addr, err)
		}
		deadline := time.Now().Add(t.c.Timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := t.conn.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
		for {
			n, from, err := t.conn.ReadFromUDP(t.buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // retransmit
				}
				return nil, fmt.Errorf("receiving from %s: %w", addr, err)
			}
			if !from.IP.Equal(net.IP(t.c.Server.Addr().AsSlice())) && !from.IP.Equal(addr.IP) {
				continue // not the server at all
			}
			if t.peer != nil && from.Port != t.peer.Port {
				// RFC 1350: a packet from another TID gets an ERROR 5 and
				// does not disturb the transfer.
				_, _ = t.conn.WriteToUDP(packError(5, "Unknown transfer ID"), from)
				continue
			}
			if n < 2 {
				continue
			}
			if t.peer == nil {
				t.peer = from
			}
			pkt := append([]byte(nil), t.buf[:n]...)
			if binary.BigEndian.Uint16(pkt) == opERROR {
				return nil, parseError(pkt)
			}
			return pkt, nil
		}
	}
	return nil, fmt.Errorf("no answer from %s after %d attempts of %s", addr, t.c.Retries+1, t.c.Timeout)
}

func (t *transfer) sendError(code uint16, msg string) error {
	to := t.peer
	if to == nil {
		to = net.UDPAddrFromAddrPort(t.c.Server)
	}
	_, err := t.conn.WriteToUDP(packError(code, msg), to)
	return err
}

func packRRQ(name string, opts [][2]string) []byte {
	p := binary.BigEndian.AppendUint16(nil, opRRQ)
	p = append(append(p, name...), 0)
	p = append(append(p, "octet"...), 0)
	for _, o := range opts {
		p = append(append(p, o[0]...), 0)
		p = append(append(p, o[1]...), 0)
	}
	return p
}

func packACK(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func packError(code uint16, msg string) []byte {
	p := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), code)
	return append(append(p, msg...), 0)
}

func parseError(p []byte) *ServerError {
	e := &ServerError{}
	if len(p) >= 4 {
		e.Code = binary.BigEndian.Uint16(p[2:4])
		msg, _, _ := bytes.Cut(p[4:], []byte{0})
		e.Message = string(msg)
	}
	return e
}

// ParseOACK decodes an OACK packet (opcode included) into lower-cased option
// names and their values. It rejects packets that are not OACKs, options
// without a terminating NUL, and repeated options.
func ParseOACK(p []byte) (map[string]string, error) {
	if len(p) < 2 || binary.BigEndian.Uint16(p) != opOACK {
		return nil, errors.New("not an OACK packet")
	}
	body := p[2:]
	opts := map[string]string{}
	for len(body) > 0 {
		name, rest, ok := bytes.Cut(body, []byte{0})
		if !ok {
			return nil, fmt.Errorf("OACK option name %q is not NUL-terminated", name)
		}
		value, rest, ok := bytes.Cut(rest, []byte{0})
		if !ok {
			return nil, fmt.Errorf("OACK option %q has no NUL-terminated value", name)
		}
		key := asciiLower(name) // option names are ASCII; leave other bytes as they are
		if key == "" {
			return nil, errors.New("OACK has an empty option name")
		}
		if _, dup := opts[key]; dup {
			return nil, fmt.Errorf("OACK repeats option %q", key)
		}
		opts[key] = string(value)
		body = rest
	}
	return opts, nil
}

func asciiLower(b []byte) string {
	out := []byte(string(b))
	for i, c := range out {
		if 'A' <= c && c <= 'Z' {
			out[i] = c + 'a' - 'A'
		}
	}
	return string(out)
}
