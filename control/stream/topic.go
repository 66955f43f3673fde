package stream

import (
	"fmt"
	"strings"
)

// Topic limits: patterns come from the network.
const (
	MaxTopicLen  = 256
	MaxSegments  = 16
	segmentAny   = "*" // exactly one segment
	segmentRest  = ">" // one or more trailing segments
	topicAllowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:"
)

// Pattern is a parsed subscription topic: dot-separated segments where "*"
// matches exactly one segment and a final ">" matches one or more.
type Pattern struct {
	raw  string
	segs []string
}

// ParsePattern validates a subscription topic such as "robot.*.heartbeat"
// or "robot.lekiwi-7.>".
func ParsePattern(s string) (Pattern, error) {
	if s == "" {
		return Pattern{}, fmt.Errorf("topic pattern is empty; use e.g. robot.*.heartbeat or > for everything")
	}
	if len(s) > MaxTopicLen {
		return Pattern{}, fmt.Errorf("topic pattern of %d bytes is longer than %d", len(s), MaxTopicLen)
	}
	segs := strings.Split(s, ".")
	if len(segs) > MaxSegments {
		return Pattern{}, fmt.Errorf("topic pattern %q has %d segments, at most %d", s, len(segs), MaxSegments)
	}
	for i, seg := range segs {
		switch {
		case seg == "":
			return Pattern{}, fmt.Errorf("topic pattern %q has an empty segment (leading, trailing or double dot)", s)
		case seg == segmentRest && i != len(segs)-1:
			return Pattern{}, fmt.Errorf("topic pattern %q: %q may only be the last segment", s, segmentRest)
		case seg == segmentAny || seg == segmentRest:
		case strings.Trim(seg, topicAllowed) != "":
			return Pattern{}, fmt.Errorf("topic pattern %q: segment %q may hold only letters, digits, '-', '_', ':' or be * or >", s, seg)
		}
	}
	return Pattern{raw: s, segs: segs}, nil
}

// String is the pattern as given.
func (p Pattern) String() string { return p.raw }

// Match reports whether a topic, already split at dots, matches.
func (p Pattern) Match(topic []string) bool {
	for i, seg := range p.segs {
		if seg == segmentRest {
			return len(topic) > i
		}
		if i >= len(topic) || (seg != segmentAny && seg != topic[i]) {
			return false
		}
	}
	return len(topic) == len(p.segs)
}

// MatchString splits topic and matches it.
func (p Pattern) MatchString(topic string) bool { return p.Match(strings.Split(topic, ".")) }

// segment makes an arbitrary id safe as one topic segment: dots and other
// characters outside the topic alphabet become '_'.
func segment(id string) string {
	if id == "" {
		return "_"
	}
	if strings.Trim(id, topicAllowed) == "" {
		return id
	}
	b := []byte(id)
	for i, c := range b {
		if !strings.ContainsRune(topicAllowed, rune(c)) {
			b[i] = '_'
		}
	}
	return string(b)
}
