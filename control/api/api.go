// Package api serves control's REST API: robots, the event log, health and
// metrics. Handlers only read; writes reach the store through the gateway
// (and, later, command and deployment endpoints).
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// Page size limits.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Options configure the API.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Auth authenticates callers; required.
	Auth *auth.Authenticator
	// CA signs robot certificates at enrollment; nil disables enrollment
	// (a node running --insecure).
	CA *pki.CA
	// RobotCertLifetime is a robot certificate's validity (default 90 days).
	RobotCertLifetime time.Duration
	// EnrollmentTTL is how long an enrollment token is valid (default 24 h).
	EnrollmentTTL time.Duration
	// RateLimit and RateBurst bound requests per principal (default 20/s,
	// burst 40); the local admin socket is not limited.
	RateLimit rate.Limit
	RateBurst int
	// Revoked is called after a robot's identity was revoked, so this node
	// cuts the robot's live session at once (other nodes learn from the log).
	Revoked func(robotID string)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Leave removes this node from the cluster (`control leave`).
	Leave func(context.Context) error
	// Fenced, when set and true, means this node cannot reach the
	// database's majority: writes are refused at once instead of waiting
	// out the request timeout.
	Fenced func() bool
}

// Server holds the API's dependencies.
type Server struct {
	store    *store.Store
	log      *slog.Logger
	gatherer prometheus.Gatherer
	latency  *prometheus.HistogramVec
	denied   *prometheus.CounterVec
	o        Options
	limiter  *limiter
	audit    *rate.Limiter
}

// New builds an API over st.
func New(st *store.Store, o Options) (*Server, error) {
	if o.Auth == nil {
		return nil, errors.New("api: an authenticator is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	if o.RobotCertLifetime <= 0 {
		o.RobotCertLifetime = 90 * 24 * time.Hour
	}
	if o.EnrollmentTTL <= 0 {
		o.EnrollmentTTL = 24 * time.Hour
	}
	if o.RateLimit <= 0 {
		o.RateLimit, o.RateBurst = 20, 40
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{
		store:    st,
		log:      o.Logger.With("component", "api"),
		gatherer: o.Gatherer,
		o:        o,
		limiter:  newLimiter(o.RateLimit, o.RateBurst),
		// Audit records of refusals are capped so a flood of bad requests
		// cannot flood the replicated log; the counter still counts all.
		audit: rate.NewLimiter(20, 100),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lekiwi_control_api_request_seconds",
			Help:    "REST API request latency by route and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "code"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_control_access_denied_total",
			Help: "Requests and robot connections refused, by reason.",
		}, []string{"reason"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.latency, s.denied)
	}
	return s, nil
}

// RobotList is the body of GET /v1/robots.
type RobotList struct {
	Robots []store.Robot `json:"robots"`
	// Next is the cursor for the following page (pass as ?after=), empty on
	// the last page.
	Next string `json:"next,omitempty"`
}

func (s *Server) listRobots(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit, err := parseLimit(q.Get("limit"))
	if err != nil {
		return err
	}
	f := store.RobotFilter{State: q.Get("state"), Type: q.Get("type"), AfterID: q.Get("after"), Limit: limit}
	switch f.State {
	case "", store.StateOnline, store.StateOffline:
	default:
		return badRequest("state must be online or offline, got %q", f.State)
	}
	if f.Type != "" && !protocol.RobotType(f.Type).Valid() {
		return badRequest("type must be lekiwi or xle, got %q", f.Type)
	}
	robots, err := s.store.Robots(r.Context(), f)
	if err != nil {
		return err
	}
	out := RobotList{Robots: robots}
	if out.Robots == nil {
		out.Robots = []store.Robot{}
	}
	if len(robots) == limit {
		out.Next = robots[len(robots)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getRobot(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := protocol.ValidRobotID(id); err != nil {
		return badRequest("%v", err)
	}
	robot, err := s.store.Robot(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, robot)
	return nil
}

// EventPage is the body of GET /v1/events.
type EventPage struct {
	Events []store.Event `json:"events"`
	// Next is the sequence to pass as ?after= for the following page; equal
	// to after when there is nothing new yet.
	Next int64 `json:"next"`
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit, err := parseLimit(q.Get("limit"))
	if err != nil {
		return err
	}
	var after int64
	if v := q.Get("after"); v != "" {
		after, err = strconv.ParseInt(v, 10, 64)
		if err != nil || after < 0 {
			return badRequest("after must be a non-negative event sequence, got %q", v)
		}
	}
	robot := q.Get("robot")
	if robot != "" {
		if err := protocol.ValidRobotID(robot); err != nil {
			return badRequest("%v", err)
		}
	}
	events, err := s.store.Events(r.Context(), after, limit, robot)
	if err != nil {
		return err
	}
	page := EventPage{Events: events, Next: after}
	if page.Events == nil {
		page.Events = []store.Event{}
	}
	if n := len(events); n > 0 {
		page.Next = events[n-1].Seq
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) error {
	leader, members, err := s.store.Cluster(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"leader": leader, "members": members, "this": s.store.Address()})
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not_ready", "database unavailable (is a majority of the cluster up?): "+err.Error())
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

// apiError is an error with an HTTP status and a stable code.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, "bad_request", fmt.Sprintf(format, args...)}
}

func parseLimit(v string) (int, error) {
	if v == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, badRequest("limit must be a whole number from 1 to %d, got %q", MaxLimit, v)
	}
	return n, nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, protocol.ErrorBody{Error: protocol.ErrorDetail{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
