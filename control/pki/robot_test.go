package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

func TestSignRobot(t *testing.T) {
	for _, kt := range KeyTypes() {
		for _, robotKey := range []string{"p256", "p384", "ed25519", "rsa2048"} {
			t.Run(string(kt)+"/"+robotKey, func(t *testing.T) {
				ca := newTestCA(t, kt, t0)
				key := newKey(t, robotKey)
				// The CSR asks for another identity and a pile of SANs: all
				// of it must be ignored.
				greedy := &x509.CertificateRequest{
					Subject:        pkix.Name{CommonName: "control-a", Organization: []string{"Evil"}},
					DNSNames:       []string{"control-a.lan", "*.lan"},
					IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
					EmailAddresses: []string{"root@lan"},
					URIs:           []*url.URL{protocol.RobotURI("lekiwi-9999")},
				}
				certPEM, cert, err := ca.SignRobot(newCSR(t, key, greedy), "lekiwi-0042", 0, t0)
				if err != nil {
					t.Fatal(err)
				}
				if !parseCert(t, certPEM).Equal(cert) {
					t.Error("returned PEM and certificate differ")
				}
				if cert.Subject.CommonName != "lekiwi-0042" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != organization {
					t.Errorf("subject = %v", cert.Subject)
				}
				if len(cert.URIs) != 1 || cert.URIs[0].String() != "lekiwi://robot/lekiwi-0042" {
					t.Errorf("URIs = %v, want only lekiwi://robot/lekiwi-0042", cert.URIs)
				}
				if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
					t.Errorf("CSR SANs leaked: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
				}
				if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
					t.Errorf("EKU = %v, want client auth only", cert.ExtKeyUsage)
				}
				if cert.KeyUsage != x509.KeyUsageDigitalSignature {
					t.Errorf("key usage = %v, want digital signature only", cert.KeyUsage)
				}
				if cert.IsCA {
					t.Error("robot certificate is a CA")
				}
				if !publicKeysEqual(cert.PublicKey, key.Public()) {
					t.Error("certificate is not for the CSR's key")
				}
				if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
					t.Errorf("not signed by the CA: %v", err)
				}
				if id, err := RobotIDFromCert(cert); err != nil || id != "lekiwi-0042" {
					t.Errorf("RobotIDFromCert = %q, %v", id, err)
				}
			})
		}
	}
}

func TestSignRobotSerialsAreRandom(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	seen := map[string]bool{}
	for range 20 {
		cert, _, _ := robotCert(t, ca, "lekiwi-0001", 0, t0)
		s := SerialHex(cert)
		if seen[s] {
			t.Fatalf("serial %s repeated", s)
		}
		seen[s] = true
		if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
			t.Fatalf("serial %s is not a positive 128-bit number", s)
		}
	}
}

