package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/lekiwi/heartbeat/protocol"
)

// Strategies.
const (
	// Rolling updates the targets in batches of BatchSize.
	Rolling = "rolling"
	// Canary updates a first batch of Canary robots, then (after a pause
	// or at once, see AfterFirst) the rest in batches of BatchSize.
	Canary = "canary"
	// BlueGreen splits the targets into two cohorts: "blue" (the first
	// half, rounded up) is updated and verified while "green" keeps the old
	// release; then green follows. A robot has one root filesystem in use,
	// so the two colours are cohorts of robots, not two copies of one.
	BlueGreen = "blue-green"
)

// What to do when the first batch of a canary or blue-green deployment
// finished within its thresholds.
const (
	AfterFirstPause    = "pause"    // wait for `control deploy resume` (default)
	AfterFirstContinue = "continue" // go on with the next batch at once
)

// What a tripped failure threshold does (without AutoRollback).
const (
	OnFailurePause = "pause" // default: an engineer decides
	OnFailureAbort = "abort"
)

// Limits on a deployment.
const (
	// MaxTargets bounds the robots of one deployment: creation writes a
	// row per robot in one transaction, and libdqlite 1.11 corrupts large
	// transactions (see store.MaxAppendBatch). 2,000 rows of ~100 bytes
	// stay well below the smallest failing transaction measured.
	MaxTargets = 2000
	// DefaultUpdateTimeout is how long a robot has to report a final
	// update state before it counts as failed.
	DefaultUpdateTimeout = 30 * 60
)

// Spec is what an engineer asks for.
type Spec struct {
	Name string `json:"name,omitempty"`
	// Release is the signed release artifact by digest
	// (registry/repo@sha256:<64 hex>): what was approved is what installs.
	Release string `json:"release"`
	Version string `json:"version"`
	Target  Target `json:"target"`
	// Strategy is rolling (default), canary or blue-green.
	Strategy string `json:"strategy,omitempty"`
	// BatchSize is robots per batch: a count ("5") or a share ("10%").
	// Default 10%.
	BatchSize Size `json:"batch_size,omitzero"`
	// Canary is the canary strategy's first batch (default 1 robot).
	Canary Size `json:"canary,omitzero"`
	// AfterFirst says what follows a successful canary or blue batch:
	// pause (default) or continue.
	AfterFirst string `json:"after_first,omitempty"`
	Health     Health `json:"health,omitzero"`
	// UpdateTimeoutSeconds bounds how long a robot may take to report a
	// final state (committed, failed, rolled back); default 1800.
	UpdateTimeoutSeconds int `json:"update_timeout_seconds,omitempty"`
	// BatchFailureThreshold trips when this many robots of one batch
	// failed (count or share of the batch); default 50%.
	BatchFailureThreshold Size `json:"batch_failure_threshold,omitzero"`
	// FailureThreshold trips when this many robots of the deployment
	// failed (count or share of all targets); default 10%.
	FailureThreshold Size `json:"failure_threshold,omitzero"`
	// OnFailure is pause (default) or abort; ignored with AutoRollback,
	// which rolls back instead.
	OnFailure string `json:"on_failure,omitempty"`
	// AllowDowngrade lets robots install Release although it is older
	// (a lower security version) than what they run or ever committed;
	// without it they refuse it. For going back on purpose, e.g. when the
	// newer release is broken and no fixed one exists yet.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// AutoRollback, when a threshold trips, stops the deployment and sends
	// a rollback to every robot that committed the release in it, and to
	// every failed robot not known to be back on its old slot.
	AutoRollback bool `json:"auto_rollback,omitempty"`
	// MaxConcurrent bounds robots updating at once (0: no bound).
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// PerMinute bounds updates started per minute (0: no bound).
	PerMinute int `json:"per_minute,omitempty"`
	// Window, when set, confines update starts to these UTC hours.
	Window *Window `json:"maintenance_window,omitempty"`
}

