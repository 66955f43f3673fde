package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/telemetry"
)

// Telemetry history and alerts. The leader's control/telemetry
// job fills the tables from the event log; these handlers only read.
//
//	GET /v1/robots/{id}/telemetry?metric=cpu,temperature&from=&to=&step=
//	GET /v1/telemetry?metric=&from=&to=&step=     (all robots together)
//	GET /v1/alerts                                (alerts firing now)
//
// from and to are RFC 3339 times or durations before now ("-2h"); the
// defaults are the last hour. step is a Go duration ("30s", "5m"); the
// default gives about 360 points. The resolution (raw, 1m, 1h) follows
// from the range's age and the step: see telemetry.Plan.

// robotTelemetry: GET /v1/robots/{id}/telemetry.
func (s *Server) robotTelemetry(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if _, err := s.store.Robot(r.Context(), id); err != nil {
		return err // 404 for an unknown robot
	}
	return s.telemetryQuery(w, r, id)
}

// fleetTelemetry: GET /v1/telemetry, every robot's samples aggregated.
func (s *Server) fleetTelemetry(w http.ResponseWriter, r *http.Request) error {
	return s.telemetryQuery(w, r, "")
}

func (s *Server) telemetryQuery(w http.ResponseWriter, r *http.Request, robotID string) error {
	q, err := parseTelemetryQuery(r, s.o.Now())
	if err != nil {
		return err
	}
	q.RobotID = robotID
	tel, err := telemetry.New(s.store, telemetry.Options{Now: s.o.Now, Logger: s.log})
	if err != nil {
		return err
	}
	res, err := tel.Query(r.Context(), q)
	if errors.Is(err, telemetry.ErrBadQuery) {
		return badRequest("%v", err)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func parseTelemetryQuery(r *http.Request, now time.Time) (telemetry.Query, error) {
	v := r.URL.Query()
	var q telemetry.Query
	if m := v.Get("metric"); m != "" {
		for _, name := range strings.Split(m, ",") {
			metric, err := telemetry.ParseMetric(strings.TrimSpace(name))
			if err != nil {
				return q, badRequest("metric: %v", err)
			}
			q.Metrics = append(q.Metrics, metric)
		}
	}
	var err error
	if q.From, err = parseTimeParam("from", v.Get("from"), now); err != nil {
		return q, err
	}
	if q.To, err = parseTimeParam("to", v.Get("to"), now); err != nil {
		return q, err
	}
	if st := v.Get("step"); st != "" {
		if q.Step, err = time.ParseDuration(st); err != nil || q.Step <= 0 {
			return q, badRequest("step %q: want a positive duration such as 30s, 5m or 1h", st)
		}
	}
	return q, nil
}

// parseTimeParam reads an RFC 3339 time or a duration relative to now
// ("-90m"); empty is the zero time (the query's default).
func parseTimeParam(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d <= 0 {
		return now.Add(d), nil
	}
	return time.Time{}, badRequest("%s %q: want an RFC 3339 time (2026-03-02T10:00:00Z) or a negative duration before now (-2h)", name, v)
}

// listAlerts: GET /v1/alerts, the alerts firing now.
func (s *Server) listAlerts(w http.ResponseWriter, r *http.Request) error {
	tel, err := telemetry.New(s.store, telemetry.Options{Now: s.o.Now, Logger: s.log})
	if err != nil {
		return err
	}
	firing, err := tel.Firing(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"alerts": firing})
	return nil
}
