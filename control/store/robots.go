package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Robot states.
const (
	StateOnline  = protocol.RobotOnline
	StateOffline = protocol.RobotOffline
)

// Robot is the robots projection: everything control knows about one robot,
// derived from the event log.
type Robot struct {
	ID            string             `json:"id"`
	Type          protocol.RobotType `json:"type"`
	Hardware      protocol.Hardware  `json:"hardware"`
	Network       protocol.Network   `json:"network"`
	Status        RobotStatus        `json:"status"`
	Deployment    Deployment         `json:"deployment"`
	Teleoperation Teleoperation      `json:"teleoperation"`
	Resources     protocol.Resources `json:"resources"`
	RegisteredAt  time.Time          `json:"registered_at,omitzero"`
	// Certificate is the robot's newest certificate; Revoked is set when an
	// operator revoked its identity (until it enrolls again).
	Certificate *RobotCertificate `json:"certificate,omitempty"`
	Revoked     bool              `json:"revoked,omitempty"`
	// Version is the global sequence of the last event applied.
	Version int64 `json:"version"`
}

// RobotStatus is the robot's liveness; the API serves it as is, so it is
// a wire type (netboot reads it).
type RobotStatus = protocol.RobotStatus

// Deployment is what software the robot runs. Image is the release its
// system was built as, from its last hello (nil when the system has no
// image metadata, or the agent predates it); after an update it changes
// with the hello of the new slot's first boot.
type Deployment struct {
	OSVersion    string              `json:"os_version,omitempty"`
	AgentVersion string              `json:"agent_version,omitempty"`
	Packages     map[string]string   `json:"packages,omitempty"`
	Image        *protocol.ImageInfo `json:"image,omitempty"`
}

// Teleoperation says whether a person is driving the robot.
type Teleoperation struct {
	Active       bool      `json:"active"`
	Operator     string    `json:"operator,omitempty"`
	SessionStart time.Time `json:"session_start,omitzero"`
}