// Target selects robots. Every non-empty field must match; RobotIDs, when
// set, lists the only candidates.
type Target struct {
	// Profile is the robot type: lekiwi or xle.
	Profile string `json:"profile,omitempty"`
	// Model must occur in the robot's hardware model
	// ("Raspberry Pi 5" matches "Raspberry Pi 5 Model B Rev 1.0").
	Model string `json:"model,omitempty"`
	// Labels are not supported yet: the robots projection has none, so a
	// selector with labels is refused rather than silently matching all.
	Labels   map[string]string `json:"labels,omitempty"`
	RobotIDs []string          `json:"robot_ids,omitempty"`
}

// Health is the trial boot's health check, passed to agents in
// protocol.UpdateArgs.
type Health struct {
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	Retries        int `json:"retries,omitempty"`
}

// Window is a daily maintenance window in UTC hours: updates start only
// when StartHour <= hour < EndHour, or, when EndHour <= StartHour, across
// midnight (22 to 4 is 22:00-03:59). Results are recorded and rollbacks
// sent at any hour.
type Window struct {
	StartHour int `json:"start_hour"`
	EndHour   int `json:"end_hour"`
}

// Contains reports whether hour (0-23, UTC) is inside the window.
func (w *Window) Contains(hour int) bool {
	if w == nil {
		return true
	}
	if w.StartHour < w.EndHour {
		return hour >= w.StartHour && hour < w.EndHour
	}
	return hour >= w.StartHour || hour < w.EndHour
}

// Size is a number of robots given as a count or as a percentage of a
// whole. JSON: "5", 5 or "10%".
type Size struct {
	Count   int     `json:"-"`
	Percent float64 `json:"-"`
}

// IsZero reports an unset size.
func (s Size) IsZero() bool { return s.Count == 0 && s.Percent == 0 }

// String is the size as ParseSize reads it.
func (s Size) String() string {
	if s.Percent > 0 {
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(s.Count)
}

// Of resolves the size against a whole of n robots: a count is capped at
// n, a percentage rounds up; at least 1 when n > 0.
func (s Size) Of(n int) int {
	if n <= 0 {
		return 0
	}
	v := s.Count
	if s.Percent > 0 {
		v = int(math.Ceil(s.Percent * float64(n) / 100 * (1 - 1e-12)))
	}
	return max(1, min(v, n))
}

// ParseSize reads "5" or "12.5%".
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f <= 0 || f > 100 || math.IsNaN(f) {
			return Size{}, fmt.Errorf("size %q: a percentage must be in (0, 100]", s)
		}
		return Size{Percent: f}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return Size{}, fmt.Errorf("size %q: want a positive count (5) or a percentage (10%%)", s)
	}
	return Size{Count: n}, nil
}

// MarshalJSON writes the size as a string.
func (s Size) MarshalJSON() ([]byte, error) {
	if s.IsZero() {
		return []byte(`""`), nil
	}
	return json.Marshal(s.String())
}

