package node

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// servingCert is this node's TLS server certificate, issued from the fleet
// CA at start and re-issued when two thirds of its life have passed, so a
// long-running node never serves an expired certificate.
type servingCert struct {
	ca  *pki.CA
	req pki.NodeRequest

	mu   sync.Mutex
	cert *tls.Certificate
}

func newServingCert(ca *pki.CA, nodeID, listen string, names []string) (*servingCert, error) {
	req := pki.NodeRequest{Name: certName(nodeID), DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			req.IPs = append(req.IPs, ip)
		} else if ip == nil && host != "" {
			req.DNS = append(req.DNS, host)
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		req.DNS = append(req.DNS, h)
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNS = append(req.DNS, n)
		}
	}
	s := &servingCert{ca: ca, req: req}
	if _, err := s.get(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

// certName turns a node id (often host:port) into a certificate name.
func certName(nodeID string) string {
	r := strings.NewReplacer(":", "-", "[", "", "]", "")
	return "control-" + r.Replace(nodeID)
}

func (s *servingCert) get(now time.Time) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil {
		leaf := s.cert.Leaf
		if now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)) {
			return s.cert, nil
		}
	}
	c, err := s.ca.NodeTLSCertificate(s.req, now)
	if err != nil {
		return nil, fmt.Errorf("issue this node's serving certificate: %w", err)
	}
	s.cert = &c
	return s.cert, nil
}

// tlsConfig is the control node's HTTPS configuration: TLS 1.3 only;
// client certificates requested (robots, nodes) but checked by verify, so
// API callers without one still reach the bearer-token routes.
func tlsConfig(sc *servingCert, verify func(tls.ConnectionState) error) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: verify,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return sc.get(time.Now())
		},
	}
}