// RobotCertificate identifies a robot's certificate.
type RobotCertificate struct {
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// RegisteredData is the data of RobotRegistered.
type RegisteredData struct {
	Type     protocol.RobotType `json:"type"`
	Hardware protocol.Hardware  `json:"hardware"`
}

// ConnectedData is the data of RobotConnected.
type ConnectedData struct {
	Session         string              `json:"session"`
	Node            string              `json:"node"`
	Remote          string              `json:"remote,omitempty"`
	ProtocolVersion int                 `json:"protocol_version"`
	AgentVersion    string              `json:"agent_version"`
	OSVersion       string              `json:"os_version,omitempty"`
	Packages        map[string]string   `json:"packages,omitempty"`
	Type            protocol.RobotType  `json:"type"`
	Hardware        protocol.Hardware   `json:"hardware"`
	Capabilities    []string            `json:"capabilities,omitempty"`
	Image           *protocol.ImageInfo `json:"image,omitempty"`
}

// DisconnectedData is the data of RobotDisconnected.
type DisconnectedData struct {
	Session string `json:"session"`
	Node    string `json:"node"`
	Reason  string `json:"reason"`
}

// OfflineData is the data of RobotOffline.
type OfflineData struct {
	LastSeen time.Time `json:"last_seen"`
	Timeout  string    `json:"timeout"`
}

// Apply folds one event into a robot. It must depend on nothing but the
// robot and the event: the live path and Rebuild share it, and Verify holds
// them to the same answer.
func Apply(r *Robot, e Event) error {
	if r.ID == "" {
		r.ID = e.RobotID
	}
	if r.Status.State == "" {
		r.Status.State = StateOffline
	}
	r.Version = e.Seq
	if e.Type != TypeRobotOffline && e.Time.After(r.Status.LastSeen) {
		r.Status.LastSeen = e.Time
	}
	switch e.Type {
	case TypeRobotRegistered:
		var d RegisteredData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		r.Type, r.Hardware, r.RegisteredAt = d.Type, d.Hardware, e.Time
	case TypeRobotConnected:
		var d ConnectedData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		if r.Status.State != StateOnline {
			r.Status.Since = e.Time
		}
		r.Status.State, r.Status.Connected = StateOnline, true
		r.Status.Node, r.Status.Session = d.Node, d.Session
		if d.Type != "" {
			r.Type = d.Type
		}
		if d.Hardware != (protocol.Hardware{}) {
			r.Hardware = d.Hardware
		}
		// Hello says what runs now: an image field missing from it (an
		// older agent, a system not built as an image) clears the last.
		r.Deployment = Deployment{OSVersion: d.OSVersion, AgentVersion: d.AgentVersion, Packages: d.Packages, Image: d.Image}
	case TypeRobotDisconnected:
		var d DisconnectedData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		// A robot that reconnected before its old session's end was
		// recorded keeps its new session.
		if d.Session == r.Status.Session {
			r.Status.Connected, r.Status.Session, r.Status.Node = false, "", ""
		}
	case TypeRobotOffline:
		if r.Status.State != StateOffline {
			r.Status.Since = e.Time
		}
		r.Status.State, r.Status.Connected, r.Status.Session, r.Status.Node = StateOffline, false, "", ""
		r.Teleoperation = Teleoperation{}
	case TypeTelemetryReported:
		var t protocol.Telemetry
		if err := json.Unmarshal(e.Data, &t); err != nil {
			return dataError(e, err)
		}
		r.Network, r.Resources, r.Status.UptimeSeconds = t.Network, t.Resources, t.UptimeSeconds
		if t.OSVersion != "" {
			r.Deployment.OSVersion = t.OSVersion
		}
	case TypeRobotEnrolled, TypeCertificateIssued:
		var d CertInfo
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return dataError(e, err)
		}
		r.Certificate = &RobotCertificate{Serial: d.Serial, NotAfter: d.NotAfter.UTC()}
		if e.Type == TypeRobotEnrolled {
			r.Revoked = false
		}
	case TypeRobotRevoked:
		r.Revoked = true
	case TypeRobotEvent:
		var ev protocol.Event
		if err := json.Unmarshal(e.Data, &ev); err != nil {
			return dataError(e, err)
		}
		applyRobotEvent(r, e, ev)
	}
	return nil
}

func applyRobotEvent(r *Robot, e Event, ev protocol.Event) {
	switch ev.Kind {
	case protocol.EventTeleopStarted:
		var d protocol.TeleopData
		_ = json.Unmarshal(ev.Data, &d) // malformed data still marks teleop active
		start := d.Since
		if start.IsZero() {
			start = e.Time
		}
		r.Teleoperation = Teleoperation{Active: true, Operator: d.Operator, SessionStart: start.UTC()}
	case protocol.EventTeleopStopped:
		r.Teleoperation = Teleoperation{}
	}
}

func dataError(e Event, err error) error {
	return fmt.Errorf("event %d (%s, robot %q) has malformed data: %w", e.Seq, e.Type, e.RobotID, err)
}

// robotCache holds the robots one transaction touches so a batch of events
// for the same robot costs one read and one write.
type robotCache struct {
	tx     *sql.Tx
	robots map[string]*Robot
	dirty  map[string]bool
}

func newRobotCache(tx *sql.Tx) *robotCache {
	return &robotCache{tx: tx, robots: map[string]*Robot{}, dirty: map[string]bool{}}
}

func (c *robotCache) get(ctx context.Context, id string) (*Robot, error) {
	if r, ok := c.robots[id]; ok {
		return r, nil
	}
	r := &Robot{}
	var doc string
	err := c.tx.QueryRowContext(ctx, `SELECT doc FROM robots WHERE id = ?`, id).Scan(&doc)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read robot %q: %w", id, err)
	default:
		if err := json.Unmarshal([]byte(doc), r); err != nil {
			return nil, fmt.Errorf("robot %q projection is corrupt (rebuild it with `control projection rebuild`): %w", id, err)
		}
	}
	c.robots[id] = r
	return r, nil
}

