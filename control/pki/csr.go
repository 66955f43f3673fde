package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Limits on what ParseCSR will look at. A CSR arrives from a robot over the
// network (enrollment, renewal), so size and key strength are bounded
// before any expensive work.
const (
	MaxCSRBytes   = 16 << 10
	MinRSABits    = 2048
	maxRSABits    = 8192
	pemCSR        = "CERTIFICATE REQUEST"
	pemCSROldName = "NEW CERTIFICATE REQUEST" // older OpenSSL and Windows tools
)

// ParseCSR parses one PEM "CERTIFICATE REQUEST", checks its self-signature
// (the requester holds the private key) and that its key is ECDSA P-256 or
// P-384, Ed25519, or RSA of 2048 to 8192 bits. The subject and SANs it asks
// for are parsed but never used for signing. It does not panic on any input.
func ParseCSR(pemBytes []byte) (*x509.CertificateRequest, error) {
	if len(pemBytes) > MaxCSRBytes {
		return nil, fmt.Errorf("parse CSR: %d bytes exceed the %d byte limit", len(pemBytes), MaxCSRBytes)
	}
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("parse CSR: no PEM block found: expected -----BEGIN CERTIFICATE REQUEST-----")
	}
	if block.Type != pemCSR && block.Type != pemCSROldName {
		return nil, fmt.Errorf("parse CSR: PEM block is %q, expected %q", block.Type, pemCSR)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("parse CSR: data after the CERTIFICATE REQUEST block: send exactly one CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := checkCSRKey(csr); err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("parse CSR: signature does not verify (the CSR was altered or not signed by its key): %w", err)
	}
	return csr, nil
}

// checkCSRKey accepts keys strong enough to identify a robot for years.
func checkCSRKey(csr *x509.CertificateRequest) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA key on curve %s is not accepted: use P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > maxRSABits {
			return fmt.Errorf("RSA key of %d bits is not accepted: use %d to %d bits, or better ECDSA P-256 or Ed25519", bits, MinRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("key type %T is not accepted: use ECDSA P-256 or Ed25519", csr.PublicKey)
	}
	return nil
}
