package api

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// decodeBody reads a JSON request body strictly.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return badRequest("request body is not the expected JSON: %v", err)
	}
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	writeJSON(w, http.StatusOK, protocol.Whoami{Name: p.Name, Role: string(p.Role), TokenID: p.TokenID, Source: p.Source})
	return nil
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	ExpiresIn string `json:"expires_in,omitempty"` // Go duration, e.g. 720h; empty: never
}

// TokenCreated is the answer: the only time the secret is shown.
type TokenCreated struct {
	auth.TokenRecord
	Token string `json:"token"`
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req TokenRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	role, err := auth.ParseRole(req.Role)
	if err != nil {
		return badRequest("%v", err)
	}
	if req.Name == "" || len(req.Name) > 64 {
		return badRequest("name must be 1-64 characters")
	}
	now := s.o.Now().UTC()
	var expires time.Time
	if req.ExpiresIn != "" {
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d <= 0 {
			return badRequest("expires_in %q is not a positive duration like 720h", req.ExpiresIn)
		}
		expires = now.Add(d)
	}
	id, secret, full := auth.NewToken()
	d := store.TokenData{ID: id, Name: req.Name, Role: role, Hash: auth.HashSecret(secret), ExpiresAt: expires}
	if err := s.store.CreateToken(r.Context(), d, principal(r).Actor(), now); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, TokenCreated{
		TokenRecord: auth.TokenRecord{ID: id, Name: req.Name, Role: role, CreatedAt: now, ExpiresAt: expires},
		Token:       full,
	})
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	list, err := s.store.Tokens(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []auth.TokenRecord{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": list})
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := s.store.RevokeToken(r.Context(), id, principal(r).Actor(), s.o.Now()); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
	return nil
}

// EnrollmentTokenPrefix marks enrollment tokens (distinct from API tokens).
const EnrollmentTokenPrefix = "lke_"

func (s *Server) createEnrollment(w http.ResponseWriter, r *http.Request) error {
	if s.o.CA == nil {
		return &apiError{http.StatusConflict, "no_ca", "this control node runs without a CA (--insecure): it cannot enroll robots"}
	}
	var req protocol.EnrollmentRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := protocol.ValidRobotID(req.RobotID); err != nil {
		return badRequest("%v", err)
	}
	ttl := s.o.EnrollmentTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > 30*24*time.Hour {
			return badRequest("ttl %q must be a duration between 1s and 720h", req.TTL)
		}
		ttl = d
	}
	var b [20]byte
	_, _ = rand.Read(b[:])
	token := EnrollmentTokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	now := s.o.Now().UTC()
	if err := s.store.CreateEnrollment(r.Context(), req.RobotID, auth.HashSecret(token), now.Add(ttl), principal(r).Actor(), now); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, protocol.EnrollmentCreated{RobotID: req.RobotID, Token: token, ExpiresAt: now.Add(ttl)})
	return nil
}

// caCertificate serves the fleet CA certificate, which images carry so
// that robots trust control when they enroll (provision flash fetches it
// with the engineer's token, over a connection the engineer already
// trusts).
func (s *Server) caCertificate(w http.ResponseWriter, r *http.Request) error {
	if s.o.CA == nil {
		return &apiError{http.StatusConflict, "no_ca", "this control node runs without a CA (--insecure): it has no CA certificate to give"}
	}
	writeJSON(w, http.StatusOK, protocol.CACertificate{Certificate: string(s.o.CA.CertPEM)})
	return nil
}

// enroll trades a single-use token and a CSR for the robot's first
// certificate. The robot's key never leaves the robot: only its CSR comes.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	if s.o.CA == nil {
		return &apiError{http.StatusConflict, "no_ca", "this control node runs without a CA (--insecure): it cannot enroll robots"}
	}
	var req protocol.EnrollRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if !strings.HasPrefix(req.Token, EnrollmentTokenPrefix) {
		s.deny(r, protocol.EnrollTokenInvalid, "not an enrollment token", "")
		return &apiError{http.StatusUnauthorized, protocol.EnrollTokenInvalid, "token is not an enrollment token (lke_…); create one with `control enroll create --robot-id <id>`"}
	}
	if _, err := pki.ParseCSR([]byte(req.CSR)); err != nil {
		return &apiError{http.StatusBadRequest, "csr_invalid", err.Error()}
	}
	now := s.o.Now()
	var certPEM []byte
	robotID, info, err := s.store.ConsumeEnrollment(r.Context(), auth.HashSecret(req.Token), now, func(robotID string) (store.CertInfo, error) {
		pemBytes, cert, err := s.o.CA.SignRobot([]byte(req.CSR), robotID, s.o.RobotCertLifetime, now)
		if err != nil {
			return store.CertInfo{}, &apiError{http.StatusBadRequest, "csr_invalid", err.Error()}
		}
		certPEM = pemBytes
		return store.CertInfo{Serial: pki.SerialHex(cert), Fingerprint: pki.Fingerprint(cert), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter}, nil
	})
	for _, te := range []struct {
		err  error
		code string
		msg  string
	}{
		{store.ErrTokenInvalid, protocol.EnrollTokenInvalid, "unknown enrollment token"},
		{store.ErrTokenUsed, protocol.EnrollTokenUsed, "this enrollment token was already used"},
		{store.ErrTokenExpired, protocol.EnrollTokenExpired, "this enrollment token has expired"},
	} {
		if errors.Is(err, te.err) {
			s.deny(r, te.code, te.msg, robotID)
			return &apiError{http.StatusUnauthorized, te.code, te.msg + "; create a new one with `control enroll create --robot-id <id>`"}
		}
	}
	if err != nil {
		return err
	}
	s.log.Info("robot enrolled", "robot", robotID, "serial", info.Serial, "not_after", info.NotAfter)
	writeJSON(w, http.StatusOK, protocol.EnrollResponse{Certificate: string(certPEM), CACertificate: string(s.o.CA.CertPEM), NotAfter: info.NotAfter})
	return nil
}

// RevokeRequest is the optional body of POST /v1/robots/{id}/revoke.
type RevokeRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (s *Server) revokeRobot(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := protocol.ValidRobotID(id); err != nil {
		return badRequest("%v", err)
	}
	var req RevokeRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return err
		}
	}
	serials, err := s.store.RevokeRobot(r.Context(), id, req.Reason, principal(r).Actor(), s.o.Now())
	if err != nil {
		return err
	}
	if s.o.Revoked != nil {
		s.o.Revoked(id)
	}
	writeJSON(w, http.StatusOK, map[string]any{"robot_id": id, "revoked_serials": serials})
	return nil
}
