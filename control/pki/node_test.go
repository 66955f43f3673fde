package pki

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueNode(t *testing.T) {
	tests := []struct {
		name     string
		caKey    KeyType
		req      NodeRequest
		wantKey  string
		wantLife time.Duration
	}{
		{name: "control node with SANs", caKey: KeyECDSAP256, wantKey: "ecdsa-p256", wantLife: DefaultNodeLifetime,
			req: NodeRequest{Name: "control-a", DNS: []string{"control-a.lan", "control.lan"}, IPs: []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5")}}},
		{name: "ed25519 witness, 30 days", caKey: KeyEd25519, wantKey: "ed25519", wantLife: 30 * 24 * time.Hour,
			req: NodeRequest{Name: "witness", KeyType: KeyEd25519, Lifetime: 30 * 24 * time.Hour}},
		{name: "wildcard DNS", caKey: KeyECDSAP256, wantKey: "ecdsa-p256", wantLife: DefaultNodeLifetime,
			req: NodeRequest{Name: "netboot-1", DNS: []string{"*.factory.lan"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t, tt.caKey, t0)
			certPEM, keyPEM, err := ca.IssueNode(tt.req, t0)
			if err != nil {
				t.Fatal(err)
			}
			cert := parseCert(t, certPEM)
			if cert.Subject.CommonName != tt.req.Name || !slices.Equal(cert.Subject.OrganizationalUnit, []string{NodeOU}) {
				t.Errorf("subject = %v", cert.Subject)
			}
			if !slices.Equal(cert.DNSNames, tt.req.DNS) || len(cert.IPAddresses) != len(tt.req.IPs) {
				t.Errorf("SANs = %v %v, want %v %v", cert.DNSNames, cert.IPAddresses, tt.req.DNS, tt.req.IPs)
			}
			for i, ip := range tt.req.IPs {
				if !cert.IPAddresses[i].Equal(ip) {
					t.Errorf("IP SAN %d = %v, want %v", i, cert.IPAddresses[i], ip)
				}
			}
			if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("EKU = %v, want server and client auth", cert.ExtKeyUsage)
			}
			if len(cert.URIs) != 0 || cert.IsCA {
				t.Errorf("node cert has URIs %v or is a CA", cert.URIs)
			}
			if !cert.NotAfter.Equal(t0.Add(tt.wantLife)) {
				t.Errorf("NotAfter = %v, want %v", cert.NotAfter, t0.Add(tt.wantLife))
			}
			key, err := decodeKeyPEM(keyPEM, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := DescribePublicKey(key.Public()); got != tt.wantKey || !publicKeysEqual(key.Public(), cert.PublicKey) {
				t.Errorf("key %s does not match the certificate (want %s)", got, tt.wantKey)
			}
			if name, err := ca.VerifyNode([]*x509.Certificate{cert}, t0); err != nil || name != tt.req.Name {
				t.Errorf("VerifyNode = %q, %v", name, err)
			}
			if _, err := RobotIDFromCert(cert); err == nil {
				t.Error("a node certificate passed as a robot")
			}
			tc, err := ca.NodeTLSCertificate(tt.req, t0)
			if err != nil || tc.Leaf == nil || tc.Leaf.Subject.CommonName != tt.req.Name {
				t.Errorf("NodeTLSCertificate = %v, %v", tc.Leaf, err)
			}
		})
	}
}

func TestIssueNodeRejects(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	tests := []struct {
		name    string
		req     NodeRequest
		at      time.Time
		wantErr string
	}{
		{name: "no name", req: NodeRequest{}, at: t0, wantErr: "node name is empty"},
		{name: "long name", req: NodeRequest{Name: strings.Repeat("n", 65)}, at: t0, wantErr: "at most 64"},
		{name: "control character", req: NodeRequest{Name: "a\nb"}, at: t0, wantErr: "printable"},
		{name: "bad DNS", req: NodeRequest{Name: "a", DNS: []string{"not a host"}}, at: t0, wantErr: `DNS name "not a host"`},
		{name: "DNS label with leading dash", req: NodeRequest{Name: "a", DNS: []string{"-x.lan"}}, at: t0, wantErr: "not a host name"},
		{name: "bad IP", req: NodeRequest{Name: "a", IPs: []net.IP{{1, 2, 3}}}, at: t0, wantErr: "not valid"},
		{name: "bad key type", req: NodeRequest{Name: "a", KeyType: "dsa"}, at: t0, wantErr: `key type "dsa"`},
		{name: "CA expired", req: NodeRequest{Name: "a"}, at: t0.Add(DefaultCALifetime + time.Hour), wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ca.IssueNode(tt.req, tt.at)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("IssueNode error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
