package ota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

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
		out, err := exec.CommandContext(ctx, systemctl, append([]string{"is-active", "--"}, units...)...).Output()
		if err == nil {
			return nil
		}
		// is-active prints one state per unit, in order.
		states := strings.Fields(string(out))
		var down []string
		for i, u := range units {
			if i >= len(states) || states[i] != "active" {
				st := "unknown"
				if i < len(states) {
					st = states[i]
				}
				down = append(down, u+" is "+st)
			}
		}
		if len(down) == 0 {
			return fmt.Errorf("systemctl is-active: %w", err)
		}
		return errors.New(strings.Join(down, ", "))
	}}
}

// Command runs argv (the profile's optional health command); a non-zero
// exit fails the check with the end of its output as the reason.
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
			if tail != "" {
				return fmt.Errorf("%q: %w: %s", name, err, tail)
			}
			return fmt.Errorf("%q: %w", name, err)
		}
		return nil
	}}
}
