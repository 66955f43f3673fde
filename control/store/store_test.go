package store

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store/queryplantest"
	"github.com/lekiwi/heartbeat/protocol"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openNode(t *testing.T, dir, addr string, join []string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Open(ctx, Options{Dir: dir, Address: addr, Join: join, Logger: quietLogger(), RolesAdjustment: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("open store %s: %v", addr, err)
	}
	return s
}

func openSingle(t *testing.T) *Store {
	t.Helper()
	s := openNode(t, t.TempDir(), freeAddr(t), nil)
	t.Cleanup(func() { s.Close() })
	return s
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func TestMigrationsIdempotentAcrossRestart(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	s := openNode(t, dir, addr, nil)
	ctx := context.Background()
	if _, err := s.Append(ctx, []Event{{RobotID: "r1", Type: TypeRobotRegistered, Time: t0, Data: mustJSON(t, RegisteredData{Type: protocol.RobotLeKiwi})}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openNode(t, dir, addr, nil)
	defer s.Close()
	v, err := s.SchemaVersion(ctx)
	if err != nil || v != len(migrations) {
		t.Fatalf("schema version = %d, %v; want %d", v, err, len(migrations))
	}
	var n int
	if err := s.DB().QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(migrations) {
		t.Fatalf("schema_migrations rows = %d, %v; want %d", n, err, len(migrations))
	}
	r, err := s.Robot(ctx, "r1")
	if err != nil || r.Type != protocol.RobotLeKiwi {
		t.Fatalf("robot survived restart: %+v, %v", r, err)
	}
}

func TestAppendDropsDuplicatesByRobotStreamSequence(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	ev := func(robot, stream string, seq uint64) Event {
		return Event{RobotID: robot, Type: TypeRobotEvent, Time: t0, Stream: stream, RobotSeq: seq,
			Data: mustJSON(t, protocol.Event{Kind: "test"})}
	}
	res, err := s.Append(ctx, []Event{ev("r1", "a", 1), ev("r1", "a", 2), ev("r2", "a", 1), ev("r1", "b", 1)})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Duplicate || r.Seq == 0 {
			t.Fatalf("event %d: %+v, want stored", i, r)
		}
	}
	res, err = s.Append(ctx, []Event{ev("r1", "a", 2), ev("r1", "a", 3), ev("r1", "a", 1)})
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, true}
	for i, r := range res {
		if r.Duplicate != want[i] {
			t.Fatalf("event %d duplicate = %v, want %v", i, r.Duplicate, want[i])
		}
	}
	evs, err := s.Events(ctx, 0, 100, "r1")
	if err != nil || len(evs) != 4 {
		t.Fatalf("r1 events = %d, %v; want 4", len(evs), err)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq <= evs[i-1].Seq {
			t.Fatalf("events not in sequence order: %d after %d", evs[i].Seq, evs[i-1].Seq)
		}
	}
}

func TestAppendRejectsBadEvents(t *testing.T) {
	s := openSingle(t)
	for name, e := range map[string]Event{
		"no type":          {RobotID: "r1", Time: t0},
		"no time":          {RobotID: "r1", Type: TypeRobotEvent},
		"bad json":         {RobotID: "r1", Type: TypeRobotEvent, Time: t0, Data: json.RawMessage("{")},
		"stream no seq":    {RobotID: "r1", Type: TypeRobotEvent, Time: t0, Stream: "x"},
		"malformed for r1": {RobotID: "r1", Type: TypeRobotConnected, Time: t0, Data: json.RawMessage(`{"session": 5}`)},
	} {
		if _, err := s.Append(context.Background(), []Event{e}); err == nil {
			t.Errorf("%s: append succeeded, want error", name)
		}
	}
	// A failed batch leaves nothing behind.
	if n, err := s.LastSeq(context.Background()); err != nil || n != 0 {
		t.Fatalf("last seq after failed appends = %d, %v; want 0", n, err)
	}
}

func TestApply(t *testing.T) {
	temp := 51.5
	tests := []struct {
		name   string
		events []Event
		check  func(t *testing.T, r Robot)
	}{
		{"registered robot starts offline", []Event{
			{Type: TypeRobotRegistered, Data: mustJSON(t, RegisteredData{Type: protocol.RobotXLE, Hardware: protocol.Hardware{Serial: "abc"}})},
		}, func(t *testing.T, r Robot) {
			if r.Status.State != StateOffline || r.Type != protocol.RobotXLE || r.Hardware.Serial != "abc" || !r.RegisteredAt.Equal(t0.Add(time.Second)) {
				t.Fatalf("%+v", r)
			}
		}},
		{"connect sets online and versions", []Event{
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s1", Node: "n1", AgentVersion: "1.2", OSVersion: "Debian 12"})},
		}, func(t *testing.T, r Robot) {
			if r.Status.State != StateOnline || !r.Status.Connected || r.Status.Session != "s1" || r.Deployment.AgentVersion != "1.2" {
				t.Fatalf("%+v", r)
			}
		}},
		{"hello names the image; a hello without one clears it", []Event{
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s1", AgentVersion: "1.2", Image: &protocol.ImageInfo{Version: "2026.11.2", Profile: "lekiwi", Created: t0, Seed: "5b1e"}})},
			{Type: TypeTelemetryReported, Data: mustJSON(t, protocol.Telemetry{OSVersion: "os2"})},
		}, func(t *testing.T, r Robot) {
			if img := r.Deployment.Image; img == nil || img.Version != "2026.11.2" || img.Profile != "lekiwi" || !img.Created.Equal(t0) || img.Seed != "5b1e" || r.Deployment.OSVersion != "os2" {
				t.Fatalf("deployment %+v image %+v", r.Deployment, r.Deployment.Image)
			}
			var after Robot
			after = r
			if err := Apply(&after, Event{Seq: 9, RobotID: r.ID, Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: "s2", AgentVersion: "1.1"})}); err != nil {
				t.Fatal(err)
			}
			if after.Deployment.Image != nil || after.Deployment.AgentVersion != "1.1" {
				t.Fatalf("after a hello without image: %+v", after.Deployment)
			}
		}},
		{"stale disconnect keeps newer session", []Event{
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s1"})},
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s2"})},
			{Type: TypeRobotDisconnected, Data: mustJSON(t, DisconnectedData{Session: "s1"})},
		}, func(t *testing.T, r Robot) {
			if !r.Status.Connected || r.Status.Session != "s2" || r.Status.State != StateOnline {
				t.Fatalf("%+v", r.Status)
			}
		}},
		{"disconnect keeps online until offline", []Event{
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s1"})},
			{Type: TypeRobotDisconnected, Data: mustJSON(t, DisconnectedData{Session: "s1"})},
		}, func(t *testing.T, r Robot) {
			if r.Status.Connected || r.Status.State != StateOnline {
				t.Fatalf("%+v", r.Status)
			}
		}},
		{"offline ends teleop and keeps last seen", []Event{
			{Type: TypeRobotConnected, Data: mustJSON(t, ConnectedData{Session: "s1"})},
			{Type: TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: protocol.EventTeleopStarted, Data: mustJSON(t, protocol.TeleopData{Operator: "alice"})})},
			{Type: TypeRobotOffline, Data: mustJSON(t, OfflineData{})},
		}, func(t *testing.T, r Robot) {
			if r.Status.State != StateOffline || r.Teleoperation.Active || !r.Status.LastSeen.Equal(t0.Add(2*time.Second)) {
				t.Fatalf("%+v %+v", r.Status, r.Teleoperation)
			}
		}},
		{"teleop start and stop", []Event{
			{Type: TypeRobotEvent, Data: mustJSON(t, protocol.Event{Kind: protocol.EventTeleopStarted, Data: mustJSON(t, protocol.TeleopData{Operator: "bob"})})},
		}, func(t *testing.T, r Robot) {
			if !r.Teleoperation.Active || r.Teleoperation.Operator != "bob" || !r.Teleoperation.SessionStart.Equal(t0.Add(time.Second)) {
				t.Fatalf("%+v", r.Teleoperation)
			}
		}},
		{"telemetry fills network and resources", []Event{
			{Type: TypeTelemetryReported, Data: mustJSON(t, protocol.Telemetry{Network: protocol.Network{Hostname: "kiwi"}, Resources: protocol.Resources{CPUPercent: 12, TemperatureC: &temp}, UptimeSeconds: 99, OSVersion: "os2"})},
		}, func(t *testing.T, r Robot) {
			if r.Network.Hostname != "kiwi" || r.Resources.CPUPercent != 12 || *r.Resources.TemperatureC != temp || r.Status.UptimeSeconds != 99 || r.Deployment.OSVersion != "os2" {
				t.Fatalf("%+v", r)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Robot
			for i, e := range tc.events {
				e.RobotID, e.Seq, e.Time = "r1", int64(i+1), t0.Add(time.Duration(i+1)*time.Second)
				if err := Apply(&r, e); err != nil {
					t.Fatal(err)
				}
			}
			if r.ID != "r1" || r.Version != int64(len(tc.events)) {
				t.Fatalf("id/version = %s/%d", r.ID, r.Version)
			}
			tc.check(t, r)
		})
	}
}

