package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/lekiwi/heartbeat/protocol"
)

// NewKeyAndCSR generates a fresh ECDSA P-256 key and a certificate signing
// request for robotID: subject CN = robotID, URI SAN protocol.RobotURI(robotID).
// The CSR (PEM "CERTIFICATE REQUEST") is what goes to control; the key stays.
func NewKeyAndCSR(robotID string) (*ecdsa.PrivateKey, []byte, error) {
	if err := protocol.ValidRobotID(robotID); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate robot key: %w", err)
	}
	csr, err := csrFor(key, robotID)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

func csrFor(key *ecdsa.PrivateKey, robotID string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: robotID},
		URIs:    []*url.URL{protocol.RobotURI(robotID)},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request for %s: %w", robotID, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// encodeKey is key as PEM PKCS#8 "PRIVATE KEY".
func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode robot key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
