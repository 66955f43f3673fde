package telemetry

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/queryplantest"
)

// alertEvents lists the alert events in the log.
func (l *lab) alertEvents() []Alert {
	l.t.Helper()
	evs, err := l.st.EventsOfTypes(context.Background(), 0, 1000, store.TypeAlertFired, store.TypeAlertResolved)
	if err != nil {
		l.t.Fatal(err)
	}
	var out []Alert
	for _, e := range evs {
		var a Alert
		if err := json.Unmarshal(e.Data, &a); err != nil {
			l.t.Fatal(err)
		}
		if a.Type != e.Type || a.RobotID != e.RobotID || e.Actor != Actor {
			l.t.Fatalf("alert event %+v carries %+v", e, a)
		}
		out = append(out, a)
	}
	return out
}

func (l *lab) pass(tel *Store, rules []Rule) []Alert {
	l.t.Helper()
	_, alerts, err := tel.Pass(context.Background(), rules, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	return alerts
}

func TestTemperatureAlertHysteresis(t *testing.T) {
	l := newLab(t, Options{})
	rule := DefaultRules().Rules[0] // above 80 for 2 min, clears at 75
	rules := []Rule{rule}
	step := func(d time.Duration, v float64) []Alert {
		l.clock.Add(d)
		l.report("r1", l.clock.Now(), reading{cpu: 1, mem: 1, disk: 1, temp: temp(v)})
		return l.pass(l.tel, rules)
	}
	want := func(got []Alert, typ string) {
		t.Helper()
		if typ == "" {
			if len(got) != 0 {
				t.Fatalf("at %s: %+v, want nothing", l.clock.Now().Sub(t0), got)
			}
			return
		}
		if len(got) != 1 || got[0].Type != typ || got[0].RobotID != "r1" || got[0].Rule != rule.Name {
			t.Fatalf("at %s: %+v, want one %s", l.clock.Now().Sub(t0), got, typ)
		}
	}
	want(step(0, 70), "")
	want(step(time.Minute, 85), "")    // above since 1m
	want(step(30*time.Second, 82), "") // still above, 30 s
	l.clock.Add(time.Minute)           // 1m30: not yet
	want(l.pass(l.tel, rules), "")
	l.clock.Add(30 * time.Second) // 2m above, no new sample: the value holds
	fired := l.pass(l.tel, rules)
	want(fired, store.TypeAlertFired)
	if !fired[0].Since.Equal(t0.Add(time.Minute)) || fired[0].Value != 82 || fired[0].Seq == 0 {
		t.Fatalf("fired %+v: want since t0+1m, value 82, a sequence", fired[0])
	}
	want(l.pass(l.tel, rules), "")  // fires once
	want(step(time.Minute, 78), "") // in the band: still firing
	want(step(time.Minute, 90), "") // above again: no second fire
	want(step(time.Minute, 75), store.TypeAlertResolved)
	want(l.pass(l.tel, rules), "") // resolves once
	want(step(time.Minute, 79), "")
	// A dip into the band restarts the run: above at +0, band at +1m,
	// above again at +2m; fires 2 min after the last rise.
	want(step(time.Minute, 81), "")
	want(step(time.Minute, 79), "")
	want(step(time.Minute, 81), "")
	want(step(time.Minute, 81), "")
	want(step(time.Minute, 81), store.TypeAlertFired)
	if got := l.alertEvents(); len(got) != 3 {
		t.Fatalf("log holds %d alert events, want 3: %+v", len(got), got)
	}
	if f, err := l.tel.Firing(context.Background()); err != nil || len(f) != 1 || f[0].Rule != rule.Name {
		t.Fatalf("firing = %+v, %v", f, err)
	}
	// Alert events do not make the robot look alive.
	r, err := l.st.Robot(context.Background(), "r1")
	if err != nil || r.Status.LastSeen.After(l.clock.Now()) || r.Status.LastSeen.Before(l.clock.Now()) {
		t.Fatalf("robot last seen %s, want its last telemetry at %s (%v)", r.Status.LastSeen, l.clock.Now(), err)
	}
}

func TestThresholdWithoutDurationAndStaleData(t *testing.T) {
	l := newLab(t, Options{})
	rules := []Rule{DefaultRules().Rules[1]} // disk above 90, at once
	l.report("r1", t0, reading{disk: 95})
	l.report("r2", t0.Add(-20*time.Minute), reading{disk: 99}) // stale: the robot went quiet
	got := l.pass(l.tel, rules)
	if len(got) != 1 || got[0].RobotID != "r1" || got[0].Metric != Disk || !near(got[0].Value, 95) {
		t.Fatalf("got %+v, want r1's disk alert only", got)
	}
}

func TestOfflineAlert(t *testing.T) {
	l := newLab(t, Options{})
	rules := []Rule{{Name: "offline", Offline: 5 * time.Minute}}
	ctx := context.Background()
	appendEv := func(robot, typ string, at time.Time, data any) {
		t.Helper()
		b, _ := json.Marshal(data)
		if _, err := l.st.Append(ctx, []store.Event{{RobotID: robot, Type: typ, Time: at, Data: b}}); err != nil {
			t.Fatal(err)
		}
	}
	appendEv("r1", store.TypeRobotConnected, t0, store.ConnectedData{Node: "n1", Session: "s1"})
	appendEv("r1", store.TypeRobotOffline, t0.Add(2*time.Minute), store.OfflineData{LastSeen: t0})
	appendEv("never", store.TypeRobotRegistered, t0, store.RegisteredData{}) // never online: not watched
	l.clock.t = t0.Add(4 * time.Minute)
	if got := l.pass(l.tel, rules); len(got) != 0 {
		t.Fatalf("offline 4 min: %+v", got)
	}
	l.clock.t = t0.Add(5 * time.Minute)
	got := l.pass(l.tel, rules)
	if len(got) != 1 || got[0].Type != store.TypeAlertFired || got[0].RobotID != "r1" || !got[0].Since.Equal(t0) {
		t.Fatalf("offline 5 min: %+v", got)
	}
	l.clock.Add(time.Minute)
	if got := l.pass(l.tel, rules); len(got) != 0 {
		t.Fatalf("second pass: %+v", got)
	}
	appendEv("r1", store.TypeRobotConnected, l.clock.Now(), store.ConnectedData{Node: "n1", Session: "s2"})
	got = l.pass(l.tel, rules)
	if len(got) != 1 || got[0].Type != store.TypeAlertResolved || !got[0].FiredAt.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("back online: %+v", got)
	}
}

