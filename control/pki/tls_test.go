package pki

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// TestTLSHandshake runs real TLS over loopback the way control will: the
// server presents a node certificate from IssueNode, requests (but does not
// itself verify) a client certificate, and VerifyConnection calls
// VerifyRobot, so every rejection carries a precise reason.
func TestTLSHandshake(t *testing.T) {
	now := time.Now()
	// The CA was made a year ago so an "expired" robot can be signed in
	// the past by the same CA.
	for _, kt := range KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			ca := newTestCA(t, kt, now.Add(-365*24*time.Hour))
			other := newTestCA(t, kt, now.Add(-time.Hour))
			serverCert, err := ca.NodeTLSCertificate(NodeRequest{Name: "control-a", DNS: []string{"control-a.lan"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, now)
			if err != nil {
				t.Fatal(err)
			}
			robotTLS := func(ca *CA, at time.Time) []tls.Certificate {
				cert, key, _ := robotCert(t, ca, "lekiwi-0042", 0, at)
				return []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
			}
			nodeAsClient, err := ca.NodeTLSCertificate(NodeRequest{Name: "control-b"}, now)
			if err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				name   string
				client []tls.Certificate
				want   Reason
			}{
				{name: "robot of this CA", client: robotTLS(ca, now)},
				{name: "robot of another CA", client: robotTLS(other, now), want: ReasonUnknownAuthority},
				{name: "expired robot", client: robotTLS(ca, now.Add(-200*24*time.Hour)), want: ReasonExpired},
				{name: "node certificate as client", client: []tls.Certificate{nodeAsClient}, want: ReasonNotRobot},
				{name: "no certificate", want: ReasonNoCertificate},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					id, err := handshake(t, ca, serverCert, tt.client)
					if tt.want == "" {
						if err != nil || id != "lekiwi-0042" {
							t.Fatalf("handshake: id %q, %v", id, err)
						}
						return
					}
					var ve *VerifyError
					if !errors.As(err, &ve) || ve.Reason != tt.want {
						t.Fatalf("server handshake error = %v, want reason %s", err, tt.want)
					}
				})
			}
		})
	}
}

// handshake serves one TLS connection on loopback and dials it with the
// given client certificates. It returns the robot id the server's
// VerifyConnection saw, or the server's handshake error.
func handshake(t *testing.T, ca *CA, serverCert tls.Certificate, client []tls.Certificate) (string, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		var id string
		srv := tls.Server(conn, &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientAuth:   tls.RequestClientCert,
			MinVersion:   tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				robotID, _, err := ca.VerifyRobot(cs.PeerCertificates, time.Now())
				id = robotID
				return err
			},
		})
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		err = srv.Handshake()
		done <- result{id: id, err: err}
	}()

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	cl := tls.Client(conn, &tls.Config{
		RootCAs:      ca.Pool(),
		ServerName:   "control-a.lan",
		Certificates: client,
		MinVersion:   tls.VersionTLS12,
	})
	// The client must trust the node certificate; in TLS 1.3 it finishes
	// before the server judges the client, so its error is not checked here.
	_ = cl.Handshake()
	r := <-done
	if r.err == nil && cl.ConnectionState().PeerCertificates == nil {
		t.Fatal("client did not complete the handshake against the node certificate")
	}
	return r.id, r.err
}
