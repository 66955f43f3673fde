package store

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// Under CPU starvation the leader's dqlite proxy logs "tls: bad record MAC".
// This pins down what that line means: a peer whose request
// timed out in the middle of a TLS record (its context deadline, while the
// starved leader was not reading) and who then closed the connection —
// crypto/tls sends the close alert after the half-written record, and the
// reader sees the alert's bytes as the rest of the record. An abandoned
// request, not corruption; the operator's signal is the timeouts.
func TestBadRecordMACIsAWriteAbandonedMidRecord(t *testing.T) {
	ca, err := pki.Create(pki.CreateOptions{Name: "bad record MAC test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.NodeTLSCertificate(pki.NodeRequest{Name: "peer", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	readErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			readErr <- err
			return
		}
		defer c.Close()
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := s.Handshake(); err != nil {
			readErr <- err
			return
		}
		time.Sleep(300 * time.Millisecond) // a starved reader: the peer's write blocks
		_, err = io.Copy(io.Discard, s)
		readErr <- err
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.(*net.TCPConn).SetWriteBuffer(4096) // a full socket buffer, as with a peer that stopped reading
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Write(make([]byte, 8<<20)); err == nil {
		t.Fatal("8 MiB written to a reader that sleeps, before a 50 ms deadline")
	}
	c.SetWriteDeadline(time.Time{})
	c.Close()
	select {
	case err := <-readErr:
		if err == nil || !strings.Contains(err.Error(), "bad record MAC") {
			t.Fatalf("reader saw %v; want bad record MAC", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader still reading")
	}
}
