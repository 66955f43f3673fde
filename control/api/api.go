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
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
}

// Server holds the API's dependencies.
type Server struct {
	store    *store.Store
	log      *slog.Logger
	gatherer prometheus.Gatherer
	latency  *prometheus.HistogramVec
}

// New builds an API over st.
func New(st *store.Store, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	s := &Server{
		store:    st,
		log:      o.Logger.With("component", "api"),
		gatherer: o.Gatherer,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lekiwi_control_api_request_seconds",
			Help:    "REST API request latency by route and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "code"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.latency)
	}
	return s
}

// Register adds the API's routes to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.Handle("GET /v1/robots", s.instrument("/v1/robots", s.listRobots))
	mux.Handle("GET /v1/robots/{id}", s.instrument("/v1/robots/{id}", s.getRobot))
	mux.Handle("GET /v1/events", s.instrument("/v1/events", s.listEvents))
	mux.Handle("GET /v1/cluster", s.instrument("/v1/cluster", s.cluster))
	mux.Handle("GET /healthz", s.instrument("/healthz", s.healthz))
	mux.Handle("GET /readyz", s.instrument("/readyz", s.readyz))
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s; see GET /v1/robots, /v1/robots/{id}, /v1/events", r.Method, r.URL.Path))
	})
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

// instrument turns an error-returning handler into an http.Handler that
// answers errors as JSON and records latency under the route pattern.
func (s *Server) instrument(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if err := h(rec, r); err != nil {
			var ae *apiError
			switch {
			case errors.As(err, &ae):
				writeError(rec, ae.status, ae.code, ae.msg)
			case errors.Is(err, store.ErrNotFound):
				writeError(rec, http.StatusNotFound, "not_found", err.Error())
			case errors.Is(err, context.Canceled):
				writeError(rec, 499, "canceled", "request canceled")
			default:
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				writeError(rec, http.StatusServiceUnavailable, "unavailable", "control could not answer (database unavailable?): "+err.Error())
			}
		}
		s.latency.WithLabelValues(route, strconv.Itoa(rec.status)).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// ErrorBody is the JSON shape of every error response.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
