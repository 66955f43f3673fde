package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// appendAll appends events in transactions of MaxAppendBatch.
func appendAll(t testing.TB, s *Store, evs []Event) {
	t.Helper()
	for len(evs) > 0 {
		n := min(len(evs), MaxAppendBatch)
		if _, err := s.Append(context.Background(), evs[:n]); err != nil {
			t.Fatal(err)
		}
		evs = evs[n:]
	}
}

func telemetry(t testing.TB, robot string, at time.Time, os string, pad int) Event {
	t.Helper()
	temp := 48.5
	d := protocol.Telemetry{
		Network:       protocol.Network{Hostname: robot, MAC: "2c:cf:67:00:00:01", IPs: []string{"10.0.3.42", "fe80::2ecf:67ff:fe00:1"}},
		Resources:     protocol.Resources{CPUPercent: float64(at.Unix() % 100), MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 8 << 30, DiskUsedBytes: 9 << 30, DiskTotalBytes: 64 << 30, TemperatureC: &temp},
		OSVersion:     os,
		UptimeSeconds: float64(at.Unix() % 100000),
	}
	if pad > 0 {
		d.Network.Hostname = robot + "-" + strings.Repeat("x", pad)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return Event{RobotID: robot, Type: TypeTelemetryReported, Time: at, Data: b, Actor: "robot:" + robot}
}

func connected(t testing.TB, robot, session string, at time.Time, os string) Event {
	return Event{RobotID: robot, Type: TypeRobotConnected, Time: at, Actor: "robot:" + robot, CorrelationID: session,
		Data: mustJSON(t.(*testing.T), ConnectedData{Session: session, Node: "n1", AgentVersion: "1.0", OSVersion: os, Type: protocol.RobotLeKiwi})}
}

// telemetryTimes lists a robot's telemetry (seq, time) in seq order.
func telemetryRows(t *testing.T, s *Store, robot string) []telemetryRow {
	t.Helper()
	rows, err := s.telemetryOf(context.Background(), robot)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func countOtherEvents(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.DB().QueryRow(`SELECT count(*) FROM events WHERE type != ?`, TypeTelemetryReported).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkTiers holds the kept telemetry to the policy: all of the first
// tier, at most one per bucket in the others (besides the robot's
// protected events: latest, newest by time, latest naming an OS), every
// bucket that had telemetry still has some, and nothing older than the
// last tier but protected events.
func checkTiers(t *testing.T, before, after []telemetryRow, now time.Time, p RetentionPolicy) {
	t.Helper()
	tierOf := func(r telemetryRow) int {
		age := time.Duration(now.UnixNano() - r.time)
		for i, tier := range p.Tiers {
			if age < tier.Age {
				return i
			}
		}
		return -1
	}
	prot := map[int64]bool{before[len(before)-1].seq: true}
	newest, lastOS := before[0], int64(0)
	for _, r := range before {
		if r.time >= newest.time {
			newest = r
		}
		if r.hasOS {
			lastOS = r.seq
		}
	}
	prot[newest.seq], prot[lastOS] = true, true
	kept := map[int64]bool{}
	for _, r := range after {
		kept[r.seq] = true
	}
	type bucket struct {
		tier int
		n    int64
	}
	had, plain, any := map[bucket]bool{}, map[bucket]int{}, map[bucket]bool{}
	for _, r := range before {
		tier := tierOf(r)
		switch {
		case prot[r.seq] && !kept[r.seq]:
			t.Fatalf("protected event %d was deleted", r.seq)
		case tier == 0 && !kept[r.seq]:
			t.Fatalf("event %d of the first tier was deleted", r.seq)
		case tier < 0 && kept[r.seq] && !prot[r.seq]:
			t.Fatalf("event %d older than the last tier was kept", r.seq)
		case tier > 0:
			b := bucket{tier, floorDiv(r.time, int64(p.Tiers[tier].Every))}
			had[b] = true
			if kept[r.seq] {
				any[b] = true
				if !prot[r.seq] {
					plain[b]++
				}
			}
		}
	}
	for b, n := range plain {
		if n > 1 {
			t.Fatalf("tier %d bucket %d keeps %d events", b.tier, b.n, n)
		}
	}
	for b := range had {
		if !any[b] {
			t.Fatalf("tier %d bucket %d lost all its events", b.tier, b.n)
		}
	}
}

func TestCompactTelemetryTiers(t *testing.T) {
	now := t0.Add(40 * 24 * time.Hour)
	policy := DefaultRetentionPolicy()
	tests := []struct {
		name   string
		events func(t *testing.T) []Event
		// wantKept is the telemetry the robot keeps (-1: only checkTiers).
		wantKept int
		check    func(t *testing.T, before, after []telemetryRow)
	}{
		{"steady robot, every 5 minutes for 32 days", func(t *testing.T) []Event {
			evs := []Event{connected(t, "kiwi", "s1", now.Add(-32*24*time.Hour), "Debian 12")}
			for at := now.Add(-32 * 24 * time.Hour); at.Before(now); at = at.Add(5 * time.Minute) {
				evs = append(evs, telemetry(t, "kiwi", at, "Debian 12", 0))
			}
			return evs
		}, -1, func(t *testing.T, before, after []telemetryRow) {
			// 11 in the last hour, about 6 an hour for a day, 1 an hour
			// for 29 days; checkTiers holds the exact buckets.
			if len(after) < 11+23*6+29*24 || len(after) > 11+24*6+30*24 {
				t.Fatalf("kept %d", len(after))
			}
		}},
		{"robot silent for 40 days keeps only its latest", func(t *testing.T) []Event {
			evs := []Event{connected(t, "kiwi", "s1", now.Add(-45*24*time.Hour), "Debian 12")}
			for at := now.Add(-45 * 24 * time.Hour); at.Before(now.Add(-40 * 24 * time.Hour)); at = at.Add(7 * time.Minute) {
				evs = append(evs, telemetry(t, "kiwi", at, "Debian 12", 0))
			}
			return append(evs, Event{RobotID: "kiwi", Type: TypeRobotOffline, Time: now.Add(-40 * 24 * time.Hour), Data: mustJSON(t, OfflineData{})})
		}, 1, func(t *testing.T, before, after []telemetryRow) {
			if after[0].seq != before[len(before)-1].seq {
				t.Fatalf("kept %d, not the latest %d", after[0].seq, before[len(before)-1].seq)
			}
		}},
		{"clock skew: an older event has the newest time", func(t *testing.T) []Event {
			evs := []Event{connected(t, "kiwi", "s1", now.Add(-50*24*time.Hour), "Debian 12")}
			for at := now.Add(-34 * 24 * time.Hour); at.Before(now.Add(-31 * 24 * time.Hour)); at = at.Add(10 * time.Minute) {
				evs = append(evs, telemetry(t, "kiwi", at, "Debian 12", 0))
			}
			// A node with a clock 3 hours fast recorded the one before last.
			return append(evs, telemetry(t, "kiwi", now.Add(-31*24*time.Hour+3*time.Hour), "Debian 12", 0),
				telemetry(t, "kiwi", now.Add(-31*24*time.Hour), "Debian 12", 0))
		}, 2, nil},
		{"OS version named only long ago", func(t *testing.T) []Event {
			evs := []Event{connected(t, "kiwi", "s1", now.Add(-20*24*time.Hour), ""),
				telemetry(t, "kiwi", now.Add(-20*24*time.Hour), "Debian 12", 0)}
			for at := now.Add(-20*24*time.Hour + time.Minute); at.Before(now); at = at.Add(30 * time.Minute) {
				evs = append(evs, telemetry(t, "kiwi", at, "", 0))
			}
			return evs
		}, -1, func(t *testing.T, before, after []telemetryRow) {
			if !after[0].hasOS || after[0].seq != before[0].seq {
				t.Fatalf("the only telemetry naming the OS version was deleted")
			}
		}},
		{"one event", func(t *testing.T) []Event {
			return []Event{connected(t, "kiwi", "s1", now.Add(-90*24*time.Hour), "x"), telemetry(t, "kiwi", now.Add(-90*24*time.Hour), "x", 0)}
		}, 1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openSingle(t)
			ctx := context.Background()
			appendAll(t, s, tc.events(t))
			// A robot with nothing to compact and events of other kinds.
			appendAll(t, s, []Event{connected(t, "other", "s9", now.Add(-100*24*time.Hour), "os"), telemetry(t, "other", now.Add(-99*24*time.Hour), "os", 0)})
			others := countOtherEvents(t, s)
			before := telemetryRows(t, s, "kiwi")
			n, err := s.CompactTelemetry(ctx, now, policy)
			if err != nil {
				t.Fatal(err)
			}
			after := telemetryRows(t, s, "kiwi")
			if n != len(before)-len(after) {
				t.Fatalf("reported %d deleted, %d went", n, len(before)-len(after))
			}
			if tc.wantKept >= 0 && len(after) != tc.wantKept {
				t.Fatalf("kept %d of %d telemetry events, want %d", len(after), len(before), tc.wantKept)
			}
			if after[len(after)-1].seq != before[len(before)-1].seq {
				t.Fatal("the latest telemetry was deleted")
			}
			checkTiers(t, before, after, now, policy)
			if tc.check != nil {
				tc.check(t, before, after)
			}
			if got := countOtherEvents(t, s); got != others {
				t.Fatalf("other events: %d before, %d after", others, got)
			}
			if len(telemetryRows(t, s, "other")) != 1 {
				t.Fatal("the other robot's only telemetry went")
			}
			if mm, err := s.Verify(ctx); err != nil || len(mm) != 0 {
				t.Fatalf("verify after compaction: %v %+v", err, mm)
			}
			// Running again deletes nothing: the buckets nest.
			if n, err := s.CompactTelemetry(ctx, now, policy); err != nil || n != 0 {
				t.Fatalf("second run deleted %d, %v", n, err)
			}
			// An hour later, only what crossed a tier boundary goes.
			later := now.Add(time.Hour)
			before = telemetryRows(t, s, "kiwi")
			if _, err := s.CompactTelemetry(ctx, later, policy); err != nil {
				t.Fatal(err)
			}
			checkTiers(t, before, telemetryRows(t, s, "kiwi"), later, policy)
		})
	}
}

func TestRetentionKeepsTheProjectionOnRandomLogs(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			s := openSingle(t)
			s.log = slog.New(slog.DiscardHandler) // budget warnings expected
			ctx := context.Background()
			start := t0
			var evs []Event
			at := start
			robots := []string{"a", "b", "c", "d", "e"}
			session := map[string]string{}
			for i := range 1500 {
				// Mostly forward, sometimes a skewed node's clock behind.
				at = at.Add(time.Duration(rng.IntN(60)) * time.Minute)
				when := at
				if rng.IntN(10) == 0 {
					when = at.Add(-time.Duration(rng.IntN(120)) * time.Minute)
				}
				r := robots[rng.IntN(len(robots))]
				osv := ""
				if rng.IntN(3) == 0 {
					osv = fmt.Sprint("os-", rng.IntN(4))
				}
				switch k := rng.IntN(20); {
				case k == 0 || session[r] == "":
					session[r] = fmt.Sprint("s", i)
					evs = append(evs, connected(t, r, session[r], when, osv))
				case k == 1:
					evs = append(evs, Event{RobotID: r, Type: TypeRobotDisconnected, Time: when, Data: mustJSON(t, DisconnectedData{Session: session[r]})})
				case k == 2:
					evs = append(evs, Event{RobotID: r, Type: TypeRobotOffline, Time: when, Data: mustJSON(t, OfflineData{})})
				case k == 3:
					evs = append(evs, Event{RobotID: r, Type: TypeRobotEvent, Time: when, Data: mustJSON(t, protocol.Event{Kind: protocol.EventTeleopStarted})})
				default:
					evs = append(evs, telemetry(t, r, when, osv, rng.IntN(300)))
				}
			}
			appendAll(t, s, evs)
			others := countOtherEvents(t, s)
			p := DefaultRetentionPolicy()
			if seed%2 == 0 {
				p.TelemetryBudget = 20 << 10 // force budget thinning too
			}
			for run := range 3 {
				now := at.Add(time.Duration(run) * time.Duration(rng.IntN(48)) * time.Hour)
				rep, err := s.Retain(ctx, now, p)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("run %d: %+v", run, rep)
				if mm, err := s.Verify(ctx); err != nil || len(mm) != 0 {
					t.Fatalf("verify after run %d: %v\n%+v", run, err, mm)
				}
			}
			if countOtherEvents(t, s) != others {
				t.Fatal("retention deleted an event that is not telemetry")
			}
		})
	}
}

