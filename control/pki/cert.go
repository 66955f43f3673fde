package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
)

// randomSerial returns a random positive 128-bit serial: unpredictable
// serials keep chosen-prefix collision attacks off the table and need no
// counter shared between control nodes.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate certificate serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}

// ParseCertPEM parses the first CERTIFICATE block of pemBytes, skipping
// other blocks (a key or a CA certificate may share the file).
func ParseCertPEM(pemBytes []byte) (*x509.Certificate, error) {
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM \"CERTIFICATE\" block found")
		}
		if block.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return cert, nil
	}
}

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER, as
// `openssl x509 -fingerprint -sha256` prints it without colons.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SerialHex formats a serial as lowercase hex of its big-endian bytes (even
// length, no prefix), the key for revocation lists and certificate records.
func SerialHex(cert *x509.Certificate) string {
	if cert.SerialNumber == nil || cert.SerialNumber.Sign() == 0 {
		return "00"
	}
	return hex.EncodeToString(cert.SerialNumber.Bytes())
}
