package telemetry

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// Metric names one series of a robot.
type Metric string

// The metrics taken from each TelemetryReported event.
const (
	CPU         Metric = "cpu"         // percent busy
	Memory      Metric = "memory"      // percent of memory used
	Disk        Metric = "disk"        // percent of the root filesystem used
	Temperature Metric = "temperature" // SoC temperature, °C
)

// Metrics lists every metric, in a stable order.
func Metrics() []Metric { return []Metric{CPU, Memory, Disk, Temperature} }

// Unit is the metric's unit as shown to clients.
func (m Metric) Unit() string {
	if m == Temperature {
		return "celsius"
	}
	return "percent"
}

// ParseMetric checks a metric name.
func ParseMetric(s string) (Metric, error) {
	for _, m := range Metrics() {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown metric %q: use one of cpu, memory, disk, temperature", s)
}

// Sample is one value of one robot's metric.
type Sample struct {
	RobotID string
	Metric  Metric
	Time    time.Time
	Value   float64
}

// Robot clocks are trusted within these bounds of control's receipt time:
// a backlog resent after a reconnect keeps the times it was measured at,
// while a robot whose clock is far off is placed at receipt.
const (
	maxRobotClockAhead = time.Minute
	maxRobotClockBack  = 24 * time.Hour
)

// sampleTime is when an event's telemetry was measured.
func sampleTime(e store.Event) time.Time {
	rt := e.RobotTime
	if rt.IsZero() || rt.After(e.Time.Add(maxRobotClockAhead)) || rt.Before(e.Time.Add(-maxRobotClockBack)) {
		return e.Time
	}
	return rt
}

// SamplesOf extracts the samples of a TelemetryReported event. Metrics the
// robot did not measure (no temperature sensor, totals of zero) and
// values that are not finite are left out; data that is not telemetry
// JSON is an error.
func SamplesOf(e store.Event) ([]Sample, error) {
	if e.Type != store.TypeTelemetryReported {
		return nil, fmt.Errorf("event %d is %s, not %s", e.Seq, e.Type, store.TypeTelemetryReported)
	}
	var t protocol.Telemetry
	if err := json.Unmarshal(e.Data, &t); err != nil {
		return nil, fmt.Errorf("telemetry event %d of robot %q: %w", e.Seq, e.RobotID, err)
	}
	at := sampleTime(e)
	r := t.Resources
	out := make([]Sample, 0, 4)
	add := func(m Metric, v float64) {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			out = append(out, Sample{RobotID: e.RobotID, Metric: m, Time: at, Value: v})
		}
	}
	add(CPU, r.CPUPercent)
	if r.MemoryTotalBytes > 0 {
		add(Memory, 100*float64(r.MemoryUsedBytes)/float64(r.MemoryTotalBytes))
	}
	if r.DiskTotalBytes > 0 {
		add(Disk, 100*float64(r.DiskUsedBytes)/float64(r.DiskTotalBytes))
	}
	if r.TemperatureC != nil {
		add(Temperature, *r.TemperatureC)
	}
	return out, nil
}