func TestTelemetryBudgetThinsOnlyRobotsOverIt(t *testing.T) {
	var logs bytes.Buffer
	s := openNode(t, t.TempDir(), freeAddr(t), nil)
	defer s.Close()
	s.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	now := t0.Add(time.Hour)
	var evs []Event
	for i := range 100 {
		at := t0.Add(time.Duration(i) * 30 * time.Second) // all in the last hour: the tiers keep them all
		evs = append(evs, telemetry(t, "chatty", at, "os", 8000), telemetry(t, "quiet", at, "os", 0))
	}
	appendAll(t, s, evs)
	p := DefaultRetentionPolicy()
	p.TelemetryBudget = 300 << 10
	use := func() map[string]RobotStorage {
		list, err := s.StorageUse(ctx, now.Add(-p.BudgetWindow))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]RobotStorage{}
		for _, u := range list {
			m[u.RobotID] = u
		}
		return m
	}
	if u := use(); u["chatty"].DataBytes < 800<<10 || u["quiet"].DataBytes > 100<<10 {
		t.Fatalf("set-up: %+v", u)
	}
	rep, err := s.Retain(ctx, now, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.OverBudget) != 1 || rep.OverBudget[0].RobotID != "chatty" || rep.BudgetDeleted != 49 || rep.Deleted != 49 {
		t.Fatalf("first run: %+v", rep)
	}
	if !strings.Contains(logs.String(), "over its telemetry budget") || !strings.Contains(logs.String(), "robot=chatty") {
		t.Fatalf("thinning was not logged: %s", logs.String())
	}
	if n := len(telemetryRows(t, s, "quiet")); n != 100 {
		t.Fatalf("quiet robot lost telemetry: %d left", n)
	}
	runs := 1
	for ; len(rep.OverBudget) > 0; runs++ {
		if runs > 5 {
			t.Fatalf("still over budget after %d runs: %+v", runs, use()["chatty"])
		}
		if rep, err = s.Retain(ctx, now, p); err != nil {
			t.Fatal(err)
		}
	}
	if u := use()["chatty"]; u.DataBytes > p.TelemetryBudget {
		t.Fatalf("chatty robot over budget after thinning: %+v", u)
	}
	t.Logf("chatty robot within budget after %d runs: %+v", runs, use()["chatty"])
	if mm, err := s.Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify after thinning: %v %+v", err, mm)
	}
}

