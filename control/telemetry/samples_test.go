package telemetry

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

func TestSamplesOf(t *testing.T) {
	at := t0
	for _, tc := range []struct {
		name      string
		data      string
		robotTime time.Time
		want      map[Metric]float64
		wantTime  time.Time
	}{
		{"all metrics", `{"resources":{"cpu_percent":12.5,"memory_used_bytes":512,"memory_total_bytes":1024,"disk_used_bytes":3,"disk_total_bytes":4,"temperature_c":61.2}}`,
			at.Add(-time.Hour), map[Metric]float64{CPU: 12.5, Memory: 50, Disk: 75, Temperature: 61.2}, at.Add(-time.Hour)},
		{"no sensor, no totals", `{"resources":{"cpu_percent":3}}`, time.Time{}, map[Metric]float64{CPU: 3}, at},
		{"robot clock ahead", `{"resources":{"cpu_percent":3}}`, at.Add(time.Hour), map[Metric]float64{CPU: 3}, at},
		{"robot clock days behind", `{"resources":{"cpu_percent":3}}`, at.Add(-72 * time.Hour), map[Metric]float64{CPU: 3}, at},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SamplesOf(store.Event{Seq: 1, RobotID: "r", Type: store.TypeTelemetryReported, Time: at, RobotTime: tc.robotTime, Data: json.RawMessage(tc.data)})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %v", got, tc.want)
			}
			for _, s := range got {
				if !near(s.Value, tc.want[s.Metric]) || !s.Time.Equal(tc.wantTime) || s.RobotID != "r" {
					t.Fatalf("sample %+v, want %v at %s", s, tc.want[s.Metric], tc.wantTime)
				}
			}
		})
	}
	for _, bad := range []store.Event{
		{Type: store.TypeTelemetryReported, Time: at, Data: json.RawMessage(`[1]`)},
		{Type: store.TypeRobotEvent, Time: at, Data: json.RawMessage(`{}`)},
	} {
		if _, err := SamplesOf(bad); err == nil {
			t.Fatalf("SamplesOf(%s %s) accepted", bad.Type, bad.Data)
		}
	}
}

func FuzzSamplesOf(f *testing.F) {
	f.Add([]byte(`{"resources":{"cpu_percent":12.5,"memory_used_bytes":512,"memory_total_bytes":1024,"disk_used_bytes":3,"disk_total_bytes":4,"temperature_c":61.2}}`), int64(0))
	f.Add([]byte(`{"resources":{"memory_used_bytes":18446744073709551615,"memory_total_bytes":1}}`), int64(-1))
	f.Fuzz(func(t *testing.T, data []byte, robotOffset int64) {
		e := store.Event{Type: store.TypeTelemetryReported, Time: t0, RobotTime: t0.Add(time.Duration(robotOffset)), Data: data}
		got, err := SamplesOf(e)
		if err != nil {
			return
		}
		if len(got) > 4 {
			t.Fatalf("%d samples from one event", len(got))
		}
		for _, s := range got {
			if math.IsNaN(s.Value) || math.IsInf(s.Value, 0) {
				t.Fatalf("non-finite sample %+v", s)
			}
			if s.Time.After(t0.Add(maxRobotClockAhead)) || s.Time.Before(t0.Add(-maxRobotClockBack)) {
				t.Fatalf("sample time %s outside the trusted window", s.Time)
			}
		}
	})
}
