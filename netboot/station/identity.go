package station

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/profiles"
)

// identityOutcome is what one identity request did.
type identityOutcome int

const (
	identitySkipped identityOutcome = iota // the board no longer waits
	identityGot
	identityUnreachable
	identityHeld
)

// acquireIdentity asks control for the identity of a board waiting at the
// identity step and records the answer.
func (s *Station) acquireIdentity(ctx context.Context, serial string) identityOutcome {
	s.mu.Lock()
	b, ok := s.boards[serial]
	if !ok || b.Step != StepIdentity || (b.Status != StatusStarted && b.Status != StatusWaiting) {
		s.mu.Unlock()
		return identitySkipped
	}
	profile, token := b.Profile, b.Token
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, s.cfg.ControlTimeout)
	robot, err := s.control.RequestRobot(ctx, serial, profile)
	cancel()

	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok = s.boards[serial]
	if !ok || b.Token != token || b.Profile != profile || b.Step != StepIdentity {
		return identitySkipped // the board moved on (rebooted, re-reported) meanwhile
	}
	var refused *controlapi.Refused
	switch {
	case err == nil:
		hostname, herr := hostnameFor(profile, serial, robot.RobotID)
		if herr != nil {
			s.metrics.identity.WithLabelValues("error").Inc()
			s.setStepLocked(b, StepIdentity, StatusHeld, fmt.Sprintf("robot %s from control has no usable host name: %v", robot.RobotID, herr))
			return identityHeld
		}
		s.metrics.identity.WithLabelValues("ok").Inc()
		b.RobotID, b.Hostname = robot.RobotID, hostname
		b.Identity = &Identity{Profile: profile, RobotID: robot.RobotID, EnrollToken: robot.Token, ExpiresAt: robot.ExpiresAt, CAPEM: robot.CA}
		b.ControlUnreachableSince, b.LastControlError = time.Time{}, ""
		s.setStepLocked(b, StepIdentity, StatusDone, "robot "+robot.RobotID)
		return identityGot
	case controlapi.IsUnreachable(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		// A timeout is control not answering; a cancellation is the
		// station stopping: either way the board waits and the loop retries.
		s.metrics.identity.WithLabelValues("unreachable").Inc()
		if b.ControlUnreachableSince.IsZero() {
			b.ControlUnreachableSince = s.now().UTC()
		}
		b.LastControlError = err.Error()
		// The detail stays the same across retries, so that waiting is
		// one event, not one per attempt.
		s.setStepLocked(b, StepIdentity, StatusWaiting, "waiting for control (unreachable since "+b.ControlUnreachableSince.Format(time.RFC3339)+")")
		return identityUnreachable
	case errors.As(err, &refused):
		s.metrics.identity.WithLabelValues("refused").Inc()
		s.setStepLocked(b, StepIdentity, StatusHeld, "control refused the identity: "+refused.Message)
		return identityHeld
	default:
		s.metrics.identity.WithLabelValues("error").Inc()
		s.setStepLocked(b, StepIdentity, StatusHeld, "asking control for the identity failed: "+err.Error())
		return identityHeld
	}
}

func hostnameFor(profile, serial, robotID string) (string, error) {
	p, err := profiles.Load(profile)
	if err != nil {
		return "", err
	}
	return p.Hostname(serial, robotID)
}

// identityLoop keeps asking control for the identities boards wait for,
// backing off while control stays unreachable, so that boards continue by
// themselves (at their next plan poll) once it returns.
func (s *Station) identityLoop(ctx context.Context) {
	backoff := s.cfg.IdentityRetry
	timer := time.NewTimer(backoff)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		unreachable := false
		for _, serial := range s.waitingForIdentity() {
			if s.acquireIdentity(ctx, serial) == identityUnreachable {
				unreachable = true
				break // one answer is enough to know; do not hammer
			}
			if ctx.Err() != nil {
				return
			}
		}
		if unreachable {
			backoff = min(backoff*2, s.cfg.IdentityMaxBackoff)
		} else {
			backoff = s.cfg.IdentityRetry
		}
		timer.Reset(backoff)
	}
}

// waitingForIdentity lists the boards waiting at the identity step, the
// longest waiting first.
func (s *Station) waitingForIdentity() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bs []*Board
	for _, b := range s.boards {
		if b.Step == StepIdentity && b.Status == StatusWaiting {
			bs = append(bs, b)
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].UpdatedAt.Before(bs[j].UpdatedAt) })
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Serial
	}
	return out
}

// onlineLoop asks control, for every installed board, whether its robot
// came online; when it did, the board's factory run is over (online/done).
func (s *Station) onlineLoop(ctx context.Context) {
	every := s.cfg.IdentityRetry
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		for _, b := range s.waitingOnline() {
			online, err := s.control.RobotOnline(ctx, b.robotID)
			if err != nil || !online {
				continue // unreachable: the next round asks again
			}
			s.mu.Lock()
			if cur := s.boards[b.serial]; cur != nil && cur.Step == StepOnline && cur.Status == StatusWaiting {
				s.setStepLocked(cur, StepOnline, StatusDone, "robot "+cur.RobotID+" is online in control")
			}
			s.mu.Unlock()
		}
	}
}

type onlineWait struct{ serial, robotID string }

func (s *Station) waitingOnline() []onlineWait {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []onlineWait
	for serial, b := range s.boards {
		if b.Step == StepOnline && b.Status == StatusWaiting && b.RobotID != "" {
			out = append(out, onlineWait{serial, b.RobotID})
		}
	}
	return out
}
