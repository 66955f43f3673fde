package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/lekiwi/heartbeat/control/deploy"
)

// Deployments: engineers create and steer them, operators read
// them. The leader's engine (control/deploy) does the rolling out; these
// handlers only record what was asked.

// DeploymentActionRequest is the optional body of POST
// /v1/deployments/{id}/pause|resume|abort|rollback.
type DeploymentActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

// createDeployment: POST /v1/deployments with a deploy.Spec.
func (s *Server) createDeployment(w http.ResponseWriter, r *http.Request) error {
	var spec deploy.Spec
	if err := decodeBody(r, &spec); err != nil {
		return err
	}
	d, err := deploy.Create(r.Context(), s.store, spec, principal(r).Actor(), s.o.Now())
	if err != nil {
		return deployError(err)
	}
	writeJSON(w, http.StatusCreated, d)
	return nil
}

// listDeployments: GET /v1/deployments[?state=running&limit=N], newest
// first, without per-robot rows.
func (s *Server) listDeployments(w http.ResponseWriter, r *http.Request) error {
	limit, err := parseLimit(r.URL.Query().Get("limit"))
	if err != nil {
		return err
	}
	list, err := deploy.List(r.Context(), s.store, r.URL.Query().Get("state"), limit)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*deploy.Deployment{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"deployments": list})
	return nil
}

// getDeployment: GET /v1/deployments/{id} with per-batch and per-robot
// progress.
func (s *Server) getDeployment(w http.ResponseWriter, r *http.Request) error {
	d, err := deploy.Get(r.Context(), s.store, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

// deploymentAction makes the handler of POST /v1/deployments/{id}/<verb>.
func (s *Server) deploymentAction(verb string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req DeploymentActionRequest
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(body)) > 0 {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				return badRequest("request body is not the expected JSON ({\"reason\": \"…\"}): %v", err)
			}
		}
		if len(req.Reason) > 500 {
			return badRequest("reason is longer than 500 characters")
		}
		id, actor, now := r.PathValue("id"), principal(r).Actor(), s.o.Now()
		var act func(context.Context) (*deploy.Deployment, error)
		switch verb {
		case "pause":
			act = func(ctx context.Context) (*deploy.Deployment, error) {
				return deploy.Pause(ctx, s.store, id, req.Reason, actor, now)
			}
		case "resume":
			act = func(ctx context.Context) (*deploy.Deployment, error) {
				return deploy.Resume(ctx, s.store, id, actor, now)
			}
		case "abort":
			act = func(ctx context.Context) (*deploy.Deployment, error) {
				return deploy.Abort(ctx, s.store, id, req.Reason, actor, now)
			}
		case "rollback":
			act = func(ctx context.Context) (*deploy.Deployment, error) {
				return deploy.Rollback(ctx, s.store, id, req.Reason, actor, now)
			}
		default:
			return fmt.Errorf("unknown deployment action %q", verb)
		}
		d, err := act(r.Context())
		if err != nil {
			return deployError(err)
		}
		writeJSON(w, http.StatusOK, d)
		return nil
	}
}

// deployError maps the engine's refusals onto HTTP answers.
func deployError(err error) error {
	switch {
	case errors.Is(err, deploy.ErrInvalid):
		return badRequest("%v", err)
	case errors.Is(err, deploy.ErrState), errors.Is(err, deploy.ErrConflict):
		return &apiError{http.StatusConflict, "conflict", err.Error() + "; see GET /v1/deployments/{id}"}
	case errors.Is(err, deploy.ErrRebuilding):
		// After a restore the deployment tables are refolded from the log
		// before anything is decided from them: a short wait, not an outage.
		return &apiError{http.StatusServiceUnavailable, "rebuilding", err.Error() + "; retry in a few seconds"}
	}
	return err
}
