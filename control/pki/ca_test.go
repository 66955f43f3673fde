package pki

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestCreate(t *testing.T) {
	tests := []struct {
		name     string
		opts     CreateOptions
		wantCN   string
		wantKey  string
		wantLife time.Duration
		wantErr  string
	}{
		{name: "defaults", opts: CreateOptions{Now: fixedNow(t0)}, wantCN: DefaultCAName, wantKey: "ecdsa-p256", wantLife: DefaultCALifetime},
		{name: "ed25519 named", opts: CreateOptions{Name: "Bench CA", KeyType: KeyEd25519, Lifetime: 48 * time.Hour, Now: fixedNow(t0)}, wantCN: "Bench CA", wantKey: "ed25519", wantLife: 48 * time.Hour},
		{name: "unknown key type", opts: CreateOptions{KeyType: "rsa-4096"}, wantErr: `key type "rsa-4096" is not supported`},
		{name: "negative lifetime", opts: CreateOptions{Lifetime: -time.Hour}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := Create(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Create error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := ca.Cert
			if c.Subject.CommonName != tt.wantCN || !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
				t.Errorf("CA cert CN=%q IsCA=%v MaxPathLen=%d zero=%v", c.Subject.CommonName, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
			}
			if c.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Errorf("CA key usage %v lacks cert sign", c.KeyUsage)
			}
			if got := DescribePublicKey(c.PublicKey); got != tt.wantKey {
				t.Errorf("key = %s, want %s", got, tt.wantKey)
			}
			if !c.NotAfter.Equal(t0.Add(tt.wantLife)) || !c.NotBefore.Equal(t0.Add(-ClockSkew)) {
				t.Errorf("validity %v .. %v, want %v .. %v", c.NotBefore, c.NotAfter, t0.Add(-ClockSkew), t0.Add(tt.wantLife))
			}
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("not self-signed: %v", err)
			}
			if c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %s looks too small to be random", SerialHex(c))
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: t0}); err != nil {
				t.Errorf("CA does not verify against its own pool: %v", err)
			}
		})
	}
}

func TestParseKeyType(t *testing.T) {
	for _, s := range []string{"ecdsa-p256", "ed25519"} {
		if kt, err := ParseKeyType(s); err != nil || string(kt) != s {
			t.Errorf("ParseKeyType(%q) = %q, %v", s, kt, err)
		}
	}
	if _, err := ParseKeyType("rsa"); err == nil || !strings.Contains(err.Error(), "ecdsa-p256 or ed25519") {
		t.Errorf("ParseKeyType(rsa) error = %v", err)
	}
}

func TestFingerprintAndSerial(t *testing.T) {
	ca := newTestCA(t, KeyECDSAP256, t0)
	fp := Fingerprint(ca.Cert)
	if len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Errorf("fingerprint %q is not 64 lowercase hex digits", fp)
	}
	s := SerialHex(ca.Cert)
	if len(s)%2 != 0 || len(s) > 32 || len(s) < 2 {
		t.Errorf("serial %q: want even-length hex of at most 16 bytes", s)
	}
	other := newTestCA(t, KeyECDSAP256, t0)
	if Fingerprint(other.Cert) == fp || SerialHex(other.Cert) == s {
		t.Errorf("two CAs share a fingerprint or serial")
	}
}
