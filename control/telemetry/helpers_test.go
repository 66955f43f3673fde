package telemetry

import (
	"context"
	"encoding/json"
	"math"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// t0 is a round hour, so bucket arithmetic in tests is easy to follow.
var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

type lab struct {
	t     *testing.T
	st    *store.Store
	clock *clock
	tel   *Store
	sent  []Sample // every sample appended, for recomputation
}

func newLab(t *testing.T, o Options) *lab {
	t.Helper()
	st := storetest.Open(t)
	c := &clock{t: t0}
	o.Now = c.Now
	o.Logger = storetest.Logger()
	tel, err := New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return &lab{t: t, st: st, clock: c, tel: tel}
}

// another is a second telemetry store on the same database: another node,
// or the same node after a restart.
func (l *lab) another(o Options) *Store {
	o.Now = l.clock.Now
	o.Logger = storetest.Logger()
	tel, err := New(l.st, o)
	if err != nil {
		l.t.Fatal(err)
	}
	return tel
}

type reading struct {
	cpu, mem, disk float64
	temp           *float64
}

func temp(v float64) *float64 { return &v }

// report appends one TelemetryReported event measured at `at`.
func (l *lab) report(robot string, at time.Time, r reading) {
	l.t.Helper()
	tel := protocol.Telemetry{Resources: protocol.Resources{
		CPUPercent:      r.cpu,
		MemoryUsedBytes: uint64(r.mem * 10), MemoryTotalBytes: 1000,
		DiskUsedBytes: uint64(r.disk * 10), DiskTotalBytes: 1000,
		TemperatureC: r.temp,
	}}
	data, _ := json.Marshal(tel)
	e := store.Event{RobotID: robot, Type: store.TypeTelemetryReported, Time: at, RobotTime: at, Data: data}
	if _, err := l.st.Append(context.Background(), []store.Event{e}); err != nil {
		l.t.Fatal(err)
	}
	samples, err := SamplesOf(e)
	if err != nil {
		l.t.Fatal(err)
	}
	l.sent = append(l.sent, samples...)
}

func (l *lab) ingest(tel *Store) IngestReport {
	l.t.Helper()
	rep, err := tel.Ingest(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	return rep
}

type aggRow struct {
	robot  string
	metric Metric
	bucket int64
	count  int64
	sum    float64
	min    float64
	max    float64
}

func (l *lab) table(name string) []aggRow {
	l.t.Helper()
	rows, err := l.st.DB().Query(`SELECT robot_id, metric, bucket, count, sum, min, max FROM ` + name + ` ORDER BY robot_id, metric, bucket`)
	if err != nil {
		l.t.Fatal(err)
	}
	defer rows.Close()
	var out []aggRow
	for rows.Next() {
		var r aggRow
		if err := rows.Scan(&r.robot, &r.metric, &r.bucket, &r.count, &r.sum, &r.min, &r.max); err != nil {
			l.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// recompute aggregates samples no older than keep (as of now) into
// buckets of width, the way the tables should hold them.
func recompute(samples []Sample, width time.Duration, now time.Time, keep time.Duration) []aggRow {
	m := map[bucketKey]*agg{}
	for _, s := range samples {
		if s.Time.Before(now.Add(-keep)) {
			continue
		}
		k := bucketKey{seriesKey{s.RobotID, s.Metric}, bucketOf(s.Time.UnixNano(), width)}
		if m[k] == nil {
			m[k] = &agg{}
		}
		m[k].add(s.Value)
	}
	var out []aggRow
	for k, a := range m {
		out = append(out, aggRow{k.robot, k.metric, k.bucket, a.count, a.sum, a.min, a.max})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.robot != b.robot {
			return a.robot < b.robot
		}
		if a.metric != b.metric {
			return a.metric < b.metric
		}
		return a.bucket < b.bucket
	})
	return out
}

func sameRows(t *testing.T, what string, got, want []aggRow) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.robot != w.robot || g.metric != w.metric || g.bucket != w.bucket || g.count != w.count ||
			!near(g.sum, w.sum) || g.min != w.min || g.max != w.max {
			t.Fatalf("%s row %d = %+v, want %+v", what, i, g, w)
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
