package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/logfollow"
	"github.com/lekiwi/heartbeat/protocol"
)

// revocationPoll is how often each node reads new revocations from the log;
// well under the one second in which a revoked robot must be cut off.
const revocationPoll = 250 * time.Millisecond

// VerifyConnection is the TLS server's client-certificate check (install it
// as tls.Config.VerifyConnection with ClientAuth RequestClientCert). It runs
// on full handshakes and on resumed sessions alike, so a revoked robot
// cannot come back on an old session ticket. Connections without a client
// certificate pass here (API callers use bearer tokens); /v1/agent refuses
// them.
func (g *Gateway) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 || g.cfg.CA == nil {
		return nil
	}
	g.metrics.handshakes.WithLabelValues(strconv.FormatBool(cs.DidResume)).Inc()
	now := g.cfg.Now()
	_, leaf, err := g.cfg.CA.VerifyRobot(cs.PeerCertificates, now)
	if err != nil {
		if pki.ReasonOf(err) == pki.ReasonNotRobot {
			if _, nerr := g.cfg.CA.VerifyNode(cs.PeerCertificates, now); nerr == nil {
				return nil // a control node, witness or netboot station
			}
		}
		g.deny(store.DeniedData{Reason: string(pki.ReasonOf(err)), Fingerprint: pki.Fingerprint(cs.PeerCertificates[0]), Detail: err.Error()}, claimedRobot(cs.PeerCertificates[0]))
		return err
	}
	id, _ := pki.RobotIDFromCert(leaf)
	if at, revoked := g.revokedAt(id); revoked && issuedBefore(leaf, at) {
		g.deny(store.DeniedData{Reason: "revoked", Fingerprint: pki.Fingerprint(leaf), Detail: fmt.Sprintf("robot %s was revoked at %s; certificate %s predates it", id, at.Format(time.RFC3339), pki.SerialHex(leaf))}, id)
		return fmt.Errorf("certificate %s of robot %s is revoked", pki.SerialHex(leaf), id)
	}
	return nil
}

// issuedBefore reports whether cert was issued at or before t. Signing
// backdates NotBefore by pki.ClockSkew; undo that to get the issue time.
func issuedBefore(cert *x509.Certificate, t time.Time) bool {
	return !cert.NotBefore.Add(pki.ClockSkew).After(t)
}

// claimedRobot is the robot id a certificate names, whether or not it is
// trustworthy, for the audit record.
func claimedRobot(cert *x509.Certificate) string {
	if protocol.ValidRobotID(cert.Subject.CommonName) == nil {
		return cert.Subject.CommonName
	}
	return ""
}

// peerIdentity checks the robot's certificate on an agent request; ok is
// false when the request was refused (and answered).
func (g *Gateway) peerIdentity(w http.ResponseWriter, r *http.Request) (robotID, serial string, ok bool) {
	if g.cfg.CA == nil {
		return "", "", true // --insecure development mode
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		g.deny(store.DeniedData{Reason: "no_client_certificate", Remote: r.RemoteAddr, Path: r.URL.Path}, "")
		http.Error(w, "robots must present their client certificate (mTLS)", http.StatusUnauthorized)
		return "", "", false
	}
	leaf := r.TLS.PeerCertificates[0]
	id, err := pki.RobotIDFromCert(leaf)
	if err != nil {
		g.deny(store.DeniedData{Reason: "not_robot", Remote: r.RemoteAddr, Fingerprint: pki.Fingerprint(leaf), Detail: err.Error()}, "")
		http.Error(w, "the client certificate is not a robot certificate", http.StatusForbidden)
		return "", "", false
	}
	return id, pki.SerialHex(leaf), true
}

// deny counts a refusal and, within the audit budget, records it.
func (g *Gateway) deny(d store.DeniedData, robotID string) {
	g.metrics.denied.WithLabelValues(d.Reason).Inc()
	if !g.audit.Allow() {
		return
	}
	data, _ := json.Marshal(d)
	ev := store.Event{RobotID: robotID, Type: store.TypeAccessDenied, Time: g.cfg.Now().UTC(), Data: data, Actor: "control"}
	select {
	case g.commits <- commitReq{event: ev, received: time.Now()}:
	default: // the committer is saturated; the counter still has it
	}
}

