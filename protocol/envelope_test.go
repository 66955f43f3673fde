package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	ts := `"2026-11-27T10:00:00Z"`
	tests := []struct {
		name  string
		frame string
		code  Code // "" means valid
	}{
		{"valid heartbeat", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":3,"payload":{"uptime_seconds":1}}`, ""},
		{"unknown fields ignored", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":3,"future":true}`, ""},
		{"not json", `hello`, CodeBadJSON},
		{"truncated", `{"type":"heartbeat"`, CodeBadJSON},
		{"two values", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":3} {}`, CodeBadJSON},
		{"sequence as string", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":"3"}`, CodeInvalid},
		{"negative sequence", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":-3}`, CodeInvalid},
		{"missing type", `{"robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":3}`, CodeInvalid},
		{"unknown type", `{"type":"warp","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":3}`, CodeUnknownType},
		{"missing robot", `{"type":"heartbeat","timestamp":` + ts + `,"sequence":3}`, CodeInvalid},
		{"robot id upper case", `{"type":"heartbeat","robot_id":"Kiwi","timestamp":` + ts + `,"sequence":3}`, CodeInvalid},
		{"robot id with slash", `{"type":"heartbeat","robot_id":"a/b","timestamp":` + ts + `,"sequence":3}`, CodeInvalid},
		{"zero sequence", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":0}`, CodeInvalid},
		{"missing timestamp", `{"type":"heartbeat","robot_id":"kiwi-1","sequence":1}`, CodeInvalid},
		{"bad timestamp", `{"type":"heartbeat","robot_id":"kiwi-1","timestamp":"yesterday","sequence":1}`, CodeBadJSON},
		{"too large", `{"type":"event","robot_id":"kiwi-1","timestamp":` + ts + `,"sequence":1,"payload":"` + strings.Repeat("x", MaxFrameBytes) + `"}`, CodeTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, err := Decode([]byte(tc.frame))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if env.RobotID != "kiwi-1" || env.Sequence != 3 {
					t.Fatalf("decoded %+v", env)
				}
				return
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != tc.code || perr.Message == "" {
				t.Fatalf("Decode error = %v, want code %s", err, tc.code)
			}
		})
	}
}

func TestValidRobotID(t *testing.T) {
	for id, ok := range map[string]bool{
		"a": true, "kiwi-0001": true, "xle-a1b2c3": true, strings.Repeat("a", 63): true,
		"": false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false, strings.Repeat("a", 64): false,
	} {
		if err := ValidRobotID(id); (err == nil) != ok {
			t.Errorf("ValidRobotID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}

func TestRoundTripAndPayloadValidation(t *testing.T) {
	hello := Hello{MinVersion: 1, MaxVersion: 3, AgentVersion: "1.0", Stream: "abc", RobotType: RobotXLE}
	env, err := New(TypeHello, "xle-7", 1, time.Now(), hello)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(env)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodePayload[Hello](back)
	if err != nil || got.Stream != "abc" || got.RobotType != RobotXLE {
		t.Fatalf("round trip %+v, %v", got, err)
	}
	if v, err := got.Negotiate(); err != nil || v != Version {
		t.Fatalf("negotiate = %d, %v", v, err)
	}

	bad := []struct {
		name string
		typ  Type
		body string
		try  func(Envelope) error
	}{
		{"hello empty range", TypeHello, `{"min_version":2,"max_version":1,"agent_version":"x","stream":"s","robot_type":"xle"}`, func(e Envelope) error { _, err := DecodePayload[Hello](e); return err }},
		{"hello no stream", TypeHello, `{"min_version":1,"max_version":1,"agent_version":"x","robot_type":"xle"}`, func(e Envelope) error { _, err := DecodePayload[Hello](e); return err }},
		{"telemetry cpu over 100", TypeTelemetry, `{"resources":{"cpu_percent":140}}`, func(e Envelope) error { _, err := DecodePayload[Telemetry](e); return err }},
		{"telemetry memory used > total", TypeTelemetry, `{"resources":{"memory_used_bytes":5,"memory_total_bytes":4}}`, func(e Envelope) error { _, err := DecodePayload[Telemetry](e); return err }},
		{"event without kind", TypeEvent, `{"message":"x"}`, func(e Envelope) error { _, err := DecodePayload[Event](e); return err }},
		{"event bad severity", TypeEvent, `{"kind":"x","severity":"meh"}`, func(e Envelope) error { _, err := DecodePayload[Event](e); return err }},
		{"response bad status", TypeResponse, `{"command_id":"c","status":"maybe"}`, func(e Envelope) error { _, err := DecodePayload[Response](e); return err }},
		{"missing payload", TypeEvent, ``, func(e Envelope) error { _, err := DecodePayload[Event](e); return err }},
		{"payload wrong type", TypeHeartbeat, `{"uptime_seconds":"long"}`, func(e Envelope) error { _, err := DecodePayload[Heartbeat](e); return err }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			e := Envelope{Type: tc.typ, RobotID: "r", Sequence: 9, Timestamp: time.Now()}
			if tc.body != "" {
				e.Payload = json.RawMessage(tc.body)
			}
			err := tc.try(e)
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != CodeInvalid || perr.Sequence != 9 {
				t.Fatalf("got %v, want invalid error for sequence 9", err)
			}
		})
	}
}

func TestNegotiateRejectsDisjointVersions(t *testing.T) {
	h := Hello{MinVersion: Version + 1, MaxVersion: Version + 5}
	_, err := h.Negotiate()
	var perr *Error
	if !errors.As(err, &perr) || perr.Code != CodeVersion || !perr.Code.Fatal() || perr.Code.CloseCode() != CloseProtocolError {
		t.Fatalf("negotiate = %v, want fatal version error", err)
	}
}

func TestEncodeRefusesOversizeFrames(t *testing.T) {
	env, err := New(TypeEvent, "r", 1, time.Now(), Event{Kind: "x", Message: strings.Repeat("y", MaxFrameBytes)})
	if err != nil {
		t.Fatal(err)
	}
	var perr *Error
	if _, err := Encode(env); !errors.As(err, &perr) || perr.Code != CodeTooLarge {
		t.Fatalf("Encode = %v, want too_large", err)
	}
}

// The image fields are optional both ways: an old agent's hello has none
// and decodes with a nil Image; a new agent's hello carries them, and a
// control that does not know the field ignores it (unknown fields are
// ignored), so no protocol version is needed.
func TestHelloImageIsOptional(t *testing.T) {
	old := `{"min_version":1,"max_version":1,"agent_version":"1.0","stream":"s","robot_type":"lekiwi"}`
	env := Envelope{Type: TypeHello, RobotID: "kiwi-1", Sequence: 1, Timestamp: time.Now(), Payload: json.RawMessage(old)}
	h, err := DecodePayload[Hello](env)
	if err != nil || h.Image != nil {
		t.Fatalf("hello without image: %+v, %v", h, err)
	}

	created := time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC)
	sent := Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "1.0", Stream: "s", RobotType: RobotLeKiwi,
		Image: &ImageInfo{Version: "2026.11.2", Profile: "lekiwi", Created: created, Seed: "ab12"}}
	env, err = New(TypeHello, "kiwi-1", 1, time.Now(), sent)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env.Payload), `"image":{"version":"2026.11.2","profile":"lekiwi","created":"2026-11-02T09:30:00Z","seed":"ab12"}`) {
		t.Fatalf("hello payload %s", env.Payload)
	}
	h, err = DecodePayload[Hello](env)
	if err != nil || h.Image == nil || *h.Image != *sent.Image {
		t.Fatalf("hello with image: %+v, %v", h.Image, err)
	}
	// Controls from before the field decode hellos with DecodePayload too,
	// which ignores what it does not know.
	future := `{"min_version":1,"max_version":1,"agent_version":"1.0","stream":"s","robot_type":"lekiwi","image":{"version":"x"},"board_firmware":{"eeprom":"2026-01-01"}}`
	env.Payload = json.RawMessage(future)
	if h, err = DecodePayload[Hello](env); err != nil || h.Stream != "s" || h.Image.Version != "x" {
		t.Fatalf("hello with a field this side does not know: %+v, %v", h, err)
	}
}
