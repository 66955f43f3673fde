package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
)

// Protect puts h (a handler outside the route table, such as the embedded
// OCI registry at /v2/) behind the API's authentication: GET and HEAD need
// read, every other method needs write. A robot presenting its client
// certificate may read; everyone else needs a bearer token (or, for
// registry clients such as docker login, HTTP basic authentication with the
// token as password). Refusals are counted and audited like the API's.
func (s *Server) Protect(h http.Handler, read, write auth.Permission) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		perm := write
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			perm = read
		}
		if perm == read && s.isRobot(r) {
			h.ServeHTTP(w, r)
			return
		}
		if _, pw, ok := r.BasicAuth(); ok {
			r = r.Clone(r.Context())
			r.Header.Set("Authorization", "Bearer "+pw)
		}
		p, err := s.o.Auth.Authenticate(r.Context(), r)
		if err != nil {
			s.deny(r, "unauthenticated", err.Error(), "")
			// Basic, not Bearer: OCI clients treat a Bearer challenge as a
			// token service to call; with Basic they send the token as is.
			w.Header().Set("WWW-Authenticate", `Basic realm="lekiwi"`)
			regError(w, http.StatusUnauthorized, "UNAUTHORIZED", err.Error()+"; send a control API token (provision image push --token)")
			return
		}
		if !p.Role.Allows(perm) {
			s.deny(r, "forbidden", fmt.Sprintf("%s (role %s) lacks permission %s", p.Actor(), p.Role, perm), "")
			regError(w, http.StatusForbidden, "DENIED", fmt.Sprintf("role %s lacks permission %q needed for %s %s", p.Role, perm, r.Method, r.URL.Path))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isRobot reports whether the request carries a robot certificate of the
// fleet CA (the TLS handshake already refused revoked ones).
func (s *Server) isRobot(r *http.Request) bool {
	if s.o.CA == nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	now := time.Now()
	if s.o.Now != nil {
		now = s.o.Now()
	}
	_, _, err := s.o.CA.VerifyRobot(r.TLS.PeerCertificates, now)
	return err == nil
}

// regError writes an OCI distribution-spec error body.
func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
