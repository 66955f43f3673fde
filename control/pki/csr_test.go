package pki

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCSR(t *testing.T) {
	p256 := newCSR(t, newKey(t, "p256"), nil)
	tampered := func() []byte {
		csr := newCSR(t, newKey(t, "p256"), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "aaaaaaaa"}})
		block, _ := pem.Decode(csr)
		block.Bytes = bytes.Replace(block.Bytes, []byte("aaaaaaaa"), []byte("bbbbbbbb"), 1)
		return pem.EncodeToMemory(block)
	}()
	oldHeader := bytes.ReplaceAll(p256, []byte("CERTIFICATE REQUEST"), []byte("NEW CERTIFICATE REQUEST"))
	tests := []struct {
		name    string
		in      []byte
		wantKey string
		wantErr string
	}{
		{name: "ecdsa p256", in: p256, wantKey: "ecdsa-p256"},
		{name: "ecdsa p384", in: newCSR(t, newKey(t, "p384"), nil), wantKey: "ecdsa-p384"},
		{name: "ed25519", in: newCSR(t, newKey(t, "ed25519"), nil), wantKey: "ed25519"},
		{name: "rsa 2048", in: newCSR(t, newKey(t, "rsa2048"), nil), wantKey: "rsa-2048"},
		{name: "old NEW CERTIFICATE REQUEST header", in: oldHeader, wantKey: "ecdsa-p256"},
		{name: "trailing whitespace", in: append(bytes.Clone(p256), "\n\n  \n"...), wantKey: "ecdsa-p256"},
		{name: "empty", in: nil, wantErr: "no PEM block"},
		{name: "garbage", in: []byte("\x00\xffhello"), wantErr: "no PEM block"},
		{name: "wrong PEM type", in: bytes.ReplaceAll(p256, []byte("CERTIFICATE REQUEST"), []byte("CERTIFICATE")), wantErr: `PEM block is "CERTIFICATE"`},
		{name: "PEM of garbage", in: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("junk")}), wantErr: "parse CSR"},
		{name: "bad signature", in: tampered, wantErr: "signature does not verify"},
		{name: "rsa 1024 refused", in: newCSR(t, newKey(t, "rsa1024"), nil), wantErr: "RSA key of 1024 bits is not accepted"},
		{name: "p224 refused", in: newCSR(t, newKey(t, "p224"), nil), wantErr: "P-224 is not accepted"},
		{name: "two CSRs", in: append(bytes.Clone(p256), p256...), wantErr: "send exactly one CSR"},
		{name: "too large", in: append(bytes.Clone(p256), bytes.Repeat([]byte(" "), MaxCSRBytes)...), wantErr: "byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCSR error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := DescribePublicKey(csr.PublicKey); got != tt.wantKey {
				t.Errorf("key = %s, want %s", got, tt.wantKey)
			}
		})
	}
}

// TestParseCSRFromOpenSSL accepts CSRs made by the tool a technician would
// reach for, and signs them.
func TestParseCSRFromOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ca := newTestCA(t, KeyEd25519, t0)
	for name, keyArgs := range map[string][]string{
		"p256":    {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"},
		"ed25519": {"-newkey", "ed25519"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"req", "-new", "-nodes", "-keyout", filepath.Join(dir, "k"), "-out", filepath.Join(dir, "csr"), "-subj", "/CN=ignored", "-addext", "subjectAltName=DNS:evil.example"}, keyArgs...)
			if out, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl req: %v\n%s", err, out)
			}
			csrPEM, err := os.ReadFile(filepath.Join(dir, "csr"))
			if err != nil {
				t.Fatal(err)
			}
			_, cert, err := ca.SignRobot(csrPEM, "lekiwi-0100", 0, t0)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != "lekiwi-0100" || len(cert.DNSNames) != 0 {
				t.Errorf("signed %v with DNS %v", cert.Subject, cert.DNSNames)
			}
		})
	}
}
