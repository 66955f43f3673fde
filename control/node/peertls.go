package node

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// peerTLS makes the mutual-TLS configuration for dqlite traffic between
// cluster members: each member presents a node certificate from the fleet
// CA and accepts only peers that do. Node names differ per member, so the
// check is "a node certificate of this CA" rather than a host name.
func peerTLS(ca *pki.CA, nodeID, dbAddress string) (listen, dial *tls.Config, err error) {
	req := pki.NodeRequest{Name: certName(nodeID) + "-db", DNS: []string{"localhost"}}
	if host, _, err := net.SplitHostPort(dbAddress); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNS = append(req.DNS, host)
		}
	}
	cert, err := ca.NodeTLSCertificate(req, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("issue this node's peer certificate: %w", err)
	}
	verify := func(cs tls.ConnectionState) error {
		if _, err := ca.VerifyNode(cs.PeerCertificates, time.Now()); err != nil {
			return fmt.Errorf("dqlite peer is not a node of this fleet: %w", err)
		}
		return nil
	}
	listen = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: verify,
		// go-dqlite's proxy treats a config with ClientCAs as the server
		// side; the checking itself is VerifyConnection's.
		ClientCAs: ca.Pool(),
	}
	dial = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The peer's name is not known in advance (members dial each
		// other by address); VerifyConnection checks the chain instead.
		InsecureSkipVerify: true,
		VerifyConnection:   verify,
	}
	return listen, dial, nil
}
