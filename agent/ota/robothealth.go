package ota

import (
	"context"
	"errors"
	"time"
)

// RobotHealthOptions are the parts of a trial boot's health check.
type RobotHealthOptions struct {
	// Connected reports whether the runtime's session with control is
	// established: dialled over mTLS with this robot's identity and the
	// hello answered (agent.Agent.State() == agent.Connected). Required.
	Connected func() bool
	// RequiredUnits are the profile's services.required systemd units.
	RequiredUnits []string
	// Systemctl is the systemctl binary; "" means "systemctl".
	Systemctl string
	// Command is the profile's optional health command, run with
	// "/bin/sh -c"; CommandTimeout bounds one run (0: the check's timeout).
	Command        string
	CommandTimeout time.Duration
}

// RobotHealth is the agent's Options.Health: control reachable with this
// identity, the required services active, the health command passing — in
// that order, the first failure naming its check. The updater retries it
// until it passes or the trial's timeout ends.
func RobotHealth(o RobotHealthOptions) func(ctx context.Context) error {
	checks := []Check{{Name: "control reachable", Run: func(context.Context) error {
		if o.Connected == nil || !o.Connected() {
			return errors.New("no session with control established with this robot's identity")
		}
		return nil
	}}}
	if len(o.RequiredUnits) > 0 {
		checks = append(checks, SystemdActive(o.Systemctl, o.RequiredUnits...))
	}
	if o.Command != "" {
		cmd := Command("/bin/sh", "-c", o.Command)
		run := cmd.Run
		if o.CommandTimeout > 0 {
			cmd.Run = func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, o.CommandTimeout)
				defer cancel()
				return run(ctx)
			}
		}
		checks = append(checks, cmd)
	}
	return Health(checks...)
}
