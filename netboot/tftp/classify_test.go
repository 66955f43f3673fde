package tftp_test

import (
	"net"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/tftp"
)

// rawClient sends hand-made packets, to end transfers in ways the Pi does not.
type rawClient struct {
	t    *testing.T
	conn *net.UDPConn
	buf  []byte
}

func newRawClient(t *testing.T) *rawClient {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, buf: make([]byte, 2048)}
}

func (c *rawClient) send(to *net.UDPAddr, p string) {
	if _, err := c.conn.WriteToUDP([]byte(p), to); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) recv() ([]byte, *net.UDPAddr) {
	_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.conn.ReadFromUDP(c.buf)
	if err != nil {
		c.t.Fatalf("no answer: %v", err)
	}
	return c.buf[:n], from
}

func TestErrorDuringDataIsFailureNotProbe(t *testing.T) {
	h := startServer(t, map[string][]byte{"1a2b3c4d/start4.elf": make([]byte, 10_000)}, nil)
	c := newRawClient(t)
	c.send(net.UDPAddrFromAddrPort(h.addr), "\x00\x011a2b3c4d/start4.elf\x00octet\x00tsize\x000\x00blksize\x001468\x00")
	if p, from := c.recv(); p[1] != 6 {
		t.Fatalf("want OACK, got %q", p)
	} else {
		c.send(from, "\x00\x04\x00\x00") // ACK 0
		if p, _ := c.recv(); p[1] != 3 {
			t.Fatalf("want DATA 1, got %q", p[:4])
		}
		c.send(from, "\x00\x05\x00\x00Early terminate\x00") // too late to be a probe
	}
	tr := h.next(t)
	if tr.Result != tftp.ResultFailed || tr.Bytes == 0 || tr.Kind != tftp.KindFirmware {
		t.Fatalf("report %+v, want a failed firmware transfer that had sent data", tr)
	}
}

func TestSilenceAfterOACKIsFailureNotProbe(t *testing.T) {
	h := startServer(t, map[string][]byte{"1a2b3c4d/start4.elf": make([]byte, 10_000)}, func(cfg *tftp.Config) {
		cfg.Timeout, cfg.Retries = 100*time.Millisecond, 1
	})
	c := newRawClient(t)
	c.send(net.UDPAddrFromAddrPort(h.addr), "\x00\x011a2b3c4d/start4.elf\x00octet\x00tsize\x000\x00")
	if p, _ := c.recv(); p[1] != 6 {
		t.Fatalf("want OACK, got %q", p)
	}
	tr := h.next(t)
	if tr.Result != tftp.ResultFailed || tr.Bytes != 0 {
		t.Fatalf("report %+v, want failed (timeout), not a probe", tr)
	}
	if r := h.results(t); r["probe"] != 0 || r["failed"] != 1 {
		t.Fatalf("results %v", r)
	}
}
