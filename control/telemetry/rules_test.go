package telemetry

import (
	"strings"
	"testing"
	"time"
)

func TestParseRules(t *testing.T) {
	good := `
rules:
  - name: temperature-high
    metric: temperature
    above: 80
    clear: 75
    for: 2m
  - name: disk-full
    metric: disk
    above: 90
  - name: offline
    offline: 5m
webhook:
  url: https://alerts.example/hook
  timeout: 3s
`
	rs, err := ParseRules(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Rules) != 3 || rs.Rules[0].For != 2*time.Minute || rs.Rules[1].clearLevel() != 85 || rs.Rules[2].Offline != 5*time.Minute || rs.Webhook.Timeout != 3*time.Second {
		t.Fatalf("parsed %+v", rs)
	}
	if err := DefaultRules().Validate(); err != nil {
		t.Fatalf("default rules: %v", err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "rules:\n  - name: a\n    metric: cpu\n    abve: 3\n", "abve"},
		{"unknown metric", "rules:\n  - name: a\n    metric: voltage\n    above: 3\n", "unknown metric"},
		{"clear above threshold", "rules:\n  - name: a\n    metric: cpu\n    above: 80\n    clear: 90\n", "clear"},
		{"offline with metric", "rules:\n  - name: a\n    metric: cpu\n    offline: 1m\n", "offline rule"},
		{"duplicate", "rules:\n  - {name: a, offline: 1m}\n  - {name: a, offline: 2m}\n", "twice"},
		{"bad name", "rules:\n  - {name: 'A B', offline: 1m}\n", "name"},
		{"too long", "rules:\n  - {name: a, metric: cpu, above: 1, for: 2h}\n", "between"},
		{"bad duration", "rules:\n  - {name: a, offline: soon}\n", "parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRules(strings.NewReader(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if rs, err := ParseRules(strings.NewReader("")); err != nil || len(rs.Rules) != 0 {
		t.Fatalf("empty config: %+v, %v", rs, err)
	}
}

func FuzzParseRules(f *testing.F) {
	f.Add([]byte("rules:\n  - {name: t, metric: temperature, above: 80, clear: 75, for: 2m}\n"))
	f.Add([]byte("rules:\n  - {name: o, offline: 5m}\nwebhook: {url: 'http://x/y'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		if err := rs.Validate(); err != nil {
			t.Fatalf("ParseRules accepted rules that do not validate: %v", err)
		}
		for _, r := range rs.Rules {
			if !r.offline() && r.clearLevel() > r.Above {
				t.Fatalf("rule %+v clears above its threshold", r)
			}
		}
	})
}
