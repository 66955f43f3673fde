package protocol

import "fmt"

// Code classifies a protocol error so the peer can react without parsing prose.
type Code string

// Error codes sent in error payloads.
const (
	CodeBadJSON           Code = "bad_json"           // frame is not JSON
	CodeInvalid           Code = "invalid"            // a field is missing, mistyped or out of range
	CodeUnknownType       Code = "unknown_type"       // message type not known to the receiver
	CodeTooLarge          Code = "too_large"          // frame over MaxFrameBytes
	CodeRobotMismatch     Code = "robot_mismatch"     // robot id differs from the one in hello / the certificate
	CodeSequenceBackwards Code = "sequence_backwards" // sequence not above the previous one on this connection
	CodeVersion           Code = "version"            // no common protocol version
	CodeNotReady          Code = "not_ready"          // message before hello, or server cannot store right now
	CodeInternal          Code = "internal"           // the receiver failed; retry later
)

// Error is a protocol-level failure: what went wrong with which message.
// It is also the payload of an error message.
type Error struct {
	Code     Code   `json:"code"`
	Message  string `json:"message"`
	Sequence uint64 `json:"sequence,omitempty"` // the offending message's sequence, when known
}

func (e *Error) Error() string {
	if e.Sequence != 0 {
		return fmt.Sprintf("%s (sequence %d): %s", e.Code, e.Sequence, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf builds an *Error.
func Errorf(code Code, seq uint64, format string, args ...any) *Error {
	return &Error{Code: code, Sequence: seq, Message: fmt.Sprintf(format, args...)}
}

// Fatal reports whether the connection cannot continue after this error: the
// stream's identity or ordering is broken, or the sides share no version.
func (c Code) Fatal() bool {
	switch c {
	case CodeRobotMismatch, CodeSequenceBackwards, CodeVersion, CodeTooLarge:
		return true
	}
	return false
}

// WebSocket close codes used by both sides (RFC 6455 section 7.4.1).
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	ClosePolicyViolation = 1008
	CloseTooBig          = 1009
	CloseInternalError   = 1011
	CloseTryAgainLater   = 1013
)

// CloseCode is the WebSocket close code for a fatal error code.
func (c Code) CloseCode() int {
	switch c {
	case CodeRobotMismatch, CodeSequenceBackwards:
		return ClosePolicyViolation
	case CodeTooLarge:
		return CloseTooBig
	case CodeVersion:
		return CloseProtocolError
	case CodeInternal:
		return CloseInternalError
	}
	return ClosePolicyViolation
}
