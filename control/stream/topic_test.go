package stream

import "testing"

func TestPatternMatch(t *testing.T) {
	cases := []struct {
		pattern, topic string
		want           bool
	}{
		{"robot.*.heartbeat", "robot.lekiwi-1.heartbeat", true},
		{"robot.*.heartbeat", "robot.lekiwi-1.telemetry", false},
		{"robot.*.heartbeat", "robot.heartbeat", false},
		{"robot.*.heartbeat", "robot.a.b.heartbeat", false},
		{"robot.lekiwi-1.>", "robot.lekiwi-1.heartbeat", true},
		{"robot.lekiwi-1.>", "robot.lekiwi-1.event", true},
		{"robot.lekiwi-1.>", "robot.lekiwi-1", false}, // > needs at least one segment
		{"robot.lekiwi-1.>", "robot.lekiwi-2.event", false},
		{">", "teleoperation.started", true},
		{">", "x", true},
		{"*", "x", true},
		{"*", "x.y", false},
		{"teleoperation.started", "teleoperation.started", true},
		{"teleoperation.started", "teleoperation.stopped", false},
		{"teleoperation.*", "teleoperation.stopped", true},
		{"*.*.event", "robot.r.event", true},
		{"alert.>", "alert.r1", true},
		{"log.RobotOffline", "log.RobotOffline", true},
		{"log.robotoffline", "log.RobotOffline", false}, // case matters
		{"robot.*", "robot.r.heartbeat", false},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", c.pattern, err)
		}
		if got := p.MatchString(c.topic); got != c.want {
			t.Errorf("%q matches %q = %v, want %v", c.pattern, c.topic, got, c.want)
		}
	}
}

func TestParsePatternRefuses(t *testing.T) {
	for _, bad := range []string{"", ".", "robot..x", "robot.", ".robot", "robot.>.x", "robot.a b", "robot.é",
		"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", string(make([]byte, MaxTopicLen+1)), "robot.*x"} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) accepted", bad)
		}
	}
}

func TestSegment(t *testing.T) {
	for in, want := range map[string]string{"lekiwi-1": "lekiwi-1", "a.b": "a_b", "": "_", "d 1/x": "d_1_x"} {
		if got := segment(in); got != want {
			t.Errorf("segment(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"robot.*.heartbeat", ">", "a.>", "a..b", "*.*"} {
		f.Add(s, "robot.r1.heartbeat")
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		if p.String() != pattern {
			t.Fatalf("String() = %q, want %q", p.String(), pattern)
		}
		_ = p.MatchString(topic)
		if !p.MatchString(pattern) && !containsWildcard(pattern) {
			t.Fatalf("literal pattern %q does not match itself", pattern)
		}
	})
}

func containsWildcard(p string) bool {
	for _, s := range []string{"*", ">"} {
		for _, seg := range splitDots(p) {
			if seg == s {
				return true
			}
		}
	}
	return false
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
