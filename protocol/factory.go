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

// Robot (the provisioning environment, `agent factory run`) ⇄ netboot
// station, over plain HTTP on the factory LAN. The station puts its URL and
// a one-time board token into the kernel command line it serves to each
// serial (KernelArgStation, KernelArgToken); the robot sends the token as
// "Authorization: Bearer <token>" on every call, so only the board that
// booted the station's files can report for its serial.
const (
	StationReportPath   = "/factory/v1/report"   // POST HardwareReport → StationPlan
	StationPlanPath     = "/factory/v1/plan"     // GET → StationPlan (poll while Action is wait)
	StationProgressPath = "/factory/v1/progress" // POST StationProgress → 204
	StationImagePath    = "/factory/v1/image"    // GET, Range supported; StationImagePath+".bmap" the block map

	KernelArgStation = "lekiwi.station" // lekiwi.station=http://10.0.0.1:8080
	KernelArgToken   = "lekiwi.token"   // lekiwi.token=<board token>
	// KernelArgPingTimeout, optional, is how long the probe waits for each
	// servo's answer (a Go duration): a station whose boards' serial
	// adapters or hubs are slow sets it in --kernel-args.
	KernelArgPingTimeout = "lekiwi.servo_ping_timeout" // lekiwi.servo_ping_timeout=50ms
)

// Plan actions.
const (
	PlanWait    = "wait"    // come back after RetryAfterSeconds (identity pending: control unreachable)
	PlanHold    = "hold"    // a technician must act: Reason says what
	PlanInstall = "install" // write the image and identity, then report and reboot
	PlanDone    = "done"    // nothing to do (already installed)
)

// StationPlan is what the station wants the board to do next.
type StationPlan struct {
	Action            string `json:"action"`
	Reason            string `json:"reason,omitempty"`
	RetryAfterSeconds int    `json:"retry_after_seconds,omitempty"`
	Profile           string `json:"profile,omitempty"`
	// Identity, for PlanInstall: written onto the installed disk with
	// image/customize after the image verified.
	RobotID     string `json:"robot_id,omitempty"`
	Hostname    string `json:"hostname,omitempty"`
	EnrollToken string `json:"enroll_token,omitempty"`
	CAPEM       string `json:"ca_pem,omitempty"`
	// ImageSize is the raw image size; the image is at StationImagePath.
	ImageSize    int64  `json:"image_size,omitempty"`
	ImageVersion string `json:"image_version,omitempty"`
	// Storage is the device name (from the report) to install onto; the
	// station prefers NVMe over eMMC over SD.
	Storage string `json:"storage,omitempty"`
}

// StationProgress is a step of the board's run, reported to the station
// (which forwards it to control as a FactoryStep).
type StationProgress struct {
	Step   string `json:"step"`   // probe, install, verify, identity, reboot
	Status string `json:"status"` // started, done, failed
	Detail string `json:"detail,omitempty"`
	Done   int64  `json:"done,omitempty"` // bytes, for install/verify
	Total  int64  `json:"total,omitempty"`
}
