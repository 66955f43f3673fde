package pki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// NodeOU is the organizational unit of node certificates: it tells a node
// (control node, witness, netboot station) from a robot at a glance.
const NodeOU = "node"

// NodeRequest describes a node certificate to issue.
type NodeRequest struct {
	Name     string        // CN, e.g. "control-a"
	DNS      []string      // DNS SANs the node is reached by
	IPs      []net.IP      // IP SANs the node is reached by
	Lifetime time.Duration // default DefaultNodeLifetime (1 year), capped at the CA's expiry
	KeyType  KeyType       // default KeyECDSAP256
}

// validate checks what x509 would otherwise accept and regret: a node name
// becomes a CN (at most 64 characters by RFC 5280) and DNS SANs are matched
// by TLS clients, so they must be host names.
func (r NodeRequest) validate() error {
	if strings.TrimSpace(r.Name) == "" {
		return fmt.Errorf("node name is empty: give one such as control-a")
	}
	if len(r.Name) > 64 || strings.ContainsFunc(r.Name, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return fmt.Errorf("node name %q must be at most 64 printable characters", r.Name)
	}
	for _, d := range r.DNS {
		if !validDNSName(d) {
			return fmt.Errorf("DNS name %q for node %q is not a host name (letters, digits, '-', dot-separated; '*.' allowed first)", d, r.Name)
		}
	}
	for _, ip := range r.IPs {
		if ip.To16() == nil {
			return fmt.Errorf("IP address %v for node %q is not valid", ip, r.Name)
		}
	}
	return nil
}

func validDNSName(s string) bool {
	s = strings.TrimPrefix(s, "*.")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// IssueNode makes a key and a certificate for a control node, witness or
// netboot station: CN=Name, OU "node", SANs from DNS and IPs, usable as both
// TLS server and client (nodes dial each other for dqlite). The key is
// returned as unencrypted PKCS#8 PEM: it lives on the node and must be
// written 0600.
func (ca *CA) IssueNode(r NodeRequest, now time.Time) (certPEM, keyPEM []byte, err error) {
	if err := r.validate(); err != nil {
		return nil, nil, fmt.Errorf("issue node certificate: %w", err)
	}
	if r.Lifetime == 0 {
		r.Lifetime = DefaultNodeLifetime
	}
	notBefore, notAfter, err := ca.validity(now, r.Lifetime)
	if err != nil {
		return nil, nil, fmt.Errorf("issue node certificate for %q: %w", r.Name, err)
	}
	key, err := generateKey(r.KeyType)
	if err != nil {
		return nil, nil, fmt.Errorf("issue node certificate for %q: %w", r.Name, err)
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:         r.Name,
			Organization:       []string{organization},
			OrganizationalUnit: []string{NodeOU},
		},
		DNSNames:              slices.Clone(r.DNS),
		IPAddresses:           slices.Clone(r.IPs),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	certPEM, _, err = ca.sign(tmpl, key.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("issue node certificate: %w", err)
	}
	keyPEM, err = encodeKeyPEM(key, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("issue node certificate for %q: %w", r.Name, err)
	}
	return certPEM, keyPEM, nil
}

// NodeTLSCertificate issues a node certificate and returns it ready for a
// tls.Config (Leaf set), for nodes that mint their own at start-up and for
// tests.
func (ca *CA) NodeTLSCertificate(r NodeRequest, now time.Time) (tls.Certificate, error) {
	certPEM, keyPEM, err := ca.IssueNode(r, now)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node certificate for %q into TLS: %w", r.Name, err)
	}
	return c, nil
}

// isNodeCert tells whether a certificate was issued by IssueNode: OU "node",
// a CN, server and client auth, and no robot identity.
func isNodeCert(cert *x509.Certificate) error {
	if !slices.Contains(cert.Subject.OrganizationalUnit, NodeOU) {
		return fmt.Errorf("certificate %q has OU %q, not %q: not a node certificate", cert.Subject.CommonName, cert.Subject.OrganizationalUnit, NodeOU)
	}
	if cert.Subject.CommonName == "" {
		return fmt.Errorf("node certificate has an empty CN")
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("certificate %q lacks server and client auth: not a node certificate", cert.Subject.CommonName)
	}
	if len(cert.URIs) > 0 {
		return fmt.Errorf("certificate %q carries URI SANs %v: not a node certificate", cert.Subject.CommonName, cert.URIs)
	}
	return nil
}

// VerifyNode checks a chain presented by another node (leaf first) against
// the CA at time now and returns the node's name (its CN). Errors are
// *VerifyError; a robot or foreign certificate gives ReasonNotNode.
func (ca *CA) VerifyNode(chain []*x509.Certificate, now time.Time) (name string, err error) {
	leaf, err := ca.verifyChain(chain, now, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return "", err
	}
	if err := isNodeCert(leaf); err != nil {
		return "", &VerifyError{Reason: ReasonNotNode, Err: err}
	}
	return leaf.Subject.CommonName, nil
}
