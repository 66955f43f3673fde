package protocol

import (
	"encoding/json"
	"time"
)

// Netboot station ⇄ control: the station authenticates with its node
// certificate (mTLS) and reports what happens on the factory floor.

// Factory routes on control.
const (
	FactoryEventsPath = "/v1/factory/events"
	FactoryRobotsPath = "/v1/factory/robots"
)

// Factory event types a station reports.
const (
	// EventDeviceSeen: a device appeared on the factory network (DHCP),
	// whether or not the station boots it. Data: DeviceSeen.
	EventDeviceSeen = "DeviceSeen"
	// EventFactoryStep: a board's factory run moved (probe, match, identity,
	// install, verify, reboot, online) or stopped. Data: FactoryStep.
	EventFactoryStep = "FactoryStep"
)

// FactoryEvent is one event a station reports. Seq numbers the station's
// stream from 1, so a batch sent twice (a lost answer, or the station's
// queue replayed after control was away) is stored once.
type FactoryEvent struct {
	Seq     uint64          `json:"seq"`
	Type    string          `json:"type"`
	Time    time.Time       `json:"time"` // when the station saw it
	RobotID string          `json:"robot_id,omitempty"`
	Data    json.RawMessage `json:"data"`
}

// FactoryEvents is the body of POST FactoryEventsPath.
type FactoryEvents struct {
	// Stream names the station's event stream; with the station's name it
	// scopes Seq. 1-64 of letters, digits, '.', '_' and '-'.
	Stream string         `json:"stream"`
	Events []FactoryEvent `json:"events"`
}

// FactoryEventsAccepted answers it.
type FactoryEventsAccepted struct {
	Stored     int `json:"stored"`
	Duplicates int `json:"duplicates"`
}

// MaxFactoryBatch is the most events one POST may carry.
const MaxFactoryBatch = 64

// DeviceSeen is the data of EventDeviceSeen.
type DeviceSeen struct {
	MAC       string    `json:"mac"`
	IsPi      bool      `json:"is_pi"`
	Model     string    `json:"model,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	Revision  string    `json:"revision,omitempty"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// FactoryStep is the data of EventFactoryStep.
type FactoryStep struct {
	Serial  string `json:"serial"`
	Step    string `json:"step"`   // seen, boot, probe, match, identity, install, verify, reboot, online
	Status  string `json:"status"` // started, waiting, done, held, failed
	Profile string `json:"profile,omitempty"`
	Detail  string `json:"detail,omitempty"` // the reason, for held and failed
}

// FactoryRobotRequest is the body of POST FactoryRobotsPath: a station asks
// for the identity of a board it matched to a profile.
type FactoryRobotRequest struct {
	Serial  string `json:"serial"`  // the Pi's serial, 8 or 16 hex digits
	Profile string `json:"profile"` // lekiwi, xle
}

// FactoryRobot answers it: the robot id the board gets and a one-time
// enrollment token the robot trades for its certificate at first boot.
type FactoryRobot struct {
	RobotID   string    `json:"robot_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	CA        string    `json:"ca"` // PEM: the robot trusts control with it
}

// FactoryRobotID is the robot id a board gets: its profile and serial, so a
// retried factory run gives the same board the same id.
func FactoryRobotID(profile, serial string) string { return profile + "-" + serial }
