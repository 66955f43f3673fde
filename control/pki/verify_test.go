package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestVerifyRobot(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	other := newTestCA(t, KeyECDSAP256, t0)
	// A stranger using our CA's very name: only the signature can tell.
	impostor, err := Create(CreateOptions{Name: ca.Cert.Subject.CommonName, Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	good, _, _ := robotCert(t, ca, "lekiwi-0042", 0, t0)
	short, _, _ := robotCert(t, ca, "lekiwi-0042", time.Hour, t0)
	foreign, _, _ := robotCert(t, other, "lekiwi-0042", 0, t0)
	foreignShort, _, _ := robotCert(t, other, "lekiwi-0042", time.Hour, t0)
	impostors, _, _ := robotCert(t, impostor, "lekiwi-0042", 0, t0)
	nodePEM, _, err := ca.IssueNode(NodeRequest{Name: "control-a"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	node := parseCert(t, nodePEM)
	// Signed by our CA with a server-only usage: x509 itself refuses it for
	// client auth.
	_, serverOnly, err := ca.sign(&x509.Certificate{
		Subject: pkix.Name{CommonName: "lekiwi-0042"}, URIs: good.URIs,
		NotBefore: t0, NotAfter: t0.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, newKey(t, "p256").Public())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		chain  []*x509.Certificate
		at     time.Time
		wantID string
		want   Reason
	}{
		{name: "robot", chain: []*x509.Certificate{good}, at: t0, wantID: "lekiwi-0042"},
		{name: "robot with CA appended", chain: []*x509.Certificate{good, ca.Cert}, at: t0, wantID: "lekiwi-0042"},
		{name: "robot at the edge of its skew", chain: []*x509.Certificate{good}, at: t0.Add(-ClockSkew), wantID: "lekiwi-0042"},
		{name: "none", chain: nil, at: t0, want: ReasonNoCertificate},
		{name: "nil leaf", chain: []*x509.Certificate{nil}, at: t0, want: ReasonNoCertificate},
		{name: "another CA", chain: []*x509.Certificate{foreign}, at: t0, want: ReasonUnknownAuthority},
		{name: "another CA, chain includes it", chain: []*x509.Certificate{foreign, other.Cert}, at: t0, want: ReasonUnknownAuthority},
		{name: "impostor CA of the same name", chain: []*x509.Certificate{impostors}, at: t0, want: ReasonUnknownAuthority},
		{name: "expired", chain: []*x509.Certificate{short}, at: t0.Add(2 * time.Hour), want: ReasonExpired},
		{name: "not yet valid", chain: []*x509.Certificate{good}, at: t0.Add(-time.Hour), want: ReasonExpired},
		{name: "expired and foreign is foreign", chain: []*x509.Certificate{foreignShort}, at: t0.Add(2 * time.Hour), want: ReasonUnknownAuthority},
		{name: "CA itself expired", chain: []*x509.Certificate{good}, at: t0.Add(DefaultCALifetime + time.Hour), want: ReasonExpired},
		{name: "node certificate", chain: []*x509.Certificate{node}, at: t0, want: ReasonNotRobot},
		{name: "server-only usage", chain: []*x509.Certificate{serverOnly}, at: t0, want: ReasonNotRobot},
		{name: "the CA certificate itself", chain: []*x509.Certificate{ca.Cert}, at: t0, want: ReasonNotRobot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, leaf, err := ca.VerifyRobot(tt.chain, tt.at)
			if tt.want == "" {
				if err != nil || id != tt.wantID || leaf != tt.chain[0] {
					t.Fatalf("VerifyRobot = %q, %v, %v; want %q", id, leaf != nil, err, tt.wantID)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("VerifyRobot error = %v (%T), want a *VerifyError", err, err)
			}
			if ve.Reason != tt.want || ReasonOf(err) != tt.want {
				t.Fatalf("reason = %s (%v), want %s", ve.Reason, err, tt.want)
			}
			if id != "" || leaf != nil {
				t.Errorf("rejected chain still returned id %q / leaf", id)
			}
			if !strings.Contains(err.Error(), string(tt.want)) {
				t.Errorf("error %q does not name its reason", err)
			}
		})
	}
}

func TestVerifyNode(t *testing.T) {
	ca := newTestCA(t, KeyEd25519, t0)
	other := newTestCA(t, KeyEd25519, t0)
	mk := func(ca *CA, life time.Duration) *x509.Certificate {
		certPEM, _, err := ca.IssueNode(NodeRequest{Name: "control-b", Lifetime: life}, t0)
		if err != nil {
			t.Fatal(err)
		}
		return parseCert(t, certPEM)
	}
	robot, _, _ := robotCert(t, ca, "lekiwi-0042", 0, t0)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		at    time.Time
		want  Reason
	}{
		{name: "node", chain: []*x509.Certificate{mk(ca, 0)}, at: t0},
		{name: "none", at: t0, want: ReasonNoCertificate},
		{name: "another CA", chain: []*x509.Certificate{mk(other, 0)}, at: t0, want: ReasonUnknownAuthority},
		{name: "expired", chain: []*x509.Certificate{mk(ca, time.Hour)}, at: t0.Add(2 * time.Hour), want: ReasonExpired},
		{name: "robot certificate", chain: []*x509.Certificate{robot}, at: t0, want: ReasonNotNode},
		{name: "the CA certificate itself", chain: []*x509.Certificate{ca.Cert}, at: t0, want: ReasonNotNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, err := ca.VerifyNode(tt.chain, tt.at)
			if tt.want == "" {
				if err != nil || name != "control-b" {
					t.Fatalf("VerifyNode = %q, %v", name, err)
				}
				return
			}
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("VerifyNode error = %v (reason %q), want reason %s", err, got, tt.want)
			}
		})
	}
}
