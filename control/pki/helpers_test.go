package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"testing"
	"time"
)

// t0 is the tests' "now": fixed so lifetimes can be asserted exactly.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedNow(t time.Time) func() time.Time { return func() time.Time { return t } }

// newTestCA creates an in-memory CA whose clock says at.
func newTestCA(t testing.TB, kt KeyType, at time.Time) *CA {
	t.Helper()
	ca, err := Create(CreateOptions{Name: "Test CA " + string(kt), KeyType: kt, Now: fixedNow(at)})
	if err != nil {
		t.Fatalf("Create(%s): %v", kt, err)
	}
	return ca
}

// newKey makes a robot-side key: "p256", "p384", "p224", "ed25519",
// "rsa1024", "rsa2048".
func newKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	case "rsa1024":
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newCSR makes a PEM CSR for key; tmpl may ask for any subject and SANs.
func newCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "whoever"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// robotCert signs a robot certificate for a fresh P-256 key.
func robotCert(t testing.TB, ca *CA, id string, lifetime time.Duration, at time.Time) (*x509.Certificate, crypto.Signer, []byte) {
	t.Helper()
	key := newKey(t, "p256")
	certPEM, cert, err := ca.SignRobot(newCSR(t, key, nil), id, lifetime, at)
	if err != nil {
		t.Fatalf("SignRobot(%s): %v", id, err)
	}
	return cert, key, certPEM
}

func parseCert(t testing.TB, pemBytes []byte) *x509.Certificate {
	t.Helper()
	c, err := ParseCertPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// truncateEncrypted drops the last byte of an EncryptedPrivateKeyInfo's
// ciphertext, keeping the ASN.1 well-formed.
func truncateEncrypted(t testing.TB, der []byte) []byte {
	t.Helper()
	var info struct {
		Alg  pkix.AlgorithmIdentifier
		Data []byte
	}
	if _, err := asn1.Unmarshal(der, &info); err != nil {
		t.Fatal(err)
	}
	info.Data = info.Data[:len(info.Data)-1]
	out, err := asn1.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
