package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// RobotType is the kind of robot.
type RobotType string

// The robot kinds this fleet software knows.
const (
	RobotLeKiwi RobotType = "lekiwi"
	RobotXLE    RobotType = "xle"
)

// Valid reports whether t is a known robot type.
func (t RobotType) Valid() bool { return t == RobotLeKiwi || t == RobotXLE }

// Capabilities an agent or control node may announce in hello.
const (
	CapTelemetry = "telemetry.v1"
	CapEvents    = "events.v1"
	CapCommands  = "commands.v1"
	CapQueue     = "queue.v1" // agent keeps unacknowledged messages across restarts
)

// Hardware identifies the board.
type Hardware struct {
	Serial string `json:"serial,omitempty"`
	// Model is the board's name as its device tree gives it ("Raspberry
	// Pi 5 Model B Rev 1.0"); a machine that is not a board says so
	// ("virtual machine (linux,dummy-virt)").
	Model    string `json:"model,omitempty"`
	Revision string `json:"revision,omitempty"` // a Pi's revision code, hex: "d04170"
	// MemoryMB and Manufacturer are what a Pi's revision code says.
	MemoryMB     int    `json:"memory_mb,omitempty"`
	Manufacturer string `json:"manufacturer,omitempty"`
}

// Hello is the first message of a connection, from the robot.
type Hello struct {
	// MinVersion and MaxVersion bound the protocol versions the agent speaks.
	MinVersion   int      `json:"min_version"`
	MaxVersion   int      `json:"max_version"`
	AgentVersion string   `json:"agent_version"`
	Capabilities []string `json:"capabilities,omitempty"`
	// Stream identifies the agent's sequence space. It changes only when the
	// agent's state is wiped, so a re-flashed robot whose sequences restart at
	// 1 is not mistaken for a replay of old messages.
	Stream    string            `json:"stream"`
	RobotType RobotType         `json:"robot_type"`
	Hardware  Hardware          `json:"hardware"`
	OSVersion string            `json:"os_version,omitempty"`
	Packages  map[string]string `json:"packages,omitempty"`
	// Image is the release the robot's system was built as (its
	// /etc/lekiwi/image.json); nil on a system `provision image build`
	// did not make, and from agents older than the field. It changes only
	// with the system itself: a new hello after an update's reboot.
	Image *ImageInfo `json:"image,omitempty"`
}

// ImageInfo identifies the image a robot runs. Every field is optional.
type ImageInfo struct {
	Version string `json:"version,omitempty"` // the release, as built
	Profile string `json:"profile,omitempty"` // the robot profile it was built for
	// Created is the build's timestamp (SOURCE_DATE_EPOCH), the same for
	// every rebuild of the same inputs.
	Created time.Time `json:"created,omitzero"`
	// Seed (hex) is what the disk's partition GUIDs and filesystem ids
	// derive from; builds whose slots fit one disk share it.
	Seed string `json:"seed,omitempty"`
}

// Validate implements Validator.
func (h *Hello) Validate() error {
	if h.MinVersion < 1 || h.MaxVersion < h.MinVersion {
		return fmt.Errorf("version range [%d, %d] is empty or below 1", h.MinVersion, h.MaxVersion)
	}
	if h.Stream == "" || len(h.Stream) > 64 {
		return errors.New("stream must be 1-64 characters")
	}
	if !h.RobotType.Valid() {
		return fmt.Errorf("robot_type %q is neither %q nor %q", truncate(string(h.RobotType), 40), RobotLeKiwi, RobotXLE)
	}
	if h.AgentVersion == "" {
		return errors.New("agent_version is required")
	}
	return nil
}

// Negotiate picks the highest version both this build and the hello speak.
func (h *Hello) Negotiate() (int, error) {
	v := min(h.MaxVersion, Version)
	if v < max(h.MinVersion, MinVersion) {
		return 0, Errorf(CodeVersion, 0, "agent speaks protocol %d-%d, control speaks %d-%d: upgrade the older side", h.MinVersion, h.MaxVersion, MinVersion, Version)
	}
	return v, nil
}

// HelloReply is control's answer to Hello (sent as type hello).
type HelloReply struct {
	Version      int      `json:"version"`
	Capabilities []string `json:"capabilities,omitempty"`
	NodeID       string   `json:"node_id"`
	// HeartbeatIntervalMS is the interval control expects; the agent adopts it
	// so that presence timeouts on both sides agree.
	HeartbeatIntervalMS int64 `json:"heartbeat_interval_ms"`
}

// Validate implements Validator.
func (r *HelloReply) Validate() error {
	if r.Version < MinVersion || r.Version > Version {
		return fmt.Errorf("control chose protocol version %d, this agent speaks %d-%d", r.Version, MinVersion, Version)
	}
	if r.HeartbeatIntervalMS <= 0 {
		return errors.New("heartbeat_interval_ms must be positive")
	}
	return nil
}

// QueueStats describes the agent's on-disk queue of unacknowledged messages.
type QueueStats struct {
	Pending          int    `json:"pending"`
	DroppedTelemetry uint64 `json:"dropped_telemetry"`
	DroppedEvents    uint64 `json:"dropped_events"`
}

// Heartbeat says the robot is alive. It is not stored per message: control
// keeps presence in memory and flushes last-seen times in batches.
type Heartbeat struct {
	UptimeSeconds float64    `json:"uptime_seconds"`
	State         string     `json:"state,omitempty"`
	Queue         QueueStats `json:"queue"`
}

