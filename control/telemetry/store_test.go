package telemetry

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// feed appends n readings per robot, one every `every`, starting at from,
// with seeded random values, ingesting after every `ingestEvery` events.
func (l *lab) feed(tel *Store, robots []string, from time.Time, every time.Duration, n int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range n {
		at := from.Add(time.Duration(i) * every)
		for _, r := range robots {
			rd := reading{cpu: float64(rng.IntN(1000)) / 10, mem: float64(rng.IntN(100)), disk: float64(rng.IntN(100))}
			if r != "no-sensor" {
				rd.temp = temp(40 + float64(rng.IntN(400))/10)
			}
			l.report(r, at, rd)
		}
	}
}

func TestDownsamplingEqualsRecomputation(t *testing.T) {
	l := newLab(t, Options{IngestBatch: 7}) // odd batches cut across buckets
	robots := []string{"lekiwi-a", "lekiwi-b", "no-sensor"}
	// Two and a half hours of readings every 20 s, ingested as they come
	// in, in several passes.
	for part := range 5 {
		from := t0.Add(time.Duration(part) * 30 * time.Minute)
		l.clock.t = from
		l.feed(l.tel, robots, from, 20*time.Second, 90, uint64(part))
		l.clock.t = from.Add(30 * time.Minute)
		rep := l.ingest(l.tel)
		if !rep.CaughtUp || rep.Events != 90*len(robots) {
			t.Fatalf("pass %d: %+v, want %d events and caught up", part, rep, 90*len(robots))
		}
	}
	now := l.clock.Now()
	sameRows(t, "1m aggregates", l.table("telemetry_1m"), recompute(l.sent, time.Minute, now, 7*24*time.Hour))
	sameRows(t, "1h aggregates", l.table("telemetry_1h"), recompute(l.sent, time.Hour, now, 90*24*time.Hour))
	// The no-sensor robot has no temperature series at all.
	for _, r := range l.table("telemetry_1h") {
		if r.robot == "no-sensor" && r.metric == Temperature {
			t.Fatalf("temperature row for a robot without a sensor: %+v", r)
		}
	}
	// The latest value per series is the last reading.
	var v float64
	if err := l.st.DB().QueryRow(`SELECT value FROM telemetry_latest WHERE robot_id = 'lekiwi-b' AND metric = 'cpu'`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	var want float64
	for _, s := range l.sent {
		if s.RobotID == "lekiwi-b" && s.Metric == CPU {
			want = s.Value
		}
	}
	if v != want {
		t.Fatalf("latest cpu of lekiwi-b = %v, want %v", v, want)
	}
}

// A failover in every shape: the new leader starts from the cursor; a
// write that committed but whose caller saw an error is not repeated;
// two nodes ingesting at once (a deposed leader still running) do not
// double count.
func TestRollupIdempotentAcrossFailover(t *testing.T) {
	l := newLab(t, Options{IngestBatch: 5})
	robots := []string{"r1", "r2"}
	l.feed(l.tel, robots, t0, 15*time.Second, 40, 1)
	l.clock.t = t0.Add(10 * time.Minute)
	// The leader commits its first batch, then loses its connection
	// before hearing back: it sees an error.
	lost := errors.New("leader lost before the commit was confirmed")
	calls := 0
	flaky := l.another(Options{IngestBatch: 5, Submit: func(ctx context.Context, w func(context.Context) error) error {
		calls++
		if err := w(ctx); err != nil {
			return err
		}
		if calls == 2 {
			return lost
		}
		return nil
	}})
	if _, err := flaky.Ingest(context.Background()); !errors.Is(err, lost) {
		t.Fatalf("flaky ingest: %v, want the lost commit", err)
	}
	// A new leader (another node) takes over from the committed cursor.
	l.ingest(l.another(Options{IngestBatch: 5}))
	// More readings; now two nodes ingest at the same time.
	l.feed(l.tel, robots, t0.Add(10*time.Minute), 15*time.Second, 40, 2)
	l.clock.t = t0.Add(20 * time.Minute)
	a, b := l.another(Options{IngestBatch: 3}), l.another(Options{IngestBatch: 4})
	var wg sync.WaitGroup
	for _, tel := range []*Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 { // until one of them caught up
				rep, err := tel.Ingest(context.Background())
				if err == nil && rep.CaughtUp {
					return
				}
				if err != nil && !errors.Is(err, errCursorMoved) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	l.ingest(l.tel)
	now := l.clock.Now()
	sameRows(t, "1m aggregates", l.table("telemetry_1m"), recompute(l.sent, time.Minute, now, 7*24*time.Hour))
	sameRows(t, "1h aggregates", l.table("telemetry_1h"), recompute(l.sent, time.Hour, now, 90*24*time.Hour))
	var raw int
	if err := l.st.DB().QueryRow(`SELECT count(*) FROM telemetry_raw`).Scan(&raw); err != nil || raw != len(l.sent) {
		t.Fatalf("raw samples = %d, %v; want %d (each exactly once)", raw, err, len(l.sent))
	}
}

func TestPruneByAge(t *testing.T) {
	l := newLab(t, Options{PruneBatch: 10})
	// One reading every 10 minutes over 100 days, ingested as it arrives
	// (the clock follows), so each age band gets rows.
	start := t0.Add(-100 * 24 * time.Hour)
	for at := start; !at.After(t0); at = at.Add(6 * time.Hour) {
		l.clock.t = at
		l.report("r1", at, reading{cpu: 50, mem: 50, disk: 50})
		l.ingest(l.tel)
	}
	for at := t0.Add(-3 * time.Hour); !at.After(t0); at = at.Add(10 * time.Minute) {
		l.clock.t = at
		l.report("r1", at, reading{cpu: 10, mem: 10, disk: 10})
		l.ingest(l.tel)
	}
	l.clock.t = t0
	rep, err := l.tel.Prune(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Truncated || rep.Raw == 0 || rep.Minute == 0 || rep.Hour == 0 {
		t.Fatalf("prune report %+v: want rows of every table deleted", rep)
	}
	check := func(table, col string, keep time.Duration, width time.Duration) {
		var oldest int64
		if err := l.st.DB().QueryRow(`SELECT min(` + col + `) FROM ` + table).Scan(&oldest); err != nil {
			t.Fatal(err)
		}
		if limit := t0.Add(-keep - width).UnixNano(); oldest < limit {
			t.Errorf("%s keeps %s, older than %s", table, time.Unix(0, oldest).UTC(), time.Unix(0, limit).UTC())
		}
		// Whatever is young enough stayed.
		var kept int
		if err := l.st.DB().QueryRow(`SELECT count(*) FROM `+table+` WHERE `+col+` >= ?`, t0.Add(-keep).UnixNano()).Scan(&kept); err != nil || kept == 0 {
			t.Errorf("%s: %d young rows kept, %v", table, kept, err)
		}
	}
	check("telemetry_raw", "t", time.Hour, 0)
	check("telemetry_1m", "bucket", 7*24*time.Hour, time.Minute)
	check("telemetry_1h", "bucket", 90*24*time.Hour, time.Hour)
	// A second run finds nothing; a bounded run says when it stopped.
	if rep, err := l.tel.Prune(context.Background(), 0); err != nil || rep.Raw+rep.Minute+rep.Hour != 0 {
		t.Fatalf("second prune: %+v, %v", rep, err)
	}
	l.clock.Add(100 * 24 * time.Hour)
	if rep, err := l.tel.Prune(context.Background(), 15); err != nil || !rep.Truncated || rep.Raw+rep.Minute+rep.Hour != 15 {
		t.Fatalf("bounded prune: %+v, %v; want 15 rows and truncated", rep, err)
	}
}