func TestRetentionDeletesInBoundedTransactions(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	now := t0.Add(60 * 24 * time.Hour)
	var evs []Event
	for i := range 700 {
		evs = append(evs, telemetry(t, "kiwi", t0.Add(time.Duration(i)*time.Minute), "os", 0))
	}
	appendAll(t, s, evs)
	count := func() int { return len(telemetryRows(t, s, "kiwi")) }
	var sizes []int
	p := DefaultRetentionPolicy()
	p.MaxDeletes = 300
	p.Submit = func(ctx context.Context, write func(context.Context) error) error {
		before := count()
		err := write(ctx)
		sizes = append(sizes, before-count())
		return err
	}
	rep, err := s.Retain(ctx, now, p)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Truncated || rep.Deleted != 300 || count() != 400 {
		t.Fatalf("a run capped at 300 deletes: %+v, %d left", rep, count())
	}
	if slices.Max(sizes) > MaxDeleteBatch || len(sizes) < 300/MaxDeleteBatch {
		t.Fatalf("transactions deleted %v events each; at most %d allowed", sizes, MaxDeleteBatch)
	}
	p.MaxDeletes = 0
	if rep, err = s.Retain(ctx, now, p); err != nil || rep.Truncated || rep.Deleted != 399 || count() != 1 {
		t.Fatalf("second run: %+v %v, %d left", rep, err, count())
	}
}

