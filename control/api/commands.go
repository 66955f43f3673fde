package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// CommandRequest is the body of POST /v1/robots/{id}/commands.
type CommandRequest struct {
	Name    string          `json:"name"`
	Args    json.RawMessage `json:"args,omitempty"`
	Timeout string          `json:"timeout,omitempty"` // Go duration; default 10m
}

// queueCommand puts a command in the outbox; whichever node holds the
// robot's connection delivers it (now, or when the robot next connects).
func (s *Server) queueCommand(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := protocol.ValidRobotID(id); err != nil {
		return badRequest("%v", err)
	}
	var req CommandRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	timeout := 10 * time.Minute
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 || d > 7*24*time.Hour {
			return badRequest("timeout %q must be a duration between 1s and 168h", req.Timeout)
		}
		timeout = d
	}
	if _, err := s.store.Robot(r.Context(), id); err != nil {
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	now := s.o.Now().UTC()
	cmd := protocol.Command{ID: "cmd-" + hex.EncodeToString(b[:]), Name: req.Name, Args: req.Args, Deadline: now.Add(timeout)}
	if err := cmd.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if err := s.store.QueueCommand(r.Context(), id, cmd, principal(r).Actor(), now); err != nil {
		return err
	}
	c, err := s.store.Command(r.Context(), cmd.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, c)
	return nil
}

func (s *Server) getCommand(w http.ResponseWriter, r *http.Request) error {
	c, err := s.store.Command(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}