// Two nodes evaluating at once (the old leader not yet aware it lost)
// fire and resolve each alert once.
func TestAlertsOnceAcrossNodes(t *testing.T) {
	l := newLab(t, Options{})
	rules := []Rule{DefaultRules().Rules[1]}
	for i := range 20 {
		l.report(robotName(i), t0, reading{disk: 95})
	}
	l.ingest(l.tel)
	nodes := []*Store{l.tel, l.another(Options{}), l.another(Options{})}
	run := func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := n.EvaluateAlerts(context.Background(), rules); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	run()
	l.clock.Add(time.Minute)
	for i := range 20 {
		l.report(robotName(i), l.clock.Now(), reading{disk: 50})
	}
	l.ingest(l.tel)
	run()
	evs := l.alertEvents()
	count := map[string]int{}
	for _, a := range evs {
		count[a.RobotID+" "+a.Type]++
	}
	if len(evs) != 40 {
		t.Fatalf("%d alert events, want 40 (20 fired, 20 resolved): %v", len(evs), count)
	}
	for k, n := range count {
		if n != 1 {
			t.Fatalf("%s recorded %d times", k, n)
		}
	}
}

func robotName(i int) string { return "robot-" + string(rune('a'+i)) }

// The leader runs every threshold rule every pass over the whole fleet:
// the candidates must come from indexes, not a scan of every robot's
// every metric.
func TestCandidatesQueryUsesIndexes(t *testing.T) {
	l := newLab(t, Options{})
	all, err := queryplantest.Explain(context.Background(), l.st.DB(), candidatesQuery, string(Temperature), 80.0, "temperature-high")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(all, "telemetry_latest_by_value (metric=? AND value>?)") || strings.Contains(all, "SCAN l") || strings.Contains(all, "SCAN telemetry_latest") {
		t.Fatalf("candidates plan %q: want a range of telemetry_latest_by_value and lookups by key", all)
	}
}
