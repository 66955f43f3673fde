package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/identity"
)

// loadOrEnroll returns the robot's identity from <state_dir>/identity,
// enrolling first when there is none. Network trouble during enrollment is
// retried with full-jitter backoff (rotating through the servers) until
// ctx ends; a refusal by control (used, expired or unknown token) or an
// unusable answer is returned at once.
func loadOrEnroll(ctx context.Context, cfg config.Config, log *slog.Logger) (*identity.Identity, error) {
	dir := filepath.Join(cfg.StateDir, identity.DirName)
	id, err := identity.Load(dir)
	if err == nil {
		return loaded(id, cfg, log)
	}
	if !errors.Is(err, identity.ErrNotFound) {
		return nil, fmt.Errorf("load robot identity: %w", err)
	}

	token, tokenFile, err := enrollmentToken(cfg)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("robot %s must enroll but the fleet CA is unreadable: %w (set ca_file, %s or --ca-file to the CA PEM shipped in the image)",
			cfg.RobotID, err, config.EnvCAFile)
	}
	log.Info("no robot identity yet: enrolling", "robot", cfg.RobotID, "dir", dir, "servers", cfg.Servers, "ca_file", cfg.CAFile)

	policy := backoff.Policy{Base: cfg.BackoffBase, Cap: cfg.BackoffCap}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	for attempt := 0; ; attempt++ {
		server := cfg.Servers[attempt%len(cfg.Servers)]
		id, err := identity.Enroll(ctx, nil, server, token, cfg.RobotID, caPEM, dir)
		if err == nil {
			log.Info("robot enrolled", "robot", id.RobotID(), "server", server, "serial", fmt.Sprintf("%x", id.Certificate().SerialNumber),
				"not_after", id.Certificate().NotAfter, "dir", dir)
			forgetToken(cfg, tokenFile, log)
			return id, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !retryable(err) {
			return nil, fmt.Errorf("enroll robot %s: %w", cfg.RobotID, err)
		}
		delay := policy.Delay(attempt, rng)
		log.Warn("enrollment failed; retrying", "server", server, "attempt", attempt+1, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// loaded checks a stored identity against the configuration.
func loaded(id *identity.Identity, cfg config.Config, log *slog.Logger) (*identity.Identity, error) {
	dir := id.Dir()
	if id.RobotID() != cfg.RobotID {
		return nil, fmt.Errorf("the robot identity in %s is for robot %q but robot_id is %q: fix robot_id, or move %s away and enroll this robot with a new token (control enroll create --robot-id %s)",
			dir, id.RobotID(), cfg.RobotID, dir, cfg.RobotID)
	}
	c := id.Certificate()
	attrs := []any{"robot", id.RobotID(), "serial", fmt.Sprintf("%x", c.SerialNumber), "not_after", c.NotAfter, "dir", dir}
	switch now := time.Now(); {
	case now.After(c.NotAfter):
		// Not fatal: a Pi without a real-time clock may simply not have
		// synchronised its clock yet. If it really expired, control refuses
		// every connection and the log says why.
		log.Error("robot certificate has expired (or the clock is wrong): control will refuse it; if the clock is right, move the identity away and enroll again with a new token", attrs...)
	case now.Before(c.NotBefore):
		log.Warn("robot certificate is not valid yet: is the clock synchronised?", attrs...)
	default:
		log.Info("robot identity loaded", attrs...)
	}
	if cfg.EnrollmentToken != "" || cfg.EnrollmentTokenFile != "" {
		log.Debug("robot already enrolled: the enrollment token setting is not used")
	}
	return id, nil
}

// enrollmentToken reads the configured token; tokenFile is the file it came
// from ("" for an inline token).
func enrollmentToken(cfg config.Config) (token, tokenFile string, err error) {
	switch {
	case cfg.EnrollmentTokenFile != "":
		b, err := os.ReadFile(cfg.EnrollmentTokenFile)
		if err != nil {
			return "", "", fmt.Errorf("robot %s must enroll but the enrollment token file is unreadable: %w (create a token with `control enroll create --robot-id %s` and write it there)",
				cfg.RobotID, err, cfg.RobotID)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", "", fmt.Errorf("enrollment token file %s is empty: write the token from `control enroll create --robot-id %s` into it", cfg.EnrollmentTokenFile, cfg.RobotID)
		}
		return token, cfg.EnrollmentTokenFile, nil
	case cfg.EnrollmentToken != "":
		return strings.TrimSpace(cfg.EnrollmentToken), "", nil
	}
	return "", "", fmt.Errorf("robot %s has no identity in %s and no enrollment token: create one with `control enroll create --robot-id %s` and give it with enrollment_token_file (%s, --enrollment-token-file); or pass --insecure for development without TLS",
		cfg.RobotID, filepath.Join(cfg.StateDir, identity.DirName), cfg.RobotID, config.EnvEnrollmentTokenFile)
}

// forgetToken deletes a used token file; an inline token cannot be deleted,
// so the log says to remove it.
func forgetToken(cfg config.Config, tokenFile string, log *slog.Logger) {
	if tokenFile == "" {
		log.Info("the enrollment token is used up: remove enrollment_token from the configuration")
		return
	}
	if err := os.Remove(tokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("enrolled, but the used token file could not be deleted: delete it by hand", "file", tokenFile, "err", err)
		return
	}
	log.Info("used enrollment token file deleted", "file", tokenFile)
}

// retryable: network and TLS failures (the HTTP client's *url.Error) and
// control answering 5xx, 408 or 429. A refused token, an unusable
// certificate or a failure to save are not.
func retryable(err error) bool {
	var ee *identity.EnrollError
	if errors.As(err, &ee) {
		return ee.Temporary()
	}
	if errors.Is(err, identity.ErrMismatch) || errors.Is(err, identity.ErrCorrupt) {
		return false
	}
	var ue *url.Error
	return errors.As(err, &ue)
}
