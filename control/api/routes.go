package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
)

// Request limits.
const (
	MaxBodyBytes = 1 << 20 // larger bodies get 413
	// RequestTimeout bounds reading the body and answering. It is half the
	// CLI's patience so that a node cut off from the cluster's majority
	// answers with an error the operator can act on instead of a client
	// timeout.
	RequestTimeout = 15 * time.Second
)

// Route is one API endpoint and the permission it needs. Every route is in
// the table returned by Routes; the RBAC test walks that table, so a route
// cannot be added without deciding who may call it.
type Route struct {
	Method  string
	Pattern string
	Perm    auth.Permission
	// Mutating routes write an event naming the principal as actor.
	Mutating bool
	Handle   func(http.ResponseWriter, *http.Request) error
}

// Routes is the API's route table.
func (s *Server) Routes() []Route {
	metrics := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})
	return []Route{
		{Method: "GET", Pattern: "/healthz", Perm: auth.PermPublic, Handle: s.healthz},
		{Method: "GET", Pattern: "/readyz", Perm: auth.PermPublic, Handle: s.readyz},
		{Method: "POST", Pattern: "/v1/enroll", Perm: auth.PermPublic, Mutating: true, Handle: s.enroll},
		{Method: "GET", Pattern: "/metrics", Perm: auth.PermRead, Handle: func(w http.ResponseWriter, r *http.Request) error {
			metrics.ServeHTTP(w, r)
			return nil
		}},
		{Method: "GET", Pattern: "/v1/whoami", Perm: auth.PermRead, Handle: s.whoami},
		{Method: "GET", Pattern: "/v1/robots", Perm: auth.PermRead, Handle: s.listRobots},
		{Method: "GET", Pattern: "/v1/robots/{id}", Perm: auth.PermRead, Handle: s.getRobot},
		{Method: "GET", Pattern: "/v1/events", Perm: auth.PermRead, Handle: s.listEvents},
		{Method: "GET", Pattern: "/v1/robots/{id}/telemetry", Perm: auth.PermRead, Handle: s.robotTelemetry},
		{Method: "GET", Pattern: "/v1/telemetry", Perm: auth.PermRead, Handle: s.fleetTelemetry},
		{Method: "GET", Pattern: "/v1/alerts", Perm: auth.PermRead, Handle: s.listAlerts},
		{Method: "GET", Pattern: "/v1/cluster", Perm: auth.PermRead, Handle: s.cluster},
		{Method: "POST", Pattern: "/v1/cluster/leave", Perm: auth.PermAdmin, Mutating: true, Handle: s.leaveCluster},
		{Method: "DELETE", Pattern: "/v1/cluster/members/{id}", Perm: auth.PermAdmin, Mutating: true, Handle: s.removeMember},
		{Method: "GET", Pattern: "/v1/ca", Perm: auth.PermRead, Handle: s.caCertificate},
		{Method: "POST", Pattern: "/v1/enrollments", Perm: auth.PermConfigure, Mutating: true, Handle: s.createEnrollment},
		{Method: "POST", Pattern: "/v1/robots/{id}/commands", Perm: auth.PermConfigure, Mutating: true, Handle: s.queueCommand},
		{Method: "GET", Pattern: "/v1/commands/{id}", Perm: auth.PermRead, Handle: s.getCommand},
		{Method: "POST", Pattern: "/v1/robots/{id}/revoke", Perm: auth.PermAdmin, Mutating: true, Handle: s.revokeRobot},
		{Method: "GET", Pattern: "/v1/tokens", Perm: auth.PermAdmin, Handle: s.listTokens},
		{Method: "POST", Pattern: "/v1/tokens", Perm: auth.PermAdmin, Mutating: true, Handle: s.createToken},
		{Method: "DELETE", Pattern: "/v1/tokens/{id}", Perm: auth.PermAdmin, Mutating: true, Handle: s.revokeToken},
		{Method: "POST", Pattern: "/v1/factory/events", Perm: auth.PermFactory, Mutating: true, Handle: s.factoryEvents},
		{Method: "POST", Pattern: "/v1/factory/robots", Perm: auth.PermFactory, Mutating: true, Handle: s.factoryRobot},
		{Method: "GET", Pattern: "/v1/admin/backup", Perm: auth.PermAdmin, Handle: s.backup},
		{Method: "GET", Pattern: "/v1/admin/storage", Perm: auth.PermAdmin, Handle: s.storage},
		{Method: "POST", Pattern: "/v1/deployments", Perm: auth.PermDeploy, Mutating: true, Handle: s.createDeployment},
		{Method: "GET", Pattern: "/v1/deployments", Perm: auth.PermRead, Handle: s.listDeployments},
		{Method: "GET", Pattern: "/v1/deployments/{id}", Perm: auth.PermRead, Handle: s.getDeployment},
		{Method: "POST", Pattern: "/v1/deployments/{id}/pause", Perm: auth.PermDeploy, Mutating: true, Handle: s.deploymentAction("pause")},
		{Method: "POST", Pattern: "/v1/deployments/{id}/resume", Perm: auth.PermDeploy, Mutating: true, Handle: s.deploymentAction("resume")},
		{Method: "POST", Pattern: "/v1/deployments/{id}/abort", Perm: auth.PermDeploy, Mutating: true, Handle: s.deploymentAction("abort")},
		{Method: "POST", Pattern: "/v1/deployments/{id}/rollback", Perm: auth.PermDeploy, Mutating: true, Handle: s.deploymentAction("rollback")},
	}
}

