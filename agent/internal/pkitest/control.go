package pkitest

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/protocol"
)

// Options shape a Control.
type Options struct {
	// RequireClientCert makes the TLS listener itself demand a client
	// certificate signed by the CA (tls.RequireAndVerifyClientCert), as an
	// agent-only listener would; /v1/enroll is then unreachable for a robot
	// without one. Otherwise the listener verifies a certificate if given
	// and /v1/agent refuses connections without one, so one base URL serves
	// enrollment and the gateway, as control's does.
	RequireClientCert bool
	// Lifetime of issued certificates; default 90 days.
	Lifetime time.Duration
	// NoRenewCap leaves protocol.CapRenew out of the hello reply.
	NoRenewCap bool
}

// Conn is one /v1/agent connection as the server saw it.
type Conn struct {
	RobotID string
	Serial  *big.Int // of the client certificate presented (or resumed)
	Resumed bool     // TLS session resumption
}

// Control plays control for identity tests: POST /v1/enroll with
// single-use tokens, and /v1/agent over mTLS answering hello (with
// CapRenew), acknowledging heartbeats and queued messages, and answering
// renew with a signed certificate — or with an error while RenewErrors
// is positive.
type Control struct {
	t    testing.TB
	CA   *CA
	Srv  *httptest.Server
	URL  string // https://127.0.0.1:port
	opts Options

	mu           sync.Mutex
	tokens       map[string]*token
	enrollBodies [][]byte
	conns        []Conn
	frames       []protocol.Envelope
	renewed      []*Renewal
	violations   []string
	renewErrors  int
	ws           []*websocket.Conn
}

// Renewal is one renew the server answered with a certificate.
type Renewal struct {
	Sequence uint64
	Cert     []byte
}

type token struct {
	robotID string
	expires time.Time
	used    bool
}

// NewControl starts the server; it stops at the end of the test.
func NewControl(t testing.TB, ca *CA, opts Options) *Control {
	t.Helper()
	if opts.Lifetime <= 0 {
		opts.Lifetime = 90 * 24 * time.Hour
	}
	c := &Control{t: t, CA: ca, opts: opts, tokens: map[string]*token{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+protocol.EnrollPath, c.enroll)
	mux.HandleFunc("GET /v1/agent", c.agent)
	c.Srv = httptest.NewUnstartedServer(mux)
	c.Srv.TLS = ca.ServerTLS(t)
	c.Srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests are about
	if opts.RequireClientCert {
		c.Srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	} else {
		c.Srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven
	}
	c.Srv.StartTLS()
	c.URL = c.Srv.URL
	t.Cleanup(c.Close)
	return c
}

// Close stops the server and drops every connection.
func (c *Control) Close() {
	c.Srv.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.ws {
		w.CloseNow()
	}
}

// DropConnections closes every open agent connection, like a restarted node.
func (c *Control) DropConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.ws {
		w.CloseNow()
	}
	c.ws = nil
}

// AddToken creates a single-use enrollment token for robotID.
func (c *Control) AddToken(tok, robotID string, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens[tok] = &token{robotID: robotID, expires: expires}
}

// FailRenewals answers the next n renew messages with an internal error.
func (c *Control) FailRenewals(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.renewErrors = n
}

// EnrollBodies are the raw request bodies POSTed to /v1/enroll.
func (c *Control) EnrollBodies() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.enrollBodies...)
}

// Conns are the agent connections accepted so far, in order.
func (c *Control) Conns() []Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Conn(nil), c.conns...)
}

// Frames are the frames received after hello, on every connection.
func (c *Control) Frames() []protocol.Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]protocol.Envelope(nil), c.frames...)
}

// Renewals are the renewals answered with a certificate.
func (c *Control) Renewals() []*Renewal {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Renewal(nil), c.renewed...)
}

// Violations are protocol rules the agent broke.
func (c *Control) Violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.violations...)
}

func (c *Control) violate(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(protocol.ErrorBody{Error: protocol.ErrorDetail{Code: code, Message: msg}})
}

