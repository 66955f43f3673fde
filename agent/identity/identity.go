package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Errors Load, FromPEM and Install wrap, so callers can tell a robot that
// has not enrolled yet from one whose identity is damaged.
var (
	// ErrNotFound: there is no identity (no key and no certificate): the
	// robot has to enroll.
	ErrNotFound = errors.New("no robot identity")
	// ErrCorrupt: a file is missing from an otherwise present identity or
	// does not parse.
	ErrCorrupt = errors.New("robot identity is corrupt")
	// ErrMismatch: the parts parse but do not belong together — the
	// certificate is for another key or another robot, or not signed by the
	// CA.
	ErrMismatch = errors.New("robot identity does not fit together")
)

// Identity is a robot's key, certificate and fleet CA. Its methods are safe
// for concurrent use: TLS handshakes read the current certificate while the
// runtime installs a renewed one.
type Identity struct {
	robotID  string
	caPEM    []byte
	roots    *x509.CertPool
	sessions *sessionCache

	mu      sync.Mutex
	dir     string // where Install saves; "" keeps renewals in memory
	key     *ecdsa.PrivateKey
	keyPEM  []byte
	certPEM []byte
	leaf    *x509.Certificate
	tlsCert *tls.Certificate
	pending *ecdsa.PrivateKey // renewal key waiting for its certificate
}

// FromPEM builds an identity from PEM bytes: a PKCS#8 (or SEC 1) ECDSA
// P-256 private key, the robot certificate for it, and the fleet CA (one or
// more certificates). It checks that the three belong together but not the
// certificate's validity period (an expired identity still loads, so the
// caller can say it expired). Nothing is written; Save does that. Simulators
// use it to give each robot an identity without enrolling.
func FromPEM(keyPEM, certPEM, caPEM []byte) (*Identity, error) {
	return fromPEM(keyPEM, certPEM, caPEM)
}

func fromPEM(keyPEM, certPEM, caPEM []byte) (*Identity, error) {
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key: %w: %w", ErrCorrupt, err)
	}
	leaf, err := parseLeaf(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w: %w", ErrCorrupt, err)
	}
	roots, err := parseCA(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA: %w: %w", ErrCorrupt, err)
	}
	id, err := check(leaf, key, roots, "", anyTime(leaf)...)
	if err != nil {
		return nil, err
	}
	i := &Identity{robotID: id, caPEM: clone(caPEM), roots: roots, sessions: newSessionCache()}
	i.set(key, clone(keyPEM), clone(certPEM), leaf)
	return i, nil
}

// set makes key and certificate current. Callers hold mu or own i.
func (i *Identity) set(key *ecdsa.PrivateKey, keyPEM, certPEM []byte, leaf *x509.Certificate) {
	i.key, i.keyPEM, i.certPEM, i.leaf = key, keyPEM, certPEM, leaf
	i.tlsCert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// RobotID is the robot id the certificate names.
func (i *Identity) RobotID() string { return i.robotID }

// Certificate is the current certificate (after a renewal, the new one).
func (i *Identity) Certificate() *x509.Certificate {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.leaf
}

// Dir is the directory the identity was loaded from or last saved to, where
// Install saves renewals; "" for an identity that lives only in memory.
func (i *Identity) Dir() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.dir
}

// CAPEM is the fleet CA in PEM.
func (i *Identity) CAPEM() []byte { return clone(i.caPEM) }

// TLSConfig is the mTLS client configuration for connections to control:
// TLS 1.3 only, servers verified against the fleet CA alone, and the
// robot's current certificate presented on every handshake — read at
// handshake time, so a renewal takes effect on the next connection without
// rebuilding anything. Sessions are cached (8 per identity, shared by every
// config returned) so a reconnect resumes instead of doing a full handshake;
// the cache is emptied when a renewed certificate is installed, because a
// resumed session would still carry the old one.
func (i *Identity) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              i.roots,
		GetClientCertificate: i.clientCertificate,
		ClientSessionCache:   i.sessions,
	}
}

