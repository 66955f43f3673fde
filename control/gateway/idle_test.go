package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

func TestCarryOver(t *testing.T) {
	for _, tc := range []struct {
		name, ahead, rest string
	}{
		{"nothing read ahead", "", "frame"},
		{"a frame read ahead", "\x81\x05hello", "more"},
		{"more than the small buffer", strings.Repeat("x", 3*readBufferSize), "tail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := bufio.NewReaderSize(strings.NewReader(tc.ahead), 4096)
			if tc.ahead != "" {
				if _, err := old.Peek(len(tc.ahead)); err != nil {
					t.Fatal(err)
				}
			}
			r, err := carryOver(old, strings.NewReader(tc.rest))
			if err != nil {
				t.Fatal(err)
			}
			// What coder/websocket does with the reader it is handed.
			b, _ := r.Peek(r.Buffered())
			r.Reset(io.MultiReader(bytes.NewReader(b), strings.NewReader(tc.rest)))
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.ahead+tc.rest {
				t.Fatalf("read %q, want %q", got, tc.ahead+tc.rest)
			}
		})
	}
}

// tlsPair returns both ends of a TLS 1.3 connection over loopback TCP.
func tlsPair(t *testing.T) (server, client *tls.Conn) {
	t.Helper()
	ca, err := pki.Create(pki.CreateOptions{Name: "idle test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.NodeTLSCertificate(pki.NodeRequest{Name: "node-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client = tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	sraw, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	server = tls.Server(sraw, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	t.Cleanup(func() { client.Close(); server.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- client.HandshakeContext(ctx) }()
	if err := server.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return server, client
}

// TestIdleWaiterOverTLS checks the two questions a session asks between
// bursts: is a frame already buffered (in bufio or inside crypto/tls), and
// when does the socket have more — without breaking the connection.
func TestIdleWaiterOverTLS(t *testing.T) {
	server, client := tlsPair(t)
	br := bufio.NewReaderSize(server, 16)
	w := newIdleWaiter(server, br)
	if w == nil {
		t.Fatal("no idle waiter for a TLS connection over TCP")
	}
	if w.buffered() {
		t.Fatal("buffered() before the client sent anything")
	}
	// One write, one TLS record of 40 bytes: reading 16 leaves 24 inside
	// crypto/tls while the socket is drained.
	msg := strings.Repeat("0123456789", 4)
	if _, err := client.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := w.waitReadable(); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 16)
	if _, err := io.ReadFull(br, head); err != nil {
		t.Fatal(err)
	}
	if !w.buffered() {
		t.Fatal("buffered() = false with 24 bytes of the record still in crypto/tls")
	}
	rest := make([]byte, 24)
	if _, err := io.ReadFull(br, rest); err != nil {
		t.Fatal(err)
	}
	if got := string(head) + string(rest); got != msg {
		t.Fatalf("read %q, want %q", got, msg)
	}
	if w.buffered() {
		t.Fatal("buffered() = true with everything read")
	}
	// The probe's expired deadline must not have broken the connection.
	waited := make(chan error, 1)
	go func() { waited <- w.waitReadable() }()
	select {
	case err := <-waited:
		t.Fatalf("waitReadable returned (%v) before the client wrote", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := client.Write([]byte("next")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitReadable did not return after the client wrote")
	}
	next := make([]byte, 4)
	if _, err := io.ReadFull(br, next); err != nil || string(next) != "next" {
		t.Fatalf("after probing: read %q, %v; want \"next\"", next, err)
	}
	// A closed connection ends the wait.
	go func() { waited <- w.waitReadable() }()
	server.NetConn().Close()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("waitReadable did not return after the connection was closed")
	}
}