func (c *robotCache) apply(ctx context.Context, e Event) error {
	r, err := c.get(ctx, e.RobotID)
	if err != nil {
		return err
	}
	if err := Apply(r, e); err != nil {
		return err
	}
	c.dirty[e.RobotID] = true
	return nil
}

func putRobot(ctx context.Context, tx *sql.Tx, r *Robot) error {
	doc, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode robot %q: %w", r.ID, err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO robots (id, type, status, doc, version, last_event) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET type = excluded.type, status = excluded.status, doc = excluded.doc,
			version = excluded.version, last_event = excluded.last_event`,
		r.ID, string(r.Type), r.Status.State, string(doc), r.Version, r.Status.LastSeen.UnixNano())
	if err != nil {
		return fmt.Errorf("write robot %q: %w", r.ID, err)
	}
	return nil
}

// RobotFilter narrows a robot listing.
type RobotFilter struct {
	State   string // online | offline | "" for all
	Type    string // lekiwi | xle | "" for all
	AfterID string // page cursor: ids greater than this
	Limit   int
}

// Robots lists robots ordered by id, with presence overlaid.
func (s *Store) Robots(ctx context.Context, f RobotFilter) ([]Robot, error) {
	if f.Limit <= 0 {
		return nil, fmt.Errorf("list robots: limit must be positive, got %d", f.Limit)
	}
	q, args := robotsQuery(f)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list robots: %w", err)
	}
	defer rows.Close()
	var out []Robot
	for rows.Next() {
		r, err := scanRobot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// robotsQuery is Robots' statement. With a state it reads robots_by_state
// (status, id): the robots in that state, in id order, and no others.
func robotsQuery(f RobotFilter) (string, []any) {
	q := `SELECT r.doc, p.last_seen, p.uptime_seconds FROM robots r LEFT JOIN presence p ON p.robot_id = r.id WHERE r.id > ?`
	args := []any{f.AfterID}
	if f.State != "" {
		q += ` AND r.status = ?`
		args = append(args, f.State)
	}
	if f.Type != "" {
		q += ` AND r.type = ?`
		args = append(args, f.Type)
	}
	q += ` ORDER BY r.id LIMIT ?`
	return q, append(args, f.Limit)
}

// ErrNotFound is returned for a robot (or other object) that does not exist.
var ErrNotFound = errors.New("not found")

// Robot returns one robot with presence overlaid.
func (s *Store) Robot(ctx context.Context, id string) (Robot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT r.doc, p.last_seen, p.uptime_seconds FROM robots r
		LEFT JOIN presence p ON p.robot_id = r.id WHERE r.id = ?`, id)
	if err != nil {
		return Robot{}, fmt.Errorf("read robot %q: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return Robot{}, fmt.Errorf("read robot %q: %w", id, err)
		}
		return Robot{}, fmt.Errorf("robot %q: %w", id, ErrNotFound)
	}
	return scanRobot(rows)
}

// CountRobots counts robots in a state ("" for all).
func (s *Store) CountRobots(ctx context.Context, state string) (int, error) {
	q, args := `SELECT count(*) FROM robots`, []any{}
	if state != "" {
		q += ` WHERE status = ?`
		args = append(args, state)
	}
	var n int
	if err := s.db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count robots: %w", err)
	}
	return n, nil
}

func scanRobot(rows *sql.Rows) (Robot, error) {
	var (
		doc      string
		lastSeen sql.NullInt64
		uptime   sql.NullFloat64
		r        Robot
	)
	if err := rows.Scan(&doc, &lastSeen, &uptime); err != nil {
		return Robot{}, fmt.Errorf("read robot row: %w", err)
	}
	if err := json.Unmarshal([]byte(doc), &r); err != nil {
		return Robot{}, fmt.Errorf("robot projection row is corrupt (rebuild with `control projection rebuild`): %w", err)
	}
	if lastSeen.Valid {
		if t := time.Unix(0, lastSeen.Int64).UTC(); t.After(r.Status.LastSeen) {
			r.Status.LastSeen = t
			r.Status.UptimeSeconds = uptime.Float64
		}
	}
	return r, nil
}