func TestStorageUseCountsDataPerRobot(t *testing.T) {
	s := openSingle(t)
	ids := seedFleet(t, s, 5)
	list, err := s.StorageUse(context.Background(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]RobotStorage{}
	for _, e := range allEvents(t, s) {
		if e.RobotID == "" {
			continue
		}
		u := want[e.RobotID]
		u.RobotID = e.RobotID
		u.Events++
		u.DataBytes += int64(len(e.Data))
		if e.Type == TypeTelemetryReported {
			u.Telemetry++
			u.TelemetryBytes += int64(len(e.Data))
		}
		want[e.RobotID] = u
	}
	if len(list) != len(want) || len(list) < len(ids) {
		t.Fatalf("%d robots measured, want %d", len(list), len(want))
	}
	for _, u := range list {
		if u != want[u.RobotID] {
			t.Fatalf("%+v, want %+v", u, want[u.RobotID])
		}
	}
}

func TestRetentionPolicyValidation(t *testing.T) {
	tests := []struct {
		name string
		p    RetentionPolicy
		want string
	}{
		{"default", DefaultRetentionPolicy(), ""},
		{"no tiers", RetentionPolicy{}, "at least one tier"},
		{"ages not increasing", RetentionPolicy{Tiers: []RetentionTier{{Age: time.Hour}, {Age: time.Hour}}}, "must be above"},
		{"finer later", RetentionPolicy{Tiers: []RetentionTier{{Age: time.Hour, Every: time.Hour}, {Age: 2 * time.Hour, Every: time.Minute}}}, "finer"},
		{"not nested", RetentionPolicy{Tiers: []RetentionTier{{Age: time.Hour, Every: 10 * time.Minute}, {Age: 2 * time.Hour, Every: 15 * time.Minute}}}, "not a multiple"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("%v; want %q", err, tc.want)
			}
		})
	}
}