func (g *Gateway) revokedAt(robotID string) (time.Time, bool) {
	g.revMu.RLock()
	defer g.revMu.RUnlock()
	t, ok := g.revoked[robotID]
	return t, ok
}

func (g *Gateway) setRevoked(robotID string, at time.Time) {
	g.revMu.Lock()
	defer g.revMu.Unlock()
	if at.After(g.revoked[robotID]) {
		g.revoked[robotID] = at
	}
}

// CloseRobot cuts a robot's session on this node, if it has one.
func (g *Gateway) CloseRobot(robotID, reason string) bool {
	g.mu.Lock()
	s := g.sessions[robotID]
	g.mu.Unlock()
	if s == nil {
		return false
	}
	s.close(websocket.StatusPolicyViolation, reason)
	return true
}

// watchRevocations loads the revoked serials, then tails the log for new
// revocations and cuts the affected sessions on this node.
func (g *Gateway) watchRevocations(ctx context.Context) {
	f := logfollow.Follower{
		Log: g.store, Types: []string{store.TypeRobotRevoked}, Poll: revocationPoll,
		Start: func(ctx context.Context) (int64, error) {
			last, err := g.store.LastSeq(ctx)
			if err != nil {
				return 0, err
			}
			robots, err := g.store.RevokedRobots(ctx)
			if err != nil {
				return 0, err
			}
			for id, at := range robots {
				g.setRevoked(id, at)
			}
			return last, nil
		},
		StartFailed: func(err error) { g.log.Warn("cannot load revoked certificates yet; retrying", "err", err) },
		ReadFailed:  func(err error) { g.log.Warn("cannot read revocations; retrying", "err", err) },
	}
	_ = f.Run(ctx, func(e store.Event) {
		g.setRevoked(e.RobotID, e.Time)
		if g.CloseRobot(e.RobotID, "robot identity revoked") {
			g.log.Info("revoked robot's session closed", "robot", e.RobotID)
		}
	})
}

// renew signs a new certificate for the robot's new key and records it.
func (s *session) renew(ctx context.Context, env protocol.Envelope) *protocol.Error {
	if s.g.cfg.CA == nil {
		return protocol.Errorf(protocol.CodeNotReady, env.Sequence, "this control node has no CA (--insecure); it cannot renew certificates")
	}
	req, err := protocol.DecodePayload[protocol.Renew](env)
	if err != nil {
		return asProtocolError(err)
	}
	now := s.g.cfg.Now()
	certPEM, cert, err := s.g.cfg.CA.SignRobot([]byte(req.CSR), s.robotID, s.g.cfg.RobotCertLifetime, now)
	if err != nil {
		return protocol.Errorf(protocol.CodeInvalid, env.Sequence, "renewal CSR refused: %v", err)
	}
	info := store.CertInfo{Serial: pki.SerialHex(cert), Fingerprint: pki.Fingerprint(cert), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter}
	data, _ := json.Marshal(info)
	ev := store.Event{RobotID: s.robotID, Type: store.TypeCertificateIssued, Time: now.UTC(), Data: data, Actor: "robot:" + s.robotID, CorrelationID: s.id}
	if err := s.g.appendAndWait(ctx, ev); err != nil {
		return protocol.Errorf(protocol.CodeNotReady, env.Sequence, "could not record the renewed certificate; retry later")
	}
	frame, err := s.frame(protocol.TypeCertificate, protocol.Certificate{Certificate: string(certPEM), CACertificate: string(s.g.cfg.CA.CertPEM), NotAfter: cert.NotAfter})
	if err != nil {
		return protocol.Errorf(protocol.CodeInternal, env.Sequence, "encode certificate: %v", err)
	}
	s.send(ctx, frame)
	s.g.log.Info("robot certificate renewed", "robot", s.robotID, "serial", info.Serial, "not_after", info.NotAfter)
	return nil
}

// HasSession reports whether robotID has a session on this node.
func (g *Gateway) HasSession(robotID string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sessions[robotID] != nil
}
