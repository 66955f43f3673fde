package protocol

import "time"

// Over-the-air updates: control sends an "update" command; the
// agent reports every state change of the update as an Event of Kind
// EventUpdate whose data is UpdateState.

// CommandUpdate is the Command.Name of an update; its Args are UpdateArgs.
const CommandUpdate = "update"

// EventUpdate is the Event.Kind of an update state change.
const EventUpdate = "update"

// UpdateArgs tell an agent what to install.
type UpdateArgs struct {
	DeploymentID string `json:"deployment_id"`
	// Release is the signed release artifact, by digest
	// (registry/repo@sha256:…): what was approved is what is installed.
	Release string `json:"release"`
	Version string `json:"version"`
	// HealthTimeoutSeconds bounds the trial boot's health check (default
	// the agent's own, 300 s).
	HealthTimeoutSeconds int `json:"health_timeout_seconds,omitempty"`
	// HealthRetries is how many times the agent re-runs a failed trial-boot
	// health check before rolling back (default 0: the first failure rolls
	// back). A failure is an answer — a required unit failed, the health
	// command exited non-zero; "not yet" (no session with control, a unit
	// still starting) is waited out until HealthTimeoutSeconds.
	HealthRetries int `json:"health_retries,omitempty"`
	// Rollback asks the agent to go back to its previous slot (a deployment
	// rolled back) instead of installing Release.
	Rollback bool `json:"rollback,omitempty"`
	// AllowDowngrade: an engineer asked to install an older release on
	// purpose. Without it the agent refuses a release whose security
	// version is below its floor (the highest it committed, or the build
	// time of the image it runs). Installing one does not lower the floor.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// Update states, in order; failed and rolled_back end an update.
const (
	UpdateDownloading = "downloading"
	UpdateWriting     = "writing"
	UpdateVerifying   = "verifying"
	UpdateArmed       = "armed"     // trial boot armed, rebooting
	UpdateTrial       = "trial"     // running the new slot on trial, health check in progress
	UpdateCommitted   = "committed" // the new slot is the default
	UpdateRolledBack  = "rolled_back"
	UpdateFailed      = "failed" // nothing changed on the robot (e.g. refused artifact, download failed)
	UpdateDeferred    = "deferred"
)

// UpdateState is the data of an EventUpdate event.
type UpdateState struct {
	DeploymentID string    `json:"deployment_id"`
	Version      string    `json:"version"`
	State        string    `json:"state"`
	Reason       string    `json:"reason,omitempty"` // why it failed, rolled back or was deferred
	Slot         string    `json:"slot,omitempty"`   // the slot being written or tried
	Done         int64     `json:"done,omitempty"`   // bytes, while downloading or writing
	Total        int64     `json:"total,omitempty"`
	Downloaded   int64     `json:"downloaded,omitempty"` // bytes fetched over the network (delta)
	Since        time.Time `json:"since,omitzero"`
	// On the armed report, what installing cost the agent process: its
	// peak resident memory so far (getrusage's ru_maxrss, the whole
	// process lifetime) and the CPU time (user + system) of the install.
	AgentMaxRSSBytes int64   `json:"agent_max_rss_bytes,omitempty"`
	AgentCPUSeconds  float64 `json:"agent_cpu_seconds,omitempty"`
}

// Terminal reports whether the state ends an update.
func (s UpdateState) Terminal() bool {
	switch s.State {
	case UpdateCommitted, UpdateRolledBack, UpdateFailed:
		return true
	}
	return false
}