// UnmarshalJSON reads "5", 5 or "10%"; "" is unset.
func (s *Size) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("size must be a count or a percentage string, got %.40s", b)
		}
		str = n.String()
	}
	if str == "" {
		*s = Size{}
		return nil
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// releaseRef is registry/repository@sha256:<64 hex>.
var releaseRef = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._:/-]{0,250}@sha256:[0-9a-f]{64}$`)

// withDefaults fills unset fields.
func (s Spec) withDefaults() Spec {
	if s.Strategy == "" {
		s.Strategy = Rolling
	}
	if s.BatchSize.IsZero() {
		s.BatchSize = Size{Percent: 10}
	}
	if s.Strategy == Canary && s.Canary.IsZero() {
		s.Canary = Size{Count: 1}
	}
	if s.AfterFirst == "" && (s.Strategy == Canary || s.Strategy == BlueGreen) {
		s.AfterFirst = AfterFirstPause
	}
	if s.UpdateTimeoutSeconds == 0 {
		s.UpdateTimeoutSeconds = DefaultUpdateTimeout
	}
	if s.BatchFailureThreshold.IsZero() {
		s.BatchFailureThreshold = Size{Percent: 50}
	}
	if s.FailureThreshold.IsZero() {
		s.FailureThreshold = Size{Percent: 10}
	}
	if s.OnFailure == "" {
		s.OnFailure = OnFailurePause
	}
	return s
}

// Validate checks a spec (after defaults) and says what to fix.
func (s Spec) Validate() error {
	var errs []error
	if !releaseRef.MatchString(s.Release) {
		errs = append(errs, fmt.Errorf("release %q must be an artifact by digest: registry/repo@sha256:<64 hex> (see `provision release push`)", trunc(s.Release)))
	}
	if s.Version == "" || len(s.Version) > 128 {
		errs = append(errs, errors.New("version is required (1-128 characters)"))
	}
	if len(s.Name) > 128 {
		errs = append(errs, errors.New("name is longer than 128 characters"))
	}
	switch s.Strategy {
	case Rolling, Canary, BlueGreen:
	default:
		errs = append(errs, fmt.Errorf("strategy %q is not rolling, canary or blue-green", trunc(s.Strategy)))
	}
	switch s.AfterFirst {
	case "", AfterFirstPause, AfterFirstContinue:
	default:
		errs = append(errs, fmt.Errorf("after_first %q is not pause or continue", trunc(s.AfterFirst)))
	}
	switch s.OnFailure {
	case OnFailurePause, OnFailureAbort:
	default:
		errs = append(errs, fmt.Errorf("on_failure %q is not pause or abort", trunc(s.OnFailure)))
	}
	if s.Target.Profile != "" && !protocol.RobotType(s.Target.Profile).Valid() {
		errs = append(errs, fmt.Errorf("target profile %q is not lekiwi or xle", trunc(s.Target.Profile)))
	}
	if len(s.Target.Labels) > 0 {
		errs = append(errs, errors.New("target labels are not supported yet (robots carry no labels); select by profile, model or robot ids"))
	}
	if len(s.Target.RobotIDs) > MaxTargets {
		errs = append(errs, fmt.Errorf("%d robot ids: at most %d per deployment", len(s.Target.RobotIDs), MaxTargets))
	}
	for _, id := range s.Target.RobotIDs {
		if err := protocol.ValidRobotID(id); err != nil {
			errs = append(errs, fmt.Errorf("target robot id %q: %w", trunc(id), err))
			break
		}
	}
	if s.Health.TimeoutSeconds < 0 || s.Health.TimeoutSeconds > 24*3600 || s.Health.Retries < 0 || s.Health.Retries > 100 {
		errs = append(errs, errors.New("health: timeout_seconds must be 0-86400 and retries 0-100"))
	}
	if s.UpdateTimeoutSeconds < 1 || s.UpdateTimeoutSeconds > 7*24*3600 {
		errs = append(errs, errors.New("update_timeout_seconds must be 1-604800"))
	}
	if s.MaxConcurrent < 0 || s.PerMinute < 0 {
		errs = append(errs, errors.New("max_concurrent and per_minute must not be negative (0 means no bound)"))
	}
	if w := s.Window; w != nil && (w.StartHour < 0 || w.StartHour > 23 || w.EndHour < 0 || w.EndHour > 23 || w.StartHour == w.EndHour) {
		errs = append(errs, errors.New("maintenance_window: start_hour and end_hour are distinct UTC hours 0-23"))
	}
	return errors.Join(errs...)
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// plan splits n sorted targets into batch sizes by strategy.
func (s Spec) plan(n int) []int {
	if n == 0 {
		return nil
	}
	var sizes []int
	rest := n
	switch s.Strategy {
	case Canary:
		first := s.Canary.Of(n)
		sizes, rest = append(sizes, first), n-first
	case BlueGreen:
		blue := (n + 1) / 2
		sizes = append(sizes, blue)
		if n-blue > 0 {
			sizes = append(sizes, n-blue)
		}
		return sizes
	}
	per := s.BatchSize.Of(n)
	for rest > 0 {
		b := min(per, rest)
		sizes, rest = append(sizes, b), rest-b
	}
	return sizes
}

// pausesAfterFirst reports whether the deployment waits for a resume once
// its first batch is done.
func (s Spec) pausesAfterFirst() bool {
	return (s.Strategy == Canary || s.Strategy == BlueGreen) && s.AfterFirst == AfterFirstPause
}