// TestSizing measures what a day of a realistic fleet costs in the
// database, which dqlite 1.11 holds in memory on every node. It is slow,
// so it runs only when asked:
//
//	LEKIWI_SIZING=1 LEKIWI_SIZING_ROBOTS=200 go test -tags libsqlite3 -run TestSizing -v ./control/store/
func TestSizing(t *testing.T) {
	if os.Getenv("LEKIWI_SIZING") == "" {
		t.Skip("set LEKIWI_SIZING=1 to measure database size per robot-day")
	}
	robots := 100
	if v, err := strconv.Atoi(os.Getenv("LEKIWI_SIZING_ROBOTS")); err == nil && v > 0 {
		robots = v
	}
	type profile struct {
		name string
		// minutes of the day the robot is busy (telemetry every 15 s on
		// average, debounced changes) and idle (one per 5 min, the
		// agent's maximum interval)
		busyHours float64
	}
	for _, pr := range []profile{{"idle (telemetry every 5 min)", 0}, {"busy 8 h/day (every 15 s while busy)", 8}} {
		t.Run(pr.name, func(t *testing.T) {
			s := openSingle(t)
			ctx := context.Background()
			size := func() (total, used int64) {
				var pages, free, pageSize int64
				db := s.DB()
				db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages)
				db.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free)
				db.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize)
				return pages * pageSize, (pages - free) * pageSize
			}
			_, empty := size()
			day := t0
			var tel, other int
			for r := range robots {
				id := fmt.Sprintf("lekiwi-%04d", r)
				stream := fmt.Sprintf("%016x", r*7919)
				var evs []Event
				var seq uint64
				session := func(k int) string { return fmt.Sprintf("%s-sess-%02d-%08x", id, k, r) }
				// Three reconnects a day, one teleop session, one offline.
				for k := range 4 {
					at := day.Add(time.Duration(k) * 6 * time.Hour)
					evs = append(evs, connected(t, id, session(k), at, "Debian GNU/Linux 12 (bookworm)"))
					if k > 0 {
						evs = append(evs, Event{RobotID: id, Type: TypeRobotDisconnected, Time: at.Add(-time.Second),
							Data: mustJSON(t, DisconnectedData{Session: session(k - 1), Node: "control-a", Reason: "read: connection reset by peer"})})
					}
				}
				for _, kind := range []string{protocol.EventTeleopStarted, protocol.EventTeleopStopped} {
					seq++
					evs = append(evs, Event{RobotID: id, Type: TypeRobotEvent, Time: day.Add(9 * time.Hour), Stream: stream, RobotSeq: seq, RobotTime: day.Add(9 * time.Hour),
						Actor: "robot:" + id, CorrelationID: session(1), Data: mustJSON(t, protocol.Event{Kind: kind, Data: mustJSON(t, protocol.TeleopData{Operator: "alice"})})})
				}
				evs = append(evs, Event{RobotID: id, Type: TypeRobotOffline, Time: day.Add(23 * time.Hour), Data: mustJSON(t, OfflineData{LastSeen: day.Add(23 * time.Hour), Timeout: "1m5s"})})
				other += len(evs)
				busyEnd := day.Add(9*time.Hour + time.Duration(pr.busyHours*float64(time.Hour)))
				for at := day; at.Before(day.Add(24 * time.Hour)); {
					e := telemetry(t, id, at, "Debian GNU/Linux 12 (bookworm)", 0)
					seq++
					e.Stream, e.RobotSeq, e.RobotTime, e.CorrelationID = stream, seq, at, session(int(at.Sub(day)/(6*time.Hour)))
					evs = append(evs, e)
					tel++
					if at.After(day.Add(9*time.Hour)) && at.Before(busyEnd) {
						at = at.Add(15 * time.Second)
					} else {
						at = at.Add(5 * time.Minute)
					}
				}
				slices.SortStableFunc(evs, func(a, b Event) int { return a.Time.Compare(b.Time) })
				appendAll(t, s, evs)
			}
			_, used := size()
			rss0 := rssBytes()
			n := float64(robots)
			row := func(stage string, bytes int64, rss int64) {
				fmt.Printf("| %s | %s | %d | %.0f | %.1f | %.1f |\n", pr.name, stage, robots, float64(bytes-empty)/n/1024, float64(bytes-empty)/(1<<20), float64(rss)/(1<<20))
			}
			fmt.Printf("\n%s: %d events per robot-day (%d telemetry, %d others), %.0f bytes per event in the database\n",
				pr.name, (tel+other)/robots, tel/robots, other/robots, float64(used-empty)/float64(tel+other))
			fmt.Println("| profile | stage | robots | KiB per robot-day | database MiB | RSS outside Go MiB |")
			fmt.Println("|---|---|---|---|---|---|")
			row("raw (last hour: every event kept)", used, rss0)
			// 25 h later the day is (all but its first hour) in the 10-minute
			// tier; 48 h later all of it is in the hourly tier.
			for _, at := range []struct {
				stage string
				now   time.Time
			}{{"one per 10 min", day.Add(24*time.Hour + 59*time.Minute)}, {"one per hour", day.Add(48 * time.Hour)}} {
				if _, err := s.Retain(ctx, at.now, DefaultRetentionPolicy()); err != nil {
					t.Fatal(err)
				}
				_, used := size()
				row(at.stage, used, rssBytes())
			}
			// Pages freed by deletes are reused by new rows, but rows kept
			// stay spread over half-empty pages (no VACUUM: it would be one
			// huge transaction). Refilling shows what a steady state costs.
			total, _ := size()
			fmt.Printf("file %d bytes (%.1f MiB) including free pages\n", total, float64(total)/(1<<20))
		})
	}
}