func TestSignRobotValidity(t *testing.T) {
	caLife := 200 * 24 * time.Hour
	ca, err := Create(CreateOptions{Lifetime: caLife, Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	caEnd := t0.Add(caLife)
	tests := []struct {
		name         string
		lifetime     time.Duration
		at           time.Time
		wantNotAfter time.Time
		wantErr      string
	}{
		{name: "default 90 days", at: t0.Add(time.Hour), wantNotAfter: t0.Add(time.Hour + 90*24*time.Hour)},
		{name: "explicit 1 day", lifetime: 24 * time.Hour, at: t0, wantNotAfter: t0.Add(24 * time.Hour)},
		{name: "capped at CA expiry", at: t0.Add(150 * 24 * time.Hour), wantNotAfter: caEnd},
		{name: "CA expired", at: caEnd.Add(time.Second), wantErr: "expired"},
		{name: "before the CA", at: t0.Add(-time.Hour), wantErr: "check this machine's clock"},
		{name: "negative lifetime", lifetime: -time.Hour, at: t0, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cert, err := ca.SignRobot(newCSR(t, newKey(t, "p256"), nil), "lekiwi-0007", tt.lifetime, tt.at)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !cert.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("NotAfter = %v, want %v", cert.NotAfter, tt.wantNotAfter)
			}
			if want := tt.at.Add(-ClockSkew); !cert.NotBefore.Equal(want) {
				t.Errorf("NotBefore = %v, want %v (now - 1m)", cert.NotBefore, want)
			}
		})
	}
	// NotBefore never precedes the CA's own: a chain is only as valid as
	// its CA.
	_, cert, err := ca.SignRobot(newCSR(t, newKey(t, "p256"), nil), "lekiwi-0007", 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.NotBefore.Before(ca.Cert.NotBefore) {
		t.Errorf("NotBefore %v precedes the CA's %v", cert.NotBefore, ca.Cert.NotBefore)
	}
}

func TestSignRobotRejects(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	good := newCSR(t, newKey(t, "p256"), nil)
	tests := []struct {
		name    string
		csr     []byte
		id      string
		wantErr string
	}{
		{name: "bad robot id", csr: good, id: "Lekiwi_42", wantErr: "not a DNS label"},
		{name: "empty robot id", csr: good, id: "", wantErr: "robot id is empty"},
		{name: "garbage CSR", csr: []byte("nope"), id: "lekiwi-1", wantErr: "no PEM block"},
		{name: "weak key", csr: newCSR(t, newKey(t, "rsa1024"), nil), id: "lekiwi-1", wantErr: "RSA key of 1024 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ca.SignRobot(tt.csr, tt.id, 0, t0)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "sign robot certificate") {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRobotIDFromCert(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	robot, _, _ := robotCert(t, ca, "xle-0003", 0, t0)
	nodePEM, _, err := ca.IssueNode(NodeRequest{Name: "control-a", DNS: []string{"control-a.lan"}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	// custom signs a certificate with hand-made names, as a buggy or
	// hostile issuer might.
	custom := func(cn string, uris []string, dns []string) *x509.Certificate {
		var us []*url.URL
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			us = append(us, u)
		}
		_, c, err := ca.sign(&x509.Certificate{
			Subject: pkix.Name{CommonName: cn}, URIs: us, DNSNames: dns,
			NotBefore: t0, NotAfter: t0.Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, newKey(t, "p256").Public())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name    string
		cert    *x509.Certificate
		wantID  string
		wantErr string
	}{
		{name: "robot", cert: robot, wantID: "xle-0003"},
		{name: "node certificate", cert: parseCert(t, nodePEM), wantErr: "0 URI SANs"},
		{name: "CN and URI disagree", cert: custom("lekiwi-1", []string{"lekiwi://robot/lekiwi-2"}, nil), wantErr: "does not match"},
		{name: "two URIs", cert: custom("lekiwi-1", []string{"lekiwi://robot/lekiwi-1", "lekiwi://robot/lekiwi-2"}, nil), wantErr: "2 URI SANs"},
		{name: "wrong scheme", cert: custom("lekiwi-1", []string{"https://robot/lekiwi-1"}, nil), wantErr: "not lekiwi://robot/<id>"},
		{name: "invalid id in URI", cert: custom("Bad_Id", []string{"lekiwi://robot/Bad_Id"}, nil), wantErr: "not a DNS label"},
		{name: "extra DNS SAN", cert: custom("lekiwi-1", []string{"lekiwi://robot/lekiwi-1"}, []string{"control-a.lan"}), wantErr: "DNS/IP/email"},
		{name: "nil", cert: nil, wantErr: "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := RobotIDFromCert(tt.cert)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("RobotIDFromCert = %q, %v; want error containing %q", id, err, tt.wantErr)
				}
				return
			}
			if err != nil || id != tt.wantID {
				t.Fatalf("RobotIDFromCert = %q, %v; want %q", id, err, tt.wantID)
			}
		})
	}
}
