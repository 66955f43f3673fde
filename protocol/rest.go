package protocol

import (
	"net/url"
	"time"
)

// Control's HTTPS API: the bodies that programs other than control send or
// decode — the agent enrolling (EnrollRequest), `provision flash` minting
// enrollment tokens, the netboot station registering boards
// (FactoryRobotRequest) and watching them come online. They are declared
// here, not in control/api, because those programs must not import control.

// Control API paths used by clients outside control.
const (
	WhoamiPath      = "/v1/whoami"
	CAPath          = "/v1/ca"
	EnrollmentsPath = "/v1/enrollments"
)

// RobotPath is the path of GET /v1/robots/{id}, which answers with a robot
// whose "status" is a RobotStatus.
func RobotPath(robotID string) string { return "/v1/robots/" + url.PathEscape(robotID) }

// ErrorBody is the body of every error answer of control's API.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what failed: Code is stable (clients branch on it),
// Message is for people and says what to do.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Codes control answers a refused enrollment (POST EnrollPath) with. None
// of them is worth retrying: the robot needs a new enrollment token.
const (
	EnrollTokenInvalid = "token_invalid" // control knows no such token
	EnrollTokenUsed    = "token_used"    // the token already enrolled a robot
	EnrollTokenExpired = "token_expired" // the token is past its expiry
)

// Whoami answers GET WhoamiPath: who the request's credentials belong to.
type Whoami struct {
	Name    string `json:"name"`
	Role    string `json:"role"` // operator, engineer, admin; node for a node certificate
	TokenID string `json:"token_id,omitempty"`
	Source  string `json:"source"` // token, oidc, local
}

// CACertificate answers GET CAPath: the fleet CA, which images carry so
// that robots trust control when they enroll.
type CACertificate struct {
	Certificate string `json:"certificate"` // PEM
}

// EnrollmentRequest is the body of POST EnrollmentsPath: mint a single-use
// enrollment token for a robot id.
type EnrollmentRequest struct {
	RobotID string `json:"robot_id"`
	TTL     string `json:"ttl,omitempty"` // Go duration; default the node's enrollment TTL
}

// EnrollmentCreated answers it with the token, shown this once.
type EnrollmentCreated struct {
	RobotID   string    `json:"robot_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Robot liveness states (RobotStatus.State).
const (
	RobotOnline  = "online"
	RobotOffline = "offline"
)

// RobotStatus is a robot's liveness as control reports it.
type RobotStatus struct {
	State     string `json:"state"` // RobotOnline or RobotOffline
	Connected bool   `json:"connected"`
	Node      string `json:"node,omitempty"`
	Session   string `json:"session,omitempty"`
	// Since is when State last changed.
	Since time.Time `json:"since,omitzero"`
	// LastSeen is the newest of the robot's event times and, when read
	// through the API, its flushed presence.
	LastSeen      time.Time `json:"last_seen,omitzero"`
	UptimeSeconds float64   `json:"uptime_seconds"`
}

// StationErrorBody is the body of the netboot station's error answers to
// boards (StationReportPath, StationPlanPath, …). It is not control's
// ErrorBody: boards show it, they do not branch on it.
type StationErrorBody struct {
	Error string `json:"error"`
}
