package protocol

import (
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary frames to the decoder: it must never panic,
// must classify every failure with a code, and anything it accepts must
// survive a re-encode and decode unchanged.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"type":"heartbeat","robot_id":"kiwi-1","timestamp":"2026-11-27T10:00:00Z","sequence":3,"payload":{"uptime_seconds":1}}`,
		`{"type":"hello","robot_id":"xle-1","timestamp":"2026-11-27T10:00:00Z","sequence":1,"payload":{"min_version":1,"max_version":1,"agent_version":"1","stream":"s","robot_type":"xle"}}`,
		`{"type":"event","robot_id":"a","timestamp":"2026-11-27T10:00:00Z","sequence":18446744073709551615,"payload":{"kind":"teleop.started"}}`,
		`{"type":"telemetry","robot_id":"a","timestamp":"2026-11-27T10:00:00Z","sequence":2,"payload":{"resources":{"cpu_percent":1e400}}}`,
		`[]`, `null`, `{"type":null}`, "\xff\xfe", `{"sequence":-1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		env, err := Decode(frame)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || perr.Code == "" || perr.Message == "" {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		b, err := Encode(env)
		if err != nil {
			t.Fatalf("accepted envelope does not re-encode: %v", err)
		}
		again, err := Decode(b)
		if err != nil {
			t.Fatalf("re-encoded envelope rejected: %v", err)
		}
		if again.Type != env.Type || again.RobotID != env.RobotID || again.Sequence != env.Sequence || !again.Timestamp.Equal(env.Timestamp) {
			t.Fatalf("round trip changed the envelope: %+v vs %+v", env, again)
		}
		// Payload decoders must not panic on whatever payload got through.
		switch env.Type {
		case TypeHello:
			DecodePayload[Hello](env)
		case TypeHeartbeat:
			DecodePayload[Heartbeat](env)
		case TypeTelemetry:
			DecodePayload[Telemetry](env)
		case TypeEvent:
			DecodePayload[Event](env)
		case TypeCommand:
			DecodePayload[Command](env)
		case TypeResponse:
			DecodePayload[Response](env)
		case TypeAck:
			DecodePayload[Ack](env)
		case TypeError:
			DecodePayload[Error](env)
		}
	})
}
