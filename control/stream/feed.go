package stream

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// HeartbeatData is the data of a robot.<id>.heartbeat message.
type HeartbeatData struct {
	UptimeSeconds float64             `json:"uptime_seconds"`
	State         string              `json:"state,omitempty"`
	Queue         protocol.QueueStats `json:"queue"`
	// Node is the control node holding the robot's connection.
	Node string `json:"node"`
}

// HeartbeatMessage is the live message of one heartbeat received by the
// gateway of node. Heartbeats are not in the event log, so only the node
// holding a robot's connection publishes them.
func HeartbeatMessage(robotID, node string, at time.Time, hb protocol.Heartbeat) Message {
	data, _ := json.Marshal(HeartbeatData{UptimeSeconds: hb.UptimeSeconds, State: hb.State, Queue: hb.Queue, Node: node})
	return Message{Topic: "robot." + segment(robotID) + ".heartbeat", RobotID: robotID, Kind: "heartbeat",
		Priority: Bulk, Time: at, Data: data}
}

// FromEvent maps a committed event of the log to its message:
//
//	TelemetryReported                  robot.<id>.telemetry        bulk
//	RobotEvent                         robot.<id>.event            normal
//	  kind teleop.started/stopped      + teleoperation.started/stopped
//	  kind update (deployment_id set)  + deployment.<deployment>.progress
//	  kind safety.* or alert.*, or
//	  severity error                   + alert.<id>                critical
//	RobotRegistered/Connected/
//	  Disconnected/Offline             robot.<id>.presence         normal
//	CommandQueued/Delivered/Response   robot.<id>.command          normal
//	Alert* (control's alert rules)     alert.<id or fleet>         critical
//	anything else                      log.<Type>                  normal
//
// Every event is also published as log.<Type>, so "log.>" follows the
// whole log. Kind is the robot event's kind, or else the event type.
func FromEvent(e store.Event) Message {
	m := Message{RobotID: e.RobotID, Kind: e.Type, Priority: Normal, Time: e.Time, Seq: e.Seq, Data: e.Data}
	logTopic := "log." + segment(e.Type)
	robot := "robot." + segment(e.RobotID)
	switch {
	case e.RobotID != "" && e.Type == store.TypeTelemetryReported:
		m.Topic, m.Priority = robot+".telemetry", Bulk
	case e.RobotID != "" && e.Type == store.TypeRobotEvent:
		m.Topic = robot + ".event"
		var ev protocol.Event
		if json.Unmarshal(e.Data, &ev) == nil && ev.Kind != "" {
			m.Kind = ev.Kind
			switch {
			case ev.Kind == protocol.EventTeleopStarted:
				m.Aliases = append(m.Aliases, "teleoperation.started")
			case ev.Kind == protocol.EventTeleopStopped:
				m.Aliases = append(m.Aliases, "teleoperation.stopped")
			case ev.Kind == protocol.EventUpdate:
				var st protocol.UpdateState
				if json.Unmarshal(ev.Data, &st) == nil && st.DeploymentID != "" {
					m.Aliases = append(m.Aliases, "deployment."+segment(st.DeploymentID)+".progress")
				}
			}
			if strings.HasPrefix(ev.Kind, "safety.") || strings.HasPrefix(ev.Kind, "alert.") || ev.Severity == "error" {
				m.Priority = Critical
				m.Aliases = append(m.Aliases, "alert."+segment(e.RobotID))
			}
		}
	case e.RobotID != "" && (e.Type == store.TypeRobotRegistered || e.Type == store.TypeRobotConnected ||
		e.Type == store.TypeRobotDisconnected || e.Type == store.TypeRobotOffline):
		m.Topic = robot + ".presence"
	case e.RobotID != "" && (e.Type == store.TypeCommandQueued || e.Type == store.TypeCommandDelivered || e.Type == store.TypeCommandResponse):
		m.Topic = robot + ".command"
	case strings.HasPrefix(e.Type, "Alert"):
		who := "fleet"
		if e.RobotID != "" {
			who = segment(e.RobotID)
		}
		m.Topic, m.Priority = "alert."+who, Critical
	default:
		m.Topic = logTopic
		return m
	}
	m.Aliases = append(m.Aliases, logTopic)
	return m
}

// EventSource is the event log (control/store.Store).
type EventSource interface {
	Events(ctx context.Context, after int64, limit int, robotID string) ([]store.Event, error)
	LastSeq(ctx context.Context) (int64, error)
}

// TailOptions tune Tail.
type TailOptions struct {
	// Interval between polls of the log when it had nothing new (default 200 ms).
	Interval time.Duration
	// Batch is the most events read per query (default 500).
	Batch  int
	Logger *slog.Logger
}

// Tail publishes every event committed to the log after the moment it
// starts, on every node: a dashboard on any node sees the whole fleet's
// events. It returns when ctx ends.
func Tail(ctx context.Context, src EventSource, h *Hub, o TailOptions) error {
	if o.Interval <= 0 {
		o.Interval = 200 * time.Millisecond
	}
	if o.Batch <= 0 {
		o.Batch = 500
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "stream")
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	var after int64
	for {
		seq, err := src.LastSeq(ctx)
		if err == nil {
			after = seq
			break
		}
		log.Warn("stream: cannot read the event log's position; retrying", "err", err)
		if !wait(time.Second) {
			return ctx.Err()
		}
	}
	failures := 0
	for {
		if h.Clients() == 0 {
			// Nobody listens: follow the log's position only, instead of
			// reading (and decoding) every event on every node for nothing.
			// A dashboard that attaches gets what is committed from then on.
			if seq, err := src.LastSeq(ctx); err == nil {
				after = seq
			}
			if !wait(o.Interval) {
				return ctx.Err()
			}
			continue
		}
		events, err := src.Events(ctx, after, o.Batch, "")
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			if failures == 1 || failures%50 == 0 {
				log.Warn("stream: cannot read the event log; live events are delayed until the database answers", "after", after, "err", err, "failures", failures)
			}
			if !wait(min(time.Duration(failures)*o.Interval, 5*time.Second)) {
				return ctx.Err()
			}
			continue
		}
		failures = 0
		for _, e := range events {
			after = e.Seq
			h.Publish(FromEvent(e))
		}
		if len(events) < o.Batch && !wait(o.Interval) {
			return ctx.Err()
		}
	}
}