func (c *Control) enroll(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	c.mu.Lock()
	c.enrollBodies = append(c.enrollBodies, body)
	c.mu.Unlock()
	var req protocol.EnrollRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", err.Error())
		return
	}
	c.mu.Lock()
	tok := c.tokens[req.Token]
	var code, msg string
	switch {
	case tok == nil:
		code, msg = protocol.EnrollTokenInvalid, "unknown enrollment token"
	case tok.used:
		code, msg = protocol.EnrollTokenUsed, "enrollment token already used"
	case time.Now().After(tok.expires):
		code, msg = protocol.EnrollTokenExpired, "enrollment token expired at "+tok.expires.Format(time.RFC3339)
	default:
		tok.used = true
	}
	c.mu.Unlock()
	if code != "" {
		writeError(w, http.StatusUnauthorized, code, msg)
		return
	}
	certPEM, cert, err := c.CA.SignCSR([]byte(req.CSR), tok.robotID, time.Now().Add(-time.Minute), c.opts.Lifetime)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(protocol.EnrollResponse{Certificate: string(certPEM), CACertificate: string(c.CA.PEM), NotAfter: cert.NotAfter})
}

func (c *Control) agent(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		writeError(w, http.StatusUnauthorized, "certificate_required", "connect with the robot's certificate")
		return
	}
	leaf := r.TLS.PeerCertificates[0]
	robotID, err := protocol.RobotIDFromURI(firstURI(leaf.URIs))
	if err != nil {
		writeError(w, http.StatusForbidden, "not_a_robot", err.Error())
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(protocol.MaxFrameBytes)
	c.mu.Lock()
	c.conns = append(c.conns, Conn{RobotID: robotID, Serial: leaf.SerialNumber, Resumed: r.TLS.DidResume})
	c.ws = append(c.ws, ws)
	c.mu.Unlock()
	ctx := r.Context()
	send := func(t protocol.Type, payload any) {
		env, err := protocol.New(t, robotID, 1, time.Now(), payload)
		if err != nil {
			c.violate("encode %s: %v", t, err)
			return
		}
		b, _ := protocol.Encode(env)
		_ = ws.Write(ctx, websocket.MessageText, b)
	}
	first := true
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			return
		}
		env, err := protocol.Decode(data)
		if err != nil {
			c.violate("undecodable frame: %v", err)
			continue
		}
		if env.RobotID != robotID {
			c.violate("frame for robot %q on a connection certified for %q", env.RobotID, robotID)
			return
		}
		if first {
			first = false
			if env.Type != protocol.TypeHello {
				c.violate("first frame is %s, not hello", env.Type)
				return
			}
			caps := []string{protocol.CapTelemetry, protocol.CapEvents}
			if !c.opts.NoRenewCap {
				caps = append(caps, protocol.CapRenew)
			}
			send(protocol.TypeHello, protocol.HelloReply{Version: protocol.Version, NodeID: "pkitest", HeartbeatIntervalMS: 3_600_000, Capabilities: caps})
			continue
		}
		c.mu.Lock()
		c.frames = append(c.frames, env)
		c.mu.Unlock()
		switch env.Type {
		case protocol.TypeRenew:
			c.renew(env, send)
		case protocol.TypeHeartbeat, protocol.TypeTelemetry, protocol.TypeEvent, protocol.TypeResponse:
			send(protocol.TypeAck, protocol.Ack{Sequences: []uint64{env.Sequence}})
		default:
			c.violate("unexpected %s from robot", env.Type)
		}
	}
}

func (c *Control) renew(env protocol.Envelope, send func(protocol.Type, any)) {
	req, err := protocol.DecodePayload[protocol.Renew](env)
	if err != nil {
		c.violate("renew payload: %v", err)
		send(protocol.TypeError, protocol.Errorf(protocol.CodeInvalid, env.Sequence, "%v", err))
		return
	}
	c.mu.Lock()
	fail := c.renewErrors > 0
	if fail {
		c.renewErrors--
	}
	c.mu.Unlock()
	if fail {
		send(protocol.TypeError, protocol.Errorf(protocol.CodeInternal, env.Sequence, "certificate authority unavailable"))
		return
	}
	certPEM, cert, err := c.CA.SignCSR([]byte(req.CSR), env.RobotID, time.Now().Add(-time.Minute), c.opts.Lifetime)
	if err != nil {
		send(protocol.TypeError, protocol.Errorf(protocol.CodeInvalid, env.Sequence, "csr: %v", err))
		return
	}
	c.mu.Lock()
	c.renewed = append(c.renewed, &Renewal{Sequence: env.Sequence, Cert: certPEM})
	c.mu.Unlock()
	send(protocol.TypeCertificate, protocol.Certificate{Certificate: string(certPEM), CACertificate: string(c.CA.PEM), NotAfter: cert.NotAfter})
}

func firstURI(us []*url.URL) *url.URL {
	if len(us) == 0 {
		return nil
	}
	return us[0]
}
