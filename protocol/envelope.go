package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Version is the newest protocol version this build speaks. MinVersion is the
// oldest it still accepts. Hello negotiates the highest version both sides
// support.
const (
	Version    = 1
	MinVersion = 1
)

// MaxFrameBytes is the largest frame either side accepts. Larger frames are
// rejected before they are parsed (WebSocket close code 1009).
const MaxFrameBytes = 64 << 10

// Type names a message kind.
type Type string

// The message types. Hello travels both ways (the control's answer carries a
// HelloReply). Ack, error and command flow from control to the robot;
// everything else from the robot to control.
const (
	TypeHello     Type = "hello"
	TypeHeartbeat Type = "heartbeat"
	TypeTelemetry Type = "telemetry"
	TypeEvent     Type = "event"
	TypeCommand   Type = "command"
	TypeResponse  Type = "response"
	TypeAck       Type = "ack"
	TypeError     Type = "error"
)

// Known reports whether t is a message type of this protocol version.
func (t Type) Known() bool {
	switch t {
	case TypeHello, TypeHeartbeat, TypeTelemetry, TypeEvent, TypeCommand, TypeResponse, TypeAck, TypeError,
		TypeRenew, TypeCertificate:
		return true
	}
	return false
}

// Envelope is the frame every message travels in.
type Envelope struct {
	Type      Type            `json:"type"`
	RobotID   string          `json:"robot_id"`
	Timestamp time.Time       `json:"timestamp"`
	Sequence  uint64          `json:"sequence"`
	Payload   json.RawMessage `json:"payload,omitempty"`
}

// robotIDPattern is a DNS label: robot ids become hostnames, certificate
// common names and URI SANs, so they must be safe in all three.
var robotIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidRobotID reports why id is not a usable robot id, or nil.
func ValidRobotID(id string) error {
	if id == "" {
		return errors.New("robot id is empty")
	}
	if !robotIDPattern.MatchString(id) {
		return fmt.Errorf("robot id %q is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')", truncate(id, 80))
	}
	return nil
}

// Decode parses and validates one frame. The error, when not nil, is an
// *Error whose Code says what kind of problem it was, ready to send back.
func Decode(frame []byte) (Envelope, error) {
	var env Envelope
	if len(frame) > MaxFrameBytes {
		return env, Errorf(CodeTooLarge, 0, "frame of %d bytes exceeds the %d byte limit", len(frame), MaxFrameBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(frame))
	if err := dec.Decode(&env); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Envelope{}, Errorf(CodeInvalid, 0, "field %q must be %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return Envelope{}, Errorf(CodeBadJSON, 0, "frame is not a JSON envelope: %v", err)
	}
	if dec.More() {
		return Envelope{}, Errorf(CodeBadJSON, 0, "frame holds more than one JSON value")
	}
	if err := env.Validate(); err != nil {
		return Envelope{}, err
	}
	return env, nil
}

// Validate checks the envelope's required fields.
func (e *Envelope) Validate() error {
	if e.Type == "" {
		return Errorf(CodeInvalid, e.Sequence, "field \"type\" is required")
	}
	if !e.Type.Known() {
		return Errorf(CodeUnknownType, e.Sequence, "unknown message type %q (this side speaks protocol version %d)", truncate(string(e.Type), 40), Version)
	}
	if err := ValidRobotID(e.RobotID); err != nil {
		return Errorf(CodeInvalid, e.Sequence, "field \"robot_id\": %v", err)
	}
	if e.Sequence == 0 {
		return Errorf(CodeInvalid, 0, "field \"sequence\" is required and must be at least 1")
	}
	if e.Timestamp.IsZero() {
		return Errorf(CodeInvalid, e.Sequence, "field \"timestamp\" is required (RFC 3339)")
	}
	return nil
}

// Encode validates env and marshals it, refusing frames over MaxFrameBytes.
func Encode(env Envelope) ([]byte, error) {
	if err := env.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("encode %s envelope: %w", env.Type, err)
	}
	if len(b) > MaxFrameBytes {
		return nil, Errorf(CodeTooLarge, env.Sequence, "%s frame of %d bytes exceeds the %d byte limit", env.Type, len(b), MaxFrameBytes)
	}
	return b, nil
}

// New builds an envelope around payload, which is marshalled to JSON.
func New(t Type, robotID string, seq uint64, ts time.Time, payload any) (Envelope, error) {
	env := Envelope{Type: t, RobotID: robotID, Sequence: seq, Timestamp: ts.UTC()}
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return Envelope{}, fmt.Errorf("encode %s payload: %w", t, err)
		}
		env.Payload = b
	}
	return env, nil
}

// Validator is implemented by payloads that check their own fields.
type Validator interface {
	Validate() error
}

// DecodePayload unmarshals the envelope's payload into T and validates it.
func DecodePayload[T any](env Envelope) (T, error) {
	var v T
	if len(env.Payload) == 0 || bytes.Equal(env.Payload, []byte("null")) {
		return v, Errorf(CodeInvalid, env.Sequence, "%s message needs a payload", env.Type)
	}
	if err := json.Unmarshal(env.Payload, &v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return v, Errorf(CodeInvalid, env.Sequence, "%s payload field %q must be %s, got JSON %s", env.Type, typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return v, Errorf(CodeInvalid, env.Sequence, "%s payload is not valid JSON: %v", env.Type, err)
	}
	if val, ok := any(&v).(Validator); ok {
		if err := val.Validate(); err != nil {
			return v, Errorf(CodeInvalid, env.Sequence, "%s payload: %v", env.Type, err)
		}
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