func (i *Identity) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.tlsCert, nil
}

// HTTPClient is an HTTP client whose transport uses TLSConfig, ready for
// agent.Options.HTTPClient (no overall timeout: the agent bounds the dial
// itself and the WebSocket lives long).
func (i *Identity) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     i.TLSConfig(),
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// sessionCache is a tls.NewLRUClientSessionCache(8) that can be emptied:
// TLS 1.3 resumption skips client authentication (the server takes the
// certificate from the session ticket), so after a renewal the old sessions
// must go or the next connection would present the old certificate again.
// (A handshake still running while Install flushes could put back a session
// made with the old certificate; the agent has one connection and installs
// on it, so none is running then — and the old certificate stays valid
// until it expires anyway.)
type sessionCache struct {
	mu sync.Mutex
	c  tls.ClientSessionCache
}

// SessionCacheSize is how many TLS sessions an identity keeps for
// resumption (one per control node is plenty).
const SessionCacheSize = 8

func newSessionCache() *sessionCache {
	return &sessionCache{c: tls.NewLRUClientSessionCache(SessionCacheSize)}
}

func (s *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.Get(key)
}

func (s *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Put(key, cs)
}

func (s *sessionCache) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c = tls.NewLRUClientSessionCache(SessionCacheSize)
}

// check verifies that leaf is for key, names one robot (want, unless
// empty) in both common name and URI SAN, and chains to roots for client
// authentication at one of the times given (the first one's error is
// reported). It returns the robot id.
func check(leaf *x509.Certificate, key *ecdsa.PrivateKey, roots *x509.CertPool, want string, at ...time.Time) (string, error) {
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return "", fmt.Errorf("%w: the certificate (serial %x) is not for this key", ErrMismatch, leaf.SerialNumber)
	}
	id, err := robotIDOf(leaf)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	if want != "" && id != want {
		return "", fmt.Errorf("%w: the certificate names robot %q, this robot is %q", ErrMismatch, id, want)
	}
	var first error
	for _, t := range at {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err == nil {
			return id, nil
		}
		if first == nil {
			first = err
		}
	}
	return "", fmt.Errorf("%w: the certificate does not chain to the fleet CA: %w", ErrMismatch, first)
}

// robotIDOf reads the robot id from the certificate's lekiwi://robot/<id>
// URI SAN and checks the common name says the same.
func robotIDOf(leaf *x509.Certificate) (string, error) {
	var id string
	for _, u := range leaf.URIs {
		if u.Scheme != protocol.RobotURIScheme {
			continue
		}
		got, err := protocol.RobotIDFromURI(u)
		if err != nil {
			return "", fmt.Errorf("certificate URI SAN: %w", err)
		}
		if id != "" && got != id {
			return "", fmt.Errorf("certificate names two robots, %q and %q", id, got)
		}
		id = got
	}
	if id == "" {
		return "", fmt.Errorf("certificate (subject %q) has no %s://%s/<id> URI SAN: it is not a robot certificate", leaf.Subject.CommonName, protocol.RobotURIScheme, protocol.RobotURIHost)
	}
	if leaf.Subject.CommonName != id {
		return "", fmt.Errorf("certificate common name %q differs from its URI SAN robot id %q", leaf.Subject.CommonName, id)
	}
	return id, nil
}

// anyTime are moments to verify leaf at when only signature, key usage and
// names matter, not whether it has expired: now, then inside its validity.
func anyTime(leaf *x509.Certificate) []time.Time {
	return []time.Time{time.Now(), leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2), leaf.NotBefore, leaf.NotAfter}
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is a %T, want an ECDSA P-256 key", k)
	}
	return ek, nil
}

func parseLeaf(b []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(b)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func parseCA(b []byte) (*x509.CertPool, error) {
	certs, err := parseCerts(b)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %q is not a CA", c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// parseCerts reads every CERTIFICATE block; there must be at least one.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
