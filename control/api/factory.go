package api

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// The factory routes serve netboot stations, which authenticate with their
// node certificate (role node, permission factory).

var streamName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func (s *Server) factoryEvents(w http.ResponseWriter, r *http.Request) error {
	var req protocol.FactoryEvents
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if !streamName.MatchString(req.Stream) {
		return badRequest("stream %q must be 1-64 of letters, digits, '.', '_' and '-'", req.Stream)
	}
	if len(req.Events) == 0 || len(req.Events) > protocol.MaxFactoryBatch {
		return badRequest("send 1 to %d events per request, not %d", protocol.MaxFactoryBatch, len(req.Events))
	}
	p := principal(r)
	stream := "station:" + p.Name + ":" + req.Stream
	now := s.o.Now().UTC()
	events := make([]store.Event, 0, len(req.Events))
	for i, e := range req.Events {
		if e.Type != protocol.EventDeviceSeen && e.Type != protocol.EventFactoryStep {
			return badRequest("event %d: type %q is not %s or %s", i, e.Type, protocol.EventDeviceSeen, protocol.EventFactoryStep)
		}
		if e.Seq == 0 {
			return badRequest("event %d: seq must start at 1", i)
		}
		if e.RobotID != "" {
			if err := protocol.ValidRobotID(e.RobotID); err != nil {
				return badRequest("event %d: %v", i, err)
			}
		}
		if e.Time.IsZero() {
			return badRequest("event %d: time is required", i)
		}
		if len(e.Data) == 0 || !json.Valid(e.Data) {
			return badRequest("event %d: data must be a JSON object", i)
		}
		events = append(events, store.Event{
			RobotID: e.RobotID, Type: e.Type, Time: now, Data: e.Data, Actor: p.Actor(),
			Stream: stream, RobotSeq: e.Seq, RobotTime: e.Time.UTC(),
		})
	}
	res, err := s.store.Append(r.Context(), events)
	if err != nil {
		return err
	}
	var out protocol.FactoryEventsAccepted
	for _, r := range res {
		if r.Duplicate {
			out.Duplicates++
		} else {
			out.Stored++
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

var serialPattern = regexp.MustCompile(`^[0-9a-f]{8}([0-9a-f]{8})?$`)

func (s *Server) factoryRobot(w http.ResponseWriter, r *http.Request) error {
	if s.o.CA == nil {
		return &apiError{http.StatusConflict, "no_ca", "this control node runs without a CA (--insecure): it cannot enroll robots"}
	}
	var req protocol.FactoryRobotRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	req.Serial = strings.ToLower(req.Serial)
	if !serialPattern.MatchString(req.Serial) {
		return badRequest("serial %q must be 8 or 16 hex digits (the Pi's serial)", req.Serial)
	}
	id := protocol.FactoryRobotID(req.Profile, req.Serial)
	if err := protocol.ValidRobotID(id); err != nil {
		return badRequest("profile %q: %v", req.Profile, err)
	}
	rb, err := s.store.Robot(r.Context(), id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err == nil && rb.Certificate != nil && !rb.Revoked {
		return &apiError{http.StatusConflict, "enrolled", fmt.Sprintf("robot %s is already enrolled (certificate %s): to provision this board again, revoke it first (`control robot revoke %s`)", id, rb.Certificate.Serial, id)}
	}
	var b [20]byte
	_, _ = rand.Read(b[:])
	token := EnrollmentTokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	now := s.o.Now().UTC()
	exp := now.Add(s.o.EnrollmentTTL)
	if err := s.store.CreateEnrollment(r.Context(), id, auth.HashSecret(token), exp, principal(r).Actor(), now); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, protocol.FactoryRobot{RobotID: id, Token: token, ExpiresAt: exp, CA: string(s.o.CA.CertPEM)})
	return nil
}
