package stream

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Priority orders delivery to one subscriber: critical before normal before
// bulk. Critical messages also bypass throttles and are never coalesced.
type Priority int8

// The priority classes.
const (
	Bulk     Priority = iota // heartbeats, telemetry
	Normal                   // robot events, presence, commands, the log
	Critical                 // safety alerts
)

func (p Priority) String() string {
	switch p {
	case Critical:
		return "critical"
	case Normal:
		return "normal"
	}
	return "bulk"
}

// MarshalText implements encoding.TextMarshaler.
func (p Priority) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Message is one thing published to the hub.
type Message struct {
	// Topic is the message's dot-separated topic (robot.<id>.heartbeat).
	Topic string
	// Aliases are further topics the message is published under (a teleop
	// event is robot.<id>.event and teleoperation.started); it is still
	// delivered once per subscription, under Topic.
	Aliases []string
	// RobotID and Kind are what subscription filters test.
	RobotID  string
	Kind     string
	Priority Priority
	// Time is when control received what the message reports.
	Time time.Time
	// Seq is the event log sequence, 0 for live-only messages (heartbeats).
	Seq  int64
	Data json.RawMessage
}

// published is a message prepared once for every subscriber: topics split,
// wire body encoded.
type published struct {
	Message
	topics [][]string
	// body is the JSON object of the message without its opening brace, so
	// a frame is `{"type":"message","sub":<id>,` + body.
	body []byte
}

// wireMessage is a message frame's fields after type and sub.
type wireMessage struct {
	Topic    string          `json:"topic"`
	RobotID  string          `json:"robot_id,omitempty"`
	Kind     string          `json:"kind,omitempty"`
	Priority Priority        `json:"priority"`
	Time     time.Time       `json:"time"`
	Seq      int64           `json:"seq,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

func prepare(m Message) (*published, error) {
	if m.Topic == "" {
		return nil, fmt.Errorf("publish: message without topic")
	}
	if len(m.Data) > 0 && !json.Valid(m.Data) {
		return nil, fmt.Errorf("publish %s: data is not valid JSON", m.Topic)
	}
	p := &published{Message: m, topics: make([][]string, 0, 1+len(m.Aliases))}
	p.topics = append(p.topics, strings.Split(m.Topic, "."))
	for _, a := range m.Aliases {
		p.topics = append(p.topics, strings.Split(a, "."))
	}
	b, err := json.Marshal(wireMessage{Topic: m.Topic, RobotID: m.RobotID, Kind: m.Kind, Priority: m.Priority, Time: m.Time.UTC(), Seq: m.Seq, Data: m.Data})
	if err != nil {
		return nil, fmt.Errorf("publish %s: encode: %w", m.Topic, err)
	}
	p.body = b[1:]
	return p, nil
}

// frameFor is the message frame for subscription sub.
func (p *published) frameFor(subJSON []byte) []byte {
	const head = `{"type":"message","sub":`
	f := make([]byte, 0, len(head)+len(subJSON)+1+len(p.body))
	f = append(f, head...)
	f = append(f, subJSON...)
	f = append(f, ',')
	return append(f, p.body...)
}
