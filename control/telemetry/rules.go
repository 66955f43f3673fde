package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"
)

// Rule is one alert rule. A threshold rule fires when a robot's metric
// has stayed above Above for For, and resolves when it falls to Clear or
// below; the band between the two is the hysteresis that keeps a value
// hovering at the threshold from firing again and again. An offline rule
// fires when a robot has been offline for Offline and resolves when it is
// back online.
type Rule struct {
	// Name identifies the rule in events and the alerts table.
	Name string `yaml:"name" json:"name"`
	// Metric, Above, Clear and For make a threshold rule.
	Metric Metric        `yaml:"metric,omitempty" json:"metric,omitempty"`
	Above  float64       `yaml:"above,omitempty" json:"above,omitempty"`
	Clear  *float64      `yaml:"clear,omitempty" json:"clear,omitempty"`
	For    time.Duration `yaml:"for,omitempty" json:"for,omitempty"`
	// Offline makes an offline rule.
	Offline time.Duration `yaml:"offline,omitempty" json:"offline,omitempty"`
}

// Offline reports whether the rule watches connectivity.
func (r Rule) offline() bool { return r.Offline > 0 }

// clearLevel is the value at or below which a firing threshold alert
// resolves.
func (r Rule) clearLevel() float64 {
	if r.Clear != nil {
		return *r.Clear
	}
	return r.Above - DefaultHysteresis
}

// DefaultHysteresis is Above minus Clear when a rule names no Clear
// (°C or percentage points).
const DefaultHysteresis = 5

// MaxRuleFor bounds a threshold rule's duration: the run is judged on raw
// samples, which are kept one hour by default.
const MaxRuleFor = time.Hour

var ruleName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// Validate checks one rule.
func (r Rule) Validate() error {
	if !ruleName.MatchString(r.Name) {
		return fmt.Errorf("alert rule %q: name must be 1-63 of a-z, 0-9, '.', '_', '-'", r.Name)
	}
	if r.offline() {
		if r.Metric != "" || r.For != 0 || r.Clear != nil || r.Above != 0 {
			return fmt.Errorf("alert rule %q: an offline rule takes no metric, above, clear or for", r.Name)
		}
		return nil
	}
	if r.Offline < 0 {
		return fmt.Errorf("alert rule %q: offline %s is negative", r.Name, r.Offline)
	}
	if _, err := ParseMetric(string(r.Metric)); err != nil {
		return fmt.Errorf("alert rule %q: %w (or set offline: for an offline rule)", r.Name, err)
	}
	if math.IsNaN(r.Above) || math.IsInf(r.Above, 0) {
		return fmt.Errorf("alert rule %q: above must be a number", r.Name)
	}
	if c := r.clearLevel(); math.IsNaN(c) || c > r.Above {
		return fmt.Errorf("alert rule %q: clear %v must be at most above %v (it is where the alert resolves)", r.Name, c, r.Above)
	}
	if r.For < 0 || r.For > MaxRuleFor {
		return fmt.Errorf("alert rule %q: for %s must be between 0 and %s", r.Name, r.For, MaxRuleFor)
	}
	return nil
}

// Rules is an alert configuration.
type Rules struct {
	Rules []Rule `yaml:"rules" json:"rules"`
	// Webhook, when its URL is set, receives every alert event.
	Webhook WebhookConfig `yaml:"webhook" json:"webhook"`
}

// WebhookConfig says where to POST alerts.
type WebhookConfig struct {
	URL     string        `yaml:"url" json:"url"`
	Timeout time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Validate checks the rules: each valid, names unique.
func (rs Rules) Validate() error {
	seen := map[string]bool{}
	for _, r := range rs.Rules {
		if err := r.Validate(); err != nil {
			return err
		}
		if seen[r.Name] {
			return fmt.Errorf("alert rule %q is defined twice", r.Name)
		}
		seen[r.Name] = true
	}
	if rs.Webhook.Timeout < 0 {
		return fmt.Errorf("alert webhook timeout %s is negative", rs.Webhook.Timeout)
	}
	return nil
}

func ptr(v float64) *float64 { return &v }

// DefaultRules: temperature above 80 °C for 2 min (clears at 75), disk
// above 90 % (clears at 85), memory above 90 % for 2 min (clears at 85),
// offline for 5 min.
func DefaultRules() Rules {
	return Rules{Rules: []Rule{
		{Name: "temperature-high", Metric: Temperature, Above: 80, Clear: ptr(75), For: 2 * time.Minute},
		{Name: "disk-full", Metric: Disk, Above: 90, Clear: ptr(85)},
		{Name: "memory-high", Metric: Memory, Above: 90, Clear: ptr(85), For: 2 * time.Minute},
		{Name: "offline", Offline: 5 * time.Minute},
	}}
}

// MaxRulesBytes bounds a rules file.
const MaxRulesBytes = 1 << 20

// ParseRules reads a YAML alert configuration; unknown keys are errors.
// An empty document yields no rules.
func ParseRules(r io.Reader) (Rules, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxRulesBytes+1))
	if err != nil {
		return Rules{}, fmt.Errorf("read alert rules: %w", err)
	}
	if len(data) > MaxRulesBytes {
		return Rules{}, fmt.Errorf("alert rules are larger than %d bytes", MaxRulesBytes)
	}
	var rs Rules
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rs); err != nil && !errors.Is(err, io.EOF) {
		return Rules{}, fmt.Errorf("parse alert rules: %w", err)
	}
	if err := rs.Validate(); err != nil {
		return Rules{}, err
	}
	return rs, nil
}