// rssBytes is this process's resident memory outside the Go runtime's:
// dqlite's (database pages, WAL, raft log entries) and SQLite's, which run
// in this process through cgo.
func rssBytes() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return procRSS() - int64(ms.Sys-ms.HeapReleased)
}

func procRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Retention runs outside any transaction of the writers: appends landing
// while it plans and deletes only supersede what it deletes.
func TestRetainAlongsideLiveAppends(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	now := t0.Add(40 * 24 * time.Hour)
	robots := []string{"a", "b", "c", "d"}
	var evs []Event
	for i := range 2000 {
		r := robots[i%len(robots)]
		if i < len(robots) {
			evs = append(evs, connected(t, r, "s0", t0, "os"))
		}
		evs = append(evs, telemetry(t, r, t0.Add(time.Duration(i)*15*time.Minute), "", 0))
	}
	appendAll(t, s, evs)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		at := now.Add(-30 * time.Minute)
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			r := robots[i%len(robots)]
			osv := ""
			if i%5 == 0 {
				osv = fmt.Sprint("os-", i)
			}
			if _, err := s.Append(ctx, []Event{telemetry(t, r, at.Add(time.Duration(i)*time.Second), osv, 0)}); err != nil {
				done <- err
				return
			}
		}
	}()
	var deleted int
	for range 3 {
		rep, err := s.Retain(ctx, now, DefaultRetentionPolicy())
		if err != nil {
			t.Fatal(err)
		}
		deleted += rep.Deleted
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if deleted == 0 {
		t.Fatal("nothing was compacted")
	}
	if mm, err := s.Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify after retention alongside appends: %v %+v", err, mm)
	}
}