// Validate implements Validator.
func (h *Heartbeat) Validate() error {
	if h.UptimeSeconds < 0 {
		return errors.New("uptime_seconds is negative")
	}
	return nil
}

// Network is the robot's addressing.
type Network struct {
	Hostname string   `json:"hostname,omitempty"`
	MAC      string   `json:"mac,omitempty"`
	IPs      []string `json:"ips,omitempty"`
}

// Resources is a resource usage sample.
type Resources struct {
	CPUPercent       float64 `json:"cpu_percent"`
	MemoryUsedBytes  uint64  `json:"memory_used_bytes"`
	MemoryTotalBytes uint64  `json:"memory_total_bytes"`
	DiskUsedBytes    uint64  `json:"disk_used_bytes"`
	DiskTotalBytes   uint64  `json:"disk_total_bytes"`
	// TemperatureC is the SoC temperature; nil when the board exposes none.
	TemperatureC *float64 `json:"temperature_c,omitempty"`
}

// Telemetry is sent when something changed meaningfully (debounced).
type Telemetry struct {
	Network       Network   `json:"network"`
	Resources     Resources `json:"resources"`
	OSVersion     string    `json:"os_version,omitempty"`
	UptimeSeconds float64   `json:"uptime_seconds"`
}

// Validate implements Validator.
func (t *Telemetry) Validate() error {
	r := t.Resources
	if r.CPUPercent < 0 || r.CPUPercent > 100 {
		return fmt.Errorf("cpu_percent %.1f is outside 0-100", r.CPUPercent)
	}
	if r.MemoryTotalBytes > 0 && r.MemoryUsedBytes > r.MemoryTotalBytes {
		return fmt.Errorf("memory_used_bytes %d exceeds memory_total_bytes %d", r.MemoryUsedBytes, r.MemoryTotalBytes)
	}
	if r.DiskTotalBytes > 0 && r.DiskUsedBytes > r.DiskTotalBytes {
		return fmt.Errorf("disk_used_bytes %d exceeds disk_total_bytes %d", r.DiskUsedBytes, r.DiskTotalBytes)
	}
	if t.UptimeSeconds < 0 {
		return errors.New("uptime_seconds is negative")
	}
	return nil
}

// Event kinds the control projections understand. Other kinds are stored and
// shown but change no projection.
const (
	EventTeleopStarted = "teleop.started"
	EventTeleopStopped = "teleop.stopped"
	EventQueueDropped  = "queue.dropped"
	// EventServiceChanged reports a watched systemd unit's state change
	// (agent/services: ActiveState/SubState and restart counts). Stored and
	// shown; no projection reads it.
	EventServiceChanged = "service.changed"
)

// Event is something that happened on the robot, stored durably by control.
type Event struct {
	Kind     string          `json:"kind"`
	Severity string          `json:"severity,omitempty"` // info (default), warning, error
	Message  string          `json:"message,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// Validate implements Validator.
func (e *Event) Validate() error {
	if e.Kind == "" || len(e.Kind) > 64 {
		return errors.New("kind must be 1-64 characters")
	}
	switch e.Severity {
	case "", "info", "warning", "error":
	default:
		return fmt.Errorf("severity %q is not info, warning or error", truncate(e.Severity, 40))
	}
	return nil
}

// TeleopData is the data of teleop.started and teleop.stopped events.
type TeleopData struct {
	Operator string    `json:"operator,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	// RxBytesPerSec is the command traffic received from the operator's
	// TCP connections over the agent's last poll, TxBytesPerSec what the
	// robot sent them; absent when the agent could not measure them (no
	// sock_diag) or they were zero.
	RxBytesPerSec float64 `json:"rx_bytes_per_sec,omitempty"`
	TxBytesPerSec float64 `json:"tx_bytes_per_sec,omitempty"`
}

// QueueDroppedData is the data of a queue.dropped event: totals since the
// agent's state was created.
type QueueDroppedData struct {
	Telemetry uint64 `json:"telemetry"`
	Events    uint64 `json:"events"`
}

// Command is an instruction from control.
type Command struct {
	ID       string          `json:"id"`
	Name     string          `json:"name"` // update, reboot, config, ping
	Args     json.RawMessage `json:"args,omitempty"`
	Deadline time.Time       `json:"deadline,omitzero"`
}

// Validate implements Validator.
func (c *Command) Validate() error {
	if c.ID == "" || c.Name == "" {
		return errors.New("id and name are required")
	}
	return nil
}

// Response answers a Command.
type Response struct {
	CommandID string          `json:"command_id"`
	Status    string          `json:"status"` // ok, error, progress
	Message   string          `json:"message,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
}

// Validate implements Validator.
func (r *Response) Validate() error {
	if r.CommandID == "" {
		return errors.New("command_id is required")
	}
	switch r.Status {
	case "ok", "error", "progress":
	default:
		return fmt.Errorf("status %q is not ok, error or progress", truncate(r.Status, 40))
	}
	return nil
}

// Ack lists robot sequences that control has made durable (or, for
// heartbeats, received). Acknowledged sequences may be forgotten by the agent.
type Ack struct {
	Sequences []uint64 `json:"sequences"`
}

// Validate implements Validator.
func (a *Ack) Validate() error {
	if len(a.Sequences) == 0 {
		return errors.New("sequences is empty")
	}
	return nil
}

// Validate implements Validator for error payloads.
func (e *Error) Validate() error {
	if e.Code == "" {
		return errors.New("code is required")
	}
	return nil
}