// Register adds every route to mux, behind authentication.
func (s *Server) Register(mux *http.ServeMux) {
	s.register(mux, false)
}

// LocalHandler serves the same routes for the local admin socket: whoever
// can open the socket (root on the control host) acts as admin.
func (s *Server) LocalHandler() http.Handler {
	mux := http.NewServeMux()
	s.register(mux, true)
	return mux
}

func (s *Server) register(mux *http.ServeMux, local bool) {
	for _, rt := range s.Routes() {
		mux.Handle(rt.Method+" "+rt.Pattern, s.wrap(rt, local))
	}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w)
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s; see GET /v1/robots, /v1/robots/{id}, /v1/events", r.Method, r.URL.Path))
	})
}

type principalKey struct{}

// principal returns the caller of an authenticated request.
func principal(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

// wrap applies, in order: security headers, body and time limits,
// authentication, permission check, rate limit, the handler, JSON errors,
// latency metrics.
func (s *Server) wrap(rt Route, local bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		securityHeaders(rec)
		r.Body = http.MaxBytesReader(rec, r.Body, MaxBodyBytes)
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(RequestTimeout))
		ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		err := s.authorize(rec, r, rt, local, &r)
		if err == nil && rt.Mutating && s.o.Fenced != nil && s.o.Fenced() {
			err = &apiError{http.StatusServiceUnavailable, "unavailable", "this control node cannot reach the cluster majority, so it cannot write; use another control node or check `control cluster status`"}
		}
		if err == nil {
			err = rt.Handle(rec, r)
		}
		if err != nil {
			s.writeErr(rec, r, err)
		}
		s.latency.WithLabelValues(rt.Pattern, strconv.Itoa(rec.status)).Observe(time.Since(start).Seconds())
	})
}

// authorize authenticates the caller and checks the route's permission,
// storing the principal in the request context.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, rt Route, local bool, out **http.Request) error {
	var p auth.Principal
	switch {
	case local:
		p = auth.LocalAdmin()
	case rt.Perm == auth.PermPublic:
		p = auth.Principal{Name: r.RemoteAddr, Source: "anonymous"}
	default:
		var err error
		p, err = s.o.Auth.Authenticate(r.Context(), r)
		if err != nil {
			s.deny(r, "unauthenticated", err.Error(), "")
			w.Header().Set("WWW-Authenticate", `Bearer realm="lekiwi"`)
			return &apiError{http.StatusUnauthorized, "unauthenticated", err.Error()}
		}
		if !p.Role.Allows(rt.Perm) {
			s.deny(r, "forbidden", fmt.Sprintf("%s (role %s) lacks permission %s", p.Actor(), p.Role, rt.Perm), "")
			return &apiError{http.StatusForbidden, "forbidden", fmt.Sprintf("role %s lacks permission %q needed for %s %s", p.Role, rt.Perm, rt.Method, rt.Pattern)}
		}
		if !s.limiter.allow(p.Source + ":" + p.Name) {
			w.Header().Set("Retry-After", "1")
			return &apiError{http.StatusTooManyRequests, "rate_limited", fmt.Sprintf("more than %.0f requests per second from %s; slow down", float64(s.o.RateLimit), p.Actor())}
		}
	}
	*out = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
	return nil
}

// deny counts a refusal and, within the audit budget, records it.
func (s *Server) deny(r *http.Request, reason, detail, claimed string) {
	s.denied.WithLabelValues(reason).Inc()
	if !s.audit.Allow() {
		return
	}
	data, _ := json.Marshal(store.DeniedData{Reason: reason, Remote: r.RemoteAddr, Path: r.Method + " " + r.URL.Path, Detail: detail, Claimed: claimed})
	ev := store.Event{RobotID: claimed, Type: store.TypeAccessDenied, Time: s.o.Now().UTC(), Data: data, Actor: "control"}
	// Detached from the request: the refusal is answered at once, the
	// audit record follows.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := s.store.Append(ctx, []store.Event{ev}); err != nil {
			s.log.Warn("could not record an access denial", "reason", reason, "err", err)
		}
	}()
}

func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		writeError(w, ae.status, ae.code, ae.msg)
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", tooBig.Limit))
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, context.Canceled):
		writeError(w, 499, "canceled", "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "timeout", fmt.Sprintf("no answer within %s: the database did not respond (is a majority of the cluster up? check `control cluster status`); retry", RequestTimeout))
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, "unavailable", "control could not answer (database unavailable?): "+err.Error())
	}
}

// securityHeaders are sent on every response: the API serves JSON that
// must never be sniffed as HTML, framed or cached by intermediaries.
func securityHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Cache-Control", "no-store")
}

// limiter keeps one token bucket per principal.
type limiter struct {
	mu      sync.Mutex
	limit   rate.Limit
	burst   int
	buckets map[string]*rate.Limiter
}

func newLimiter(l rate.Limit, burst int) *limiter {
	return &limiter{limit: l, burst: burst, buckets: map[string]*rate.Limiter{}}
}

func (l *limiter) allow(key string) bool {
	l.mu.Lock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) > 10000 { // bound memory: forget idle principals
			l.buckets = map[string]*rate.Limiter{}
		}
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[key] = b
	}
	l.mu.Unlock()
	return b.Allow()
}
