package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// RobotOU is the organizational unit of robot certificates.
const RobotOU = "robot"

// SignRobot signs a robot certificate for the CSR's public key. Only the key
// is taken from the CSR: CN is robotID and the only SAN is the URI
// lekiwi://robot/<robotID>, whatever names the CSR asks for, because the
// robot does not get to choose its identity. Client auth only, digital
// signature only, random 128-bit serial, NotBefore now-1m, NotAfter
// now+lifetime (default 90 days) capped at the CA's expiry.
func (ca *CA) SignRobot(csrPEM []byte, robotID string, lifetime time.Duration, now time.Time) (certPEM []byte, cert *x509.Certificate, err error) {
	if err := protocol.ValidRobotID(robotID); err != nil {
		return nil, nil, fmt.Errorf("sign robot certificate: %w", err)
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("sign robot certificate for %s: %w", robotID, err)
	}
	if lifetime == 0 {
		lifetime = DefaultRobotLifetime
	}
	notBefore, notAfter, err := ca.validity(now, lifetime)
	if err != nil {
		return nil, nil, fmt.Errorf("sign robot certificate for %s: %w", robotID, err)
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:         robotID,
			Organization:       []string{organization},
			OrganizationalUnit: []string{RobotOU},
		},
		URIs:                  []*url.URL{protocol.RobotURI(robotID)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	certPEM, cert, err = ca.sign(tmpl, csr.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign robot certificate for %s: %w", robotID, err)
	}
	return certPEM, cert, nil
}

// RobotIDFromCert returns the robot id a certificate names: its CN must be a
// valid robot id and its one URI SAN must be lekiwi://robot/<the same id>.
// Anything else (a node certificate, a certificate with extra SANs, a CN and
// URI that disagree) is an error: identity must be unambiguous.
func RobotIDFromCert(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("no certificate")
	}
	cn := cert.Subject.CommonName
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("certificate %q has %d URI SANs, a robot certificate has exactly one lekiwi://robot/<id>", cn, len(cert.URIs))
	}
	if n := len(cert.DNSNames) + len(cert.IPAddresses) + len(cert.EmailAddresses); n > 0 {
		return "", fmt.Errorf("certificate %q has %d DNS/IP/email SANs, a robot certificate has none", cn, n)
	}
	id, err := protocol.RobotIDFromURI(cert.URIs[0])
	if err != nil {
		return "", fmt.Errorf("certificate %q: %w", cn, err)
	}
	if cn != id {
		return "", fmt.Errorf("certificate CN %q does not match its URI SAN robot id %q", cn, id)
	}
	return id, nil
}

// checkRobotUsage insists on client auth only: a certificate that can also
// serve TLS is a node certificate, never a robot's.
func checkRobotUsage(cert *x509.Certificate) error {
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(cert.UnknownExtKeyUsage) > 0 {
		return fmt.Errorf("certificate %q has extended key usages %v, a robot certificate has client auth only", cert.Subject.CommonName, cert.ExtKeyUsage)
	}
	if cert.IsCA {
		return fmt.Errorf("certificate %q is a CA certificate, not a robot certificate", cert.Subject.CommonName)
	}
	return nil
}

// VerifyRobot checks a client chain (leaf first) against the CA at time now
// and returns the robot id and leaf. Errors are *VerifyError whose Reason
// says what to audit: no certificate, unknown authority, expired (or not yet
// valid), not a robot, or otherwise invalid. Revocation is the caller's
// check (by SerialHex), since the revocation list lives in the store.
func (ca *CA) VerifyRobot(chain []*x509.Certificate, now time.Time) (robotID string, leaf *x509.Certificate, err error) {
	leaf, err = ca.verifyChain(chain, now, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return "", nil, err
	}
	if err := checkRobotUsage(leaf); err != nil {
		return "", nil, &VerifyError{Reason: ReasonNotRobot, Err: err}
	}
	id, err := RobotIDFromCert(leaf)
	if err != nil {
		return "", nil, &VerifyError{Reason: ReasonNotRobot, Err: err}
	}
	return id, leaf, nil
}
