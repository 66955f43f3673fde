package stream

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func protocolHeartbeat(uptime float64) protocol.Heartbeat {
	return protocol.Heartbeat{UptimeSeconds: uptime, State: "connected"}
}

func robotEvent(t *testing.T, seq int64, robot, kind, severity string) Message {
	t.Helper()
	data, err := json.Marshal(protocol.Event{Kind: kind, Severity: severity})
	if err != nil {
		t.Fatal(err)
	}
	return FromEvent(store.Event{Seq: seq, RobotID: robot, Type: store.TypeRobotEvent, Time: time.Unix(int64(seq), 0), Data: data})
}

func TestFromEvent(t *testing.T) {
	update, _ := json.Marshal(protocol.Event{Kind: protocol.EventUpdate, Data: mustJSON(t, protocol.UpdateState{DeploymentID: "d.1", State: "writing"})})
	cases := []struct {
		e        store.Event
		topic    string
		aliases  []string
		kind     string
		priority Priority
	}{
		{store.Event{RobotID: "r1", Type: store.TypeTelemetryReported}, "robot.r1.telemetry", []string{"log.TelemetryReported"}, "TelemetryReported", Bulk},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: "teleop.started"})},
			"robot.r1.event", []string{"teleoperation.started", "log.RobotEvent"}, "teleop.started", Normal},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: "teleop.stopped"})},
			"robot.r1.event", []string{"teleoperation.stopped", "log.RobotEvent"}, "teleop.stopped", Normal},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: update},
			"robot.r1.event", []string{"deployment.d_1.progress", "log.RobotEvent"}, "update", Normal},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: "safety.estop"})},
			"robot.r1.event", []string{"alert.r1", "log.RobotEvent"}, "safety.estop", Critical},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: "service.failed", Severity: "error"})},
			"robot.r1.event", []string{"alert.r1", "log.RobotEvent"}, "service.failed", Critical},
		{store.Event{RobotID: "r1", Type: store.TypeRobotEvent, Data: json.RawMessage(`not json`)},
			"robot.r1.event", []string{"log.RobotEvent"}, "RobotEvent", Normal},
		{store.Event{RobotID: "r1", Type: store.TypeRobotOffline}, "robot.r1.presence", []string{"log.RobotOffline"}, "RobotOffline", Normal},
		{store.Event{RobotID: "r1", Type: store.TypeCommandQueued}, "robot.r1.command", []string{"log.CommandQueued"}, "CommandQueued", Normal},
		{store.Event{Type: "AlertRaised"}, "alert.fleet", []string{"log.AlertRaised"}, "AlertRaised", Critical},
		{store.Event{Type: store.TypeAccessDenied}, "log.AccessDenied", nil, "AccessDenied", Normal},
		{store.Event{Type: "Weird.Type x"}, "log.Weird_Type_x", nil, "Weird.Type x", Normal},
	}
	for _, c := range cases {
		m := FromEvent(c.e)
		if m.Topic != c.topic || !slices.Equal(m.Aliases, c.aliases) || m.Kind != c.kind || m.Priority != c.priority {
			t.Errorf("FromEvent(%s %s) = %s %v kind %s %s, want %s %v kind %s %s", c.e.Type, c.e.Data, m.Topic, m.Aliases, m.Kind, m.Priority,
				c.topic, c.aliases, c.kind, c.priority)
		}
		for _, topic := range append([]string{m.Topic}, m.Aliases...) {
			if _, err := ParsePattern(topic); err != nil {
				t.Errorf("topic %q is not a valid literal pattern: %v", topic, err)
			}
		}
	}
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