func TestPresenceAndOfflineSweep(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	for _, id := range []string{"r1", "r2", "r3"} {
		if _, err := s.Append(ctx, []Event{{RobotID: id, Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: id})}}); err != nil {
			t.Fatal(err)
		}
	}
	// r1 heartbeats recently, r2 long ago, r3 never after connecting.
	if err := s.FlushPresence(ctx, []Presence{
		{RobotID: "r1", Node: "n", LastSeen: t0.Add(time.Minute), UptimeSeconds: 60},
		{RobotID: "r2", Node: "n", LastSeen: t0.Add(10 * time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	// A late flush with an older time must not move r1 backwards.
	if err := s.FlushPresence(ctx, []Presence{{RobotID: "r1", Node: "old", LastSeen: t0}}); err != nil {
		t.Fatal(err)
	}
	gone, err := s.SweepOffline(ctx, t0.Add(30*time.Second), t0.Add(70*time.Second), 45*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(gone) != "[r2 r3]" {
		t.Fatalf("swept %v, want [r2 r3]", gone)
	}
	again, err := s.SweepOffline(ctx, t0.Add(30*time.Second), t0.Add(71*time.Second), 45*time.Second)
	if err != nil || len(again) != 0 {
		t.Fatalf("second sweep = %v, %v; want nothing", again, err)
	}
	r1, err := s.Robot(ctx, "r1")
	if err != nil || r1.Status.State != StateOnline || !r1.Status.LastSeen.Equal(t0.Add(time.Minute)) || r1.Status.UptimeSeconds != 60 {
		t.Fatalf("r1 = %+v, %v", r1.Status, err)
	}
	n, err := s.CountRobots(ctx, StateOffline)
	if err != nil || n != 2 {
		t.Fatalf("offline count = %d, %v", n, err)
	}
	evs, err := s.Events(ctx, 0, 100, "r2")
	if err != nil || len(evs) != 3 || evs[0].Type != TypeRobotRegistered || evs[2].Type != TypeRobotOffline {
		t.Fatalf("r2 events = %+v, %v", evs, err)
	}
}

func TestRebuildEqualsLiveAndRepairs(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	var batch []Event
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("r%d", i%7)
		ts := t0.Add(time.Duration(i) * time.Second)
		switch i % 5 {
		case 0:
			batch = append(batch, Event{RobotID: id, Type: TypeRobotConnected, Time: ts, Data: mustJSON(t, ConnectedData{Session: fmt.Sprint(i)})})
		case 1:
			batch = append(batch, Event{RobotID: id, Type: TypeTelemetryReported, Time: ts, Data: mustJSON(t, protocol.Telemetry{Resources: protocol.Resources{CPUPercent: float64(i)}})})
		case 2:
			batch = append(batch, Event{RobotID: id, Type: TypeRobotEvent, Time: ts, Stream: "s", RobotSeq: uint64(i), Data: mustJSON(t, protocol.Event{Kind: protocol.EventTeleopStarted})})
		case 3:
			batch = append(batch, Event{RobotID: id, Type: TypeRobotDisconnected, Time: ts, Data: mustJSON(t, DisconnectedData{Session: fmt.Sprint(i - 3)})})
		case 4:
			batch = append(batch, Event{RobotID: id, Type: TypeRobotOffline, Time: ts, Data: mustJSON(t, OfflineData{})})
		}
		if len(batch) == 3 {
			if _, err := s.Append(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	if _, err := s.Append(ctx, batch); err != nil {
		t.Fatal(err)
	}
	mm, err := s.Verify(ctx)
	if err != nil || len(mm) != 0 {
		t.Fatalf("verify: %v, mismatches %+v", err, mm)
	}
	// Corrupt the live projection: Verify must notice, RebuildInPlace repair.
	if _, err := s.DB().ExecContext(ctx, `UPDATE robots SET doc = json_set(doc, '$.type', 'xle') WHERE id = 'r3'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DB().ExecContext(ctx, `INSERT INTO robots (id, type, status, doc, version) VALUES ('ghost', 'xle', 'online', '{}', 0)`); err != nil {
		t.Fatal(err)
	}
	mm, err = s.Verify(ctx)
	if err != nil || len(mm) != 2 || mm[0].RobotID != "ghost" || mm[1].RobotID != "r3" {
		t.Fatalf("verify after corruption: %v, %+v", err, mm)
	}
	if n, err := s.RebuildInPlace(ctx); err != nil || n != 7 {
		t.Fatalf("rebuild in place = %d, %v", n, err)
	}
	if mm, err = s.Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify after repair: %v, %+v", err, mm)
	}
}

func TestThreeNodeClusterReplicates(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	base := t.TempDir()
	a1, a2, a3 := freeAddr(t), freeAddr(t), freeAddr(t)
	n1 := openNode(t, filepath.Join(base, "1"), a1, nil)
	n2 := openNode(t, filepath.Join(base, "2"), a2, []string{a1})
	n3 := openNode(t, filepath.Join(base, "3"), a3, []string{a1, a2})
	nodes := []*Store{n1, n2, n3}
	defer func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			nodes[i].Close()
		}
	}()
	ctx := context.Background()
	if _, err := n2.Append(ctx, []Event{{RobotID: "via-n2", Type: TypeRobotRegistered, Time: t0, Data: mustJSON(t, RegisteredData{Type: protocol.RobotXLE})}}); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		r, err := n.Robot(ctx, "via-n2")
		if err != nil || r.Type != protocol.RobotXLE {
			t.Fatalf("node %d reads %+v, %v", i+1, r, err)
		}
	}
	// All three become voters once roles are adjusted.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, members, err := n1.Cluster(ctx)
		voters := 0
		for _, m := range members {
			if m.Role == "voter" {
				voters++
			}
		}
		if err == nil && voters == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members %+v, %v: want 3 voters", members, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestPresenceFlushBeyondOneStatementAndOfflineAmong(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	var batch []Presence
	var ids []string
	for i := 0; i < 700; i++ { // several statements' worth of parameters
		id := fmt.Sprintf("r%03d", i)
		ids = append(ids, id)
		batch = append(batch, Presence{RobotID: id, Node: "n", LastSeen: t0.Add(time.Duration(i) * time.Millisecond)})
		st := TypeRobotConnected
		if i%100 == 0 {
			st = TypeRobotOffline
		}
		if _, err := s.Append(ctx, []Event{{RobotID: id, Type: st, Time: t0, Data: mustJSON(t, ConnectedData{Session: id})}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.FlushPresence(ctx, batch); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.DB().QueryRowContext(ctx, `SELECT count(*) FROM presence`).Scan(&n); err != nil || n != 700 {
		t.Fatalf("presence rows = %d, %v", n, err)
	}
	off, err := s.OfflineAmong(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(off) != 7 {
		t.Fatalf("offline among = %v, want the 7 ids that are multiples of 100", off)
	}
}

func TestFirstConnectRegistersOnce(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	conn := func(session string) Event {
		return Event{RobotID: "new-1", Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: session, Type: protocol.RobotXLE, Hardware: protocol.Hardware{Serial: "x1"}})}
	}
	if _, err := s.Append(ctx, []Event{conn("a"), conn("b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []Event{conn("c")}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(ctx, 0, 10, "new-1")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	if fmt.Sprint(types) != "[RobotRegistered RobotConnected RobotConnected RobotConnected]" {
		t.Fatalf("events %v", types)
	}
	r, err := s.Robot(ctx, "new-1")
	if err != nil || r.Type != protocol.RobotXLE || r.Hardware.Serial != "x1" || r.RegisteredAt.IsZero() || r.Status.Session != "c" {
		t.Fatalf("robot %+v, %v", r, err)
	}
}

// TestLargeFleetStaysWithinSafeTransactions writes a 3,000-robot database
// the way a busy node does, in MaxAppendBatch transactions, then rebuilds
// the projection in place: libdqlite 1.11.1 corrupted databases on much
// larger transactions (see MaxAppendBatch); this keeps the limits honest.
func TestLargeFleetStaysWithinSafeTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("large fleet")
	}
	s := openSingle(t)
	ctx := context.Background()
	temp := 51.0
	const robots = 3000
	batch := func(from int, typ string) []Event {
		var evs []Event
		for i := from; i < min(from+MaxAppendBatch, robots); i++ {
			id := fmt.Sprintf("r%05d", i)
			data := mustJSON(t, DisconnectedData{Session: "s", Node: "n", Reason: "closed with 1001"})
			if typ == TypeTelemetryReported {
				data = mustJSON(t, protocol.Telemetry{Network: protocol.Network{Hostname: id, IPs: []string{"10.42.0.1", "fe80::1"}},
					Resources: protocol.Resources{TemperatureC: &temp}, OSVersion: strings.Repeat("Debian GNU/Linux 12 ", 80)})
			}
			evs = append(evs, Event{RobotID: id, Type: typ, Time: t0, Data: data})
		}
		return evs
	}
	for _, typ := range []string{TypeTelemetryReported, TypeRobotDisconnected, TypeTelemetryReported} {
		for from := 0; from < robots; from += MaxAppendBatch {
			if _, err := s.Append(ctx, batch(from, typ)); err != nil {
				t.Fatalf("%s batch at %d: %v", typ, from, err)
			}
		}
	}
	tooMany := append(batch(0, TypeRobotDisconnected), batch(MaxAppendBatch, TypeRobotDisconnected)...)
	if _, err := s.Append(ctx, tooMany); err == nil || !strings.Contains(err.Error(), "split the batch") {
		t.Fatalf("oversize batch: %v", err)
	}
	if n, err := s.RebuildInPlace(ctx); err != nil || n != robots {
		t.Fatalf("rebuild in place: %d, %v", n, err)
	}
	if mm, err := s.Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify: %v, %d mismatches", err, len(mm))
	}
	var res string
	if err := s.DB().QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil || res != "ok" {
		t.Fatalf("integrity check: %q, %v", res, err)
	}
}

// A sweep of more robots than one transaction holds says so, and the next
// batch takes the rest; each swept robot gets exactly one RobotOffline.
func TestSweepOfflineBatches(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	n := MaxAppendBatch + 5
	var evs []Event
	for i := range n {
		id := fmt.Sprintf("r%03d", i)
		evs = append(evs, Event{RobotID: id, Type: TypeRobotConnected, Time: t0, Data: mustJSON(t, ConnectedData{Session: id})})
		if len(evs) == MaxAppendBatch/2 || i == n-1 {
			if _, err := s.Append(ctx, evs); err != nil {
				t.Fatal(err)
			}
			evs = nil
		}
	}
	cutoff, now := t0.Add(time.Minute), t0.Add(2*time.Minute)
	first, more, err := s.SweepOfflineBatch(ctx, cutoff, now, time.Minute)
	if err != nil || len(first) != MaxAppendBatch || !more {
		t.Fatalf("first batch: %d robots, more %v, %v; want %d, true", len(first), more, err, MaxAppendBatch)
	}
	rest, more, err := s.SweepOfflineBatch(ctx, cutoff, now, time.Minute)
	if err != nil || len(rest) != 5 || more {
		t.Fatalf("second batch: %d robots, more %v, %v; want 5, false", len(rest), more, err)
	}
	if got, err := s.CountRobots(ctx, StateOffline); err != nil || got != n {
		t.Fatalf("offline = %d, %v; want %d", got, err, n)
	}
	all, err := s.Events(ctx, 0, 10*n, "")
	if err != nil {
		t.Fatal(err)
	}
	offline := map[string]int{}
	for _, e := range all {
		if e.Type == TypeRobotOffline {
			offline[e.RobotID]++
		}
	}
	for i := range n {
		if id := fmt.Sprintf("r%03d", i); offline[id] != 1 {
			t.Fatalf("%s has %d RobotOffline events, want 1", id, offline[id])
		}
	}
}

func TestSnapshotParams(t *testing.T) {
	for _, c := range []struct {
		threshold, trailing uint64
		want                dqliteParams
		err                 string
	}{
		{0, 0, dqliteParams{DefaultSnapshotThreshold, DefaultSnapshotTrailing}, ""},
		{512, 0, dqliteParams{512, DefaultSnapshotTrailing}, ""},
		{4096, 0, dqliteParams{4096, 4096}, ""},
		{0, 8192, dqliteParams{DefaultSnapshotThreshold, 8192}, ""},
		{1024, 512, dqliteParams{}, "below the snapshot threshold"},
	} {
		p, err := Options{SnapshotThreshold: c.threshold, SnapshotTrailing: c.trailing}.snapshotParams()
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%d/%d: error %v, want %q", c.threshold, c.trailing, err, c.err)
			}
			continue
		}
		if err != nil || (dqliteParams{p.Threshold, p.Trailing}) != c.want {
			t.Errorf("%d/%d: %+v, %v; want %+v", c.threshold, c.trailing, p, err, c.want)
		}
	}
}

type dqliteParams struct{ threshold, trailing uint64 }

// A small raft log still snapshots, and the node restarts from the
// snapshot with everything in it.
func TestSmallRaftLogSnapshotsAndRestarts(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	open := func() *Store {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := Open(ctx, Options{Dir: dir, Address: addr, Logger: quietLogger(), SnapshotThreshold: 64, SnapshotTrailing: 64})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	ctx := context.Background()
	const robots = 200 // one transaction each: three snapshots' worth
	for i := range robots {
		if _, err := s.Append(ctx, []Event{{RobotID: fmt.Sprintf("r%03d", i), Type: TypeRobotRegistered, Time: t0, Data: mustJSON(t, RegisteredData{Type: protocol.RobotLeKiwi})}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot-*"))
	if len(snaps) == 0 {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("no snapshot after %d transactions with a threshold of 64; data dir: %v", robots, entries)
	}
	s = open()
	defer s.Close()
	list, err := s.Robots(ctx, RobotFilter{Limit: 1000})
	if err != nil || len(list) != robots {
		t.Fatalf("after restart from a snapshot: %d robots, %v; want %d", len(list), err, robots)
	}
}

// Presence keeps one row per robot, keyed by its node: a robot that moves
// to another node moves its row, and a stale flush changes nothing.
func TestPresenceFollowsTheRobotAcrossNodes(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	flush := func(p ...Presence) {
		t.Helper()
		if err := s.FlushPresence(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	rows := func() string {
		t.Helper()
		r, err := s.DB().QueryContext(ctx, `SELECT robot_id, node, last_seen FROM presence ORDER BY robot_id`)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		var out []string
		for r.Next() {
			var id, node string
			var seen int64
			if err := r.Scan(&id, &node, &seen); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%s@%s:%d", id, node, (seen-t0.UnixNano())/int64(time.Second)))
		}
		return strings.Join(out, " ")
	}
	flush(Presence{RobotID: "r2", Node: "a", LastSeen: t0}, Presence{RobotID: "r1", Node: "b", LastSeen: t0})
	flush(Presence{RobotID: "r1", Node: "b", LastSeen: t0.Add(time.Second)})
	flush(Presence{RobotID: "r1", Node: "a", LastSeen: t0.Add(2 * time.Second)}) // moved to a
	flush(Presence{RobotID: "r1", Node: "b", LastSeen: t0.Add(time.Second)})     // b's late flush
	if got, want := rows(), "r1@a:2 r2@a:0"; got != want {
		t.Fatalf("presence rows %q, want %q", got, want)
	}
}

// Migration 6 carries the presence rows of an older database over to the
// table clustered by node.
func TestPresenceMigrationKeepsRows(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	for _, stmt := range []string{
		`DROP TABLE presence`,
		`CREATE TABLE presence (robot_id TEXT PRIMARY KEY, node TEXT NOT NULL, last_seen INTEGER NOT NULL, uptime_seconds REAL NOT NULL)`,
		`INSERT INTO presence VALUES ('r1', 'a', 10, 1.5), ('r2', 'b', 20, 2.5)`,
		`DELETE FROM schema_migrations WHERE version = 6`,
	} {
		if _, err := s.DB().ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	if err := migrate(ctx, s.DB()); err != nil {
		t.Fatal(err)
	}
	var n int
	var ddl string
	if err := s.DB().QueryRowContext(ctx, `SELECT count(*) FROM presence WHERE (robot_id, node, last_seen) IN (VALUES ('r1', 'a', 10), ('r2', 'b', 20))`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows carried over: %d, %v; want 2", n, err)
	}
	if err := s.DB().QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE name = 'presence'`).Scan(&ddl); err != nil || !strings.Contains(ddl, "WITHOUT ROWID") {
		t.Fatalf("presence table after migration: %q, %v", ddl, err)
	}
}

func TestSortPresenceIsTheTablesKeyOrder(t *testing.T) {
	batch := []Presence{{Node: "b", RobotID: "r1"}, {Node: "a", RobotID: "r9"}, {Node: "a", RobotID: "r10"}, {Node: "b", RobotID: "r0"}}
	SortPresence(batch)
	var got []string
	for _, p := range batch {
		got = append(got, p.Node+"/"+p.RobotID)
	}
	if want := "a/r10 a/r9 b/r0 b/r1"; strings.Join(got, " ") != want {
		t.Fatalf("sorted %v, want %s (node, then robot id, as the primary key)", got, want)
	}
}

// PendingCommandsOf answers for more robots than one statement can name.
func TestPendingCommandsOfManyRobots(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	now := time.Now()
	const robots = 300 // beyond one statement's 255 parameters
	ids := []string{"robot-without-commands"}
	for i := range robots {
		id := fmt.Sprintf("r%03d", i)
		ids = append(ids, id)
		if err := s.QueueCommand(ctx, id, protocol.Command{ID: "c-" + id, Name: "ping", Deadline: now.Add(time.Hour)}, "test", now); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.QueueCommand(ctx, "r000", protocol.Command{ID: "c-expired", Name: "ping", Deadline: now.Add(-time.Second)}, "test", now); err != nil {
		t.Fatal(err)
	}
	got, err := s.PendingCommandsOf(ctx, ids, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != robots {
		t.Fatalf("pending commands for %d robots, want %d", len(got), robots)
	}
	for _, id := range ids[1:] {
		if c := got[id]; len(c) != 1 || c[0].ID != "c-"+id {
			t.Fatalf("%s: %+v, want only its own live command", id, c)
		}
	}
}

// Queries every member runs every few seconds over the whole fleet must
// read an index, not every robot's row and document.
func TestFleetWideQueriesUseTheirIndexes(t *testing.T) {
	s := openSingle(t)
	stateQ, stateArgs := robotsQuery(RobotFilter{State: StateOffline, Limit: 500})
	for _, c := range []struct {
		name, query string
		args        []any
		want        string
	}{
		{"offline sweep", sweepQuery, []any{StateOnline, 1, 1, 1}, "COVERING INDEX robots_sweep"},
		{"robots in a state", stateQ, stateArgs, "INDEX robots_by_state"},
		// One search per key, not a scan of the log per batch.
		{"resent events", duplicatesQuery(2), []any{"r1", "s", 1, "r2", "s", 2}, "SEARCH e USING COVERING INDEX sqlite_autoindex_events"},
	} {
		all, err := queryplantest.Explain(context.Background(), s.DB(), c.query, c.args...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(all, c.want) || strings.Contains(all, "TEMP B-TREE") {
			t.Errorf("%s: plan %q; want %s in its order, no sort", c.name, all, c.want)
		}
	}
}

// OfflineAmong gives the same answer whether few robots are offline (it
// lists them) or most are (it looks the ids up in chunks).
func TestOfflineAmongWhenMostRobotsAreOffline(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	var ids, want []string
	var events []Event
	for i := range 600 {
		id := fmt.Sprintf("r%03d", i)
		typ := TypeRobotOffline
		if i%3 == 0 {
			typ = TypeRobotConnected
		}
		if i < 300 {
			ids = append(ids, id)
			if typ == TypeRobotOffline {
				want = append(want, id)
			}
		}
		events = append(events, Event{RobotID: id, Type: typ, Time: t0, Data: mustJSON(t, ConnectedData{Session: id})})
		if len(events) == MaxAppendBatch {
			if _, err := s.Append(ctx, events); err != nil {
				t.Fatal(err)
			}
			events = nil
		}
	}
	if _, err := s.Append(ctx, events); err != nil {
		t.Fatal(err)
	}
	got, err := s.OfflineAmong(ctx, ids) // 400 offline in all, more than the 300 asked about
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("offline among the first 300: %d robots, want %d", len(got), len(want))
	}
}
