package ota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// ErrUnhealthy marks a health check's answer "this robot is not healthy" —
// a unit that failed, a health command that exited non-zero — as opposed
// to "not yet" (no session with control yet, a unit still starting),
// which a trial waits out until its timeout. A trial rolls back after
// UpdateArgs.HealthRetries+1 such answers.
var ErrUnhealthy = errors.New("unhealthy")

// Check is one part of the trial boot's health check.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Health composes checks into an Options.Health func: all must pass, in
// order; the first failure names its check. The agent's (RobotHealth):
// control reachable with this robot's identity, the profile's required
// services active (SystemdActive) and an optional health command
// (Command).
func Health(checks ...Check) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if c.Run == nil {
				continue
			}
			if err := c.Run(ctx); err != nil {
				return fmt.Errorf("%s: %w", c.Name, err)
			}
		}
		return nil
	}
}

// SystemdActive checks that every unit is active, with `systemctl
// is-active` (systemctl is the path or name of the binary; "" means
// "systemctl").
func SystemdActive(systemctl string, units ...string) Check {
	if systemctl == "" {
		systemctl = "systemctl"
	}
	return Check{Name: "services active", Run: func(ctx context.Context) error {
		if len(units) == 0 {
			return nil
		}
		// is-active prints one state per unit, in order. Its exit status
		// is 0 when ANY of them is active (systemctl(1)), so it says
		// nothing about the others: the states decide. (A trial whose
		// ssh.service was masked committed on a real system because the
		// agent's own unit was active.)
		out, err := exec.CommandContext(ctx, systemctl, append([]string{"is-active", "--"}, units...)...).Output()
		states := strings.Fields(string(out))
		if err == nil && len(states) == len(units) && !slices.ContainsFunc(states, func(s string) bool { return s != "active" }) {
			return nil
		}
		if err == nil {
			err = errors.New("exit status 0")
		}
		var down []string
		failed := false
		for i, u := range units {
			if i >= len(states) || states[i] != "active" {
				st := "unknown"
				if i < len(states) {
					st = states[i]
				}
				failed = failed || st == "failed"
				down = append(down, u+" is "+st)
			}
		}
		if len(down) == 0 {
			return fmt.Errorf("systemctl is-active: %w", err)
		}
		if failed {
			// A failed unit is an answer; activating or inactive units
			// may still come up.
			return fmt.Errorf("%w: %s", ErrUnhealthy, strings.Join(down, ", "))
		}
		return errors.New(strings.Join(down, ", "))
	}}
}

// Command runs argv (the profile's optional health command); a non-zero
// exit fails the check (ErrUnhealthy) with the end of its output as the
// reason.
func Command(argv ...string) Check {
	return Check{Name: "health command", Run: func(ctx context.Context) error {
		if len(argv) == 0 {
			return nil
		}
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			tail := strings.TrimSpace(out.String())
			if len(tail) > 200 {
				tail = "…" + tail[len(tail)-200:]
			}
			// Name the command the operator configured, not the shell
			// that ran it: "sh -c X" is reported as X.
			name := strings.Join(argv, " ")
			if len(argv) == 3 && argv[1] == "-c" {
				name = argv[2]
			}
			var exit *exec.ExitError
			if errors.As(err, &exit) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", ErrUnhealthy, err)
			}
			if tail != "" {
				return fmt.Errorf("%q: %w: %s", name, err, tail)
			}
			return fmt.Errorf("%q: %w", name, err)
		}
		return nil
	}}
}
