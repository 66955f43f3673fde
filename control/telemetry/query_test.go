package telemetry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	r := DefaultRetention()
	now := t0
	for _, tc := range []struct {
		name     string
		age      time.Duration
		step     time.Duration
		res      Resolution
		wantStep time.Duration
	}{
		{"recent fine step reads raw", 30 * time.Minute, 10 * time.Second, Raw, 10 * time.Second},
		{"raw step below a second is raised", 30 * time.Minute, time.Millisecond, Raw, time.Second},
		{"recent minute step reads 1m", 30 * time.Minute, 5 * time.Minute, Minute, 5 * time.Minute},
		{"step rounded up to whole minutes", 30 * time.Minute, 90 * time.Second, Minute, 2 * time.Minute},
		{"older than raw: 1m, step raised", 2 * time.Hour, 10 * time.Second, Minute, time.Minute},
		{"hour step reads 1h even when recent", 30 * time.Minute, time.Hour, Hour, time.Hour},
		{"older than a week: 1h", 8 * 24 * time.Hour, time.Minute, Hour, time.Hour},
		{"step rounded up to whole hours", 10 * 24 * time.Hour, 150 * time.Minute, Hour, 3 * time.Hour},
		{"beyond every retention: 1h", 200 * 24 * time.Hour, time.Second, Hour, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, step := Plan(now, now.Add(-tc.age), tc.step, r)
			if res != tc.res || step != tc.wantStep {
				t.Fatalf("Plan(age %s, step %s) = %s, %s; want %s, %s", tc.age, tc.step, res, step, tc.res, tc.wantStep)
			}
		})
	}
}

func TestQueryChoosesResolution(t *testing.T) {
	l := newLab(t, Options{})
	// Two hours: cpu = minute index, so every minute's values are known.
	for i := range 120 {
		at := t0.Add(time.Duration(i) * time.Minute)
		l.clock.t = at
		l.report("r1", at, reading{cpu: float64(i), mem: 20, disk: 30, temp: temp(50)})
		l.report("r1", at.Add(30*time.Second), reading{cpu: float64(i) + 0.5, mem: 20, disk: 30, temp: temp(50)})
		l.report("r2", at, reading{cpu: 99, mem: 20, disk: 30})
	}
	l.clock.t = t0.Add(2 * time.Hour)
	l.ingest(l.tel)
	ctx := context.Background()
	now := l.clock.Now()

	// Last 10 minutes at 30 s: raw samples, one per step.
	res, err := l.tel.Query(ctx, Query{RobotID: "r1", Metrics: []Metric{CPU}, From: now.Add(-10 * time.Minute), To: now, Step: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resolution != Raw || len(res.Series) != 1 || len(res.Series[0].Points) != 20 {
		t.Fatalf("raw query: %s with %d series, %d points", res.Resolution, len(res.Series), len(res.Series[0].Points))
	}
	if p := res.Series[0].Points[0]; p.Count != 1 || p.Avg != 110 || !p.Time.Equal(now.Add(-10*time.Minute)) {
		t.Fatalf("first raw point %+v, want cpu 110 at %s", p, now.Add(-10*time.Minute))
	}

	// Whole two hours at 10 minutes: minute aggregates, 12 points of 20
	// samples each; min/max/avg of minutes 10..19.
	res, err = l.tel.Query(ctx, Query{RobotID: "r1", Metrics: []Metric{CPU, Temperature}, From: t0, To: now, Step: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resolution != Minute || len(res.Series) != 2 || len(res.Series[0].Points) != 12 {
		t.Fatalf("1m query: %s, %+v", res.Resolution, res.Series)
	}
	p := res.Series[0].Points[1]
	if p.Count != 20 || p.Min != 10 || p.Max != 19.5 || !near(p.Avg, 14.75) {
		t.Fatalf("cpu 10:10-10:20 = %+v; want 20 samples, min 10, max 19.5, avg 14.75", p)
	}
	if res.Series[1].Metric != Temperature || res.Series[1].Unit != "celsius" || res.Series[1].Points[0].Avg != 50 {
		t.Fatalf("temperature series %+v", res.Series[1])
	}

	// One-hour steps: hour aggregates.
	res, err = l.tel.Query(ctx, Query{RobotID: "r1", Metrics: []Metric{CPU}, From: t0, To: now, Step: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resolution != Hour || len(res.Series[0].Points) != 2 || res.Series[0].Points[0].Count != 120 || res.Series[0].Points[1].Max != 119.5 {
		t.Fatalf("1h query: %s %+v", res.Resolution, res.Series[0].Points)
	}

	// Fleet: both robots in one series.
	res, err = l.tel.Query(ctx, Query{Metrics: []Metric{CPU}, From: t0, To: now, Step: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Series[0].Points[0]; p.Count != 180 || p.Max != 99 {
		t.Fatalf("fleet hour point %+v; want 180 samples, max 99", p)
	}

	// Default range and step: last hour, about DefaultPoints points.
	res, err = l.tel.Query(ctx, Query{RobotID: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resolution != Raw || res.StepNanos != int64(10*time.Second) || len(res.Series) != 4 {
		t.Fatalf("default query: %s step %s, %d series", res.Resolution, res.Step, len(res.Series))
	}

	for _, bad := range []Query{
		{RobotID: "r1", From: now, To: now.Add(-time.Hour)},
		{RobotID: "r1", Step: -time.Second},
		{RobotID: "r1", Metrics: []Metric{"voltage"}},
		{RobotID: "r1", From: now.Add(-30 * 24 * time.Hour), To: now, Step: time.Second}, // 720 points of 1h: fine
	} {
		_, err := l.tel.Query(ctx, bad)
		if bad.Step == time.Second {
			if err != nil {
				t.Fatalf("30-day query raised to hours failed: %v", err)
			}
			continue
		}
		if !errors.Is(err, ErrBadQuery) {
			t.Fatalf("query %+v: %v, want ErrBadQuery", bad, err)
		}
	}
	if _, err := l.tel.Query(ctx, Query{RobotID: "r1", From: now.Add(-50 * time.Minute), To: now, Step: 100 * time.Millisecond}); err != nil {
		t.Fatalf("raw query at the finest step: %v", err)
	}
	if _, err := l.tel.Query(ctx, Query{RobotID: "r1", From: now.Add(-59 * time.Minute), To: now.Add(24 * time.Hour), Step: time.Second}); !errors.Is(err, ErrBadQuery) {
		t.Fatalf("86,000-point query: %v, want ErrBadQuery", err)
	}
}
