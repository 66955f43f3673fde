package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/protocol"
)

// seedFleet writes a log touching every projection: robots (registered,
// connected, telemetry, teleop, disconnected, offline), tokens (created,
// revoked), enrollments (one used), certificates (issued, renewed,
// revoked), commands (queued, delivered, answered) and an audit record. It returns the robot ids.
func seedFleet(t *testing.T, s *Store, robots int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	at := t0
	tick := func() time.Time { at = at.Add(time.Second); return at }
	for i := range robots {
		id := fmt.Sprintf("kiwi-%03d", i)
		ids = append(ids, id)
		typ := protocol.RobotLeKiwi
		if i%3 == 0 {
			typ = protocol.RobotXLE
		}
		var image *protocol.ImageInfo // every fourth robot runs a system made without provision image build
		if i%4 != 1 {
			image = &protocol.ImageInfo{Version: fmt.Sprintf("2026.11.%d", i%3), Profile: string(typ), Created: t0.Add(-time.Hour), Seed: "5b1e0a"}
		}
		evs := []Event{{RobotID: id, Type: TypeRobotConnected, Time: tick(), Actor: "robot:" + id, CorrelationID: "s-" + id,
			Data: mustJSON(t, ConnectedData{Session: "s-" + id, Node: "n1", AgentVersion: "1.0", OSVersion: "Debian 12", Type: typ,
				Hardware: protocol.Hardware{Serial: "serial-" + id}, Packages: map[string]string{"lekiwi-agent": "1.0"}, Image: image})}}
		for k := 1; k <= 5; k++ {
			temp := 40 + float64(k)
			evs = append(evs, Event{RobotID: id, Type: TypeTelemetryReported, Time: tick(), Stream: "st-" + id, RobotSeq: uint64(k),
				RobotTime: at.Add(-time.Millisecond), Actor: "robot:" + id, CorrelationID: "s-" + id,
				Data: mustJSON(t, protocol.Telemetry{Network: protocol.Network{Hostname: id, IPs: []string{"10.0.0.1"}},
					Resources: protocol.Resources{CPUPercent: float64(k * 7), TemperatureC: &temp}, UptimeSeconds: float64(k * 60), OSVersion: "Debian 12"})})
		}
		evs = append(evs, Event{RobotID: id, Type: TypeRobotEvent, Time: tick(), Stream: "st-" + id, RobotSeq: 6,
			Data: mustJSON(t, protocol.Event{Kind: protocol.EventTeleopStarted, Data: mustJSON(t, protocol.TeleopData{Operator: "alice"})})})
		if i%2 == 0 {
			evs = append(evs,
				Event{RobotID: id, Type: TypeRobotDisconnected, Time: tick(), Data: mustJSON(t, DisconnectedData{Session: "s-" + id, Node: "n1", Reason: "eof"})},
				Event{RobotID: id, Type: TypeRobotOffline, Time: tick(), Data: mustJSON(t, OfflineData{LastSeen: at, Timeout: "60s"})})
		}
		if _, err := s.Append(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	for i, role := range []auth.Role{auth.RoleOperator, auth.RoleEngineer, auth.RoleAdmin} {
		if err := s.CreateToken(ctx, TokenData{ID: fmt.Sprintf("tok%d", i), Name: string(role), Role: role, Hash: fmt.Sprintf("hash%d", i), ExpiresAt: t0.Add(time.Hour)}, "local:admin", tick()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RevokeToken(ctx, "tok0", "local:admin", tick()); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateEnrollment(ctx, ids[0], "enroll-h1", t0.Add(24*time.Hour), "local:admin", tick()); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateEnrollment(ctx, "kiwi-new", "enroll-h2", t0.Add(24*time.Hour), "local:admin", tick()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ConsumeEnrollment(ctx, "enroll-h1", tick(), signer("aa01")); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCertificate(ctx, ids[0], CertInfo{Serial: "aa02", Fingerprint: "fp2", NotBefore: t0, NotAfter: t0.Add(48 * time.Hour)}, tick()); err != nil {
		t.Fatal(err)
	}
	if len(ids) > 1 {
		if err := s.CreateEnrollment(ctx, ids[1], "enroll-h3", t0.Add(24*time.Hour), "local:admin", tick()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ConsumeEnrollment(ctx, "enroll-h3", tick(), signer("bb01")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RevokeRobot(ctx, ids[1], "lost", "token:tok2", tick()); err != nil {
			t.Fatal(err)
		}
	}
	// Commands: one answered, one delivered, one still queued.
	for i, id := range ids[:min(3, len(ids))] {
		cmd := protocol.Command{ID: fmt.Sprint("cmd-", i), Name: "reboot", Args: json.RawMessage(`{"delay":5}`), Deadline: t0.Add(time.Hour)}
		if err := s.QueueCommand(ctx, id, cmd, "token:tok2", tick()); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if _, err := s.Append(ctx, []Event{{RobotID: id, Type: TypeCommandDelivered, Time: tick(), Data: mustJSON(t, DeliveredData{ID: cmd.ID, Node: "n1"})}}); err != nil {
				t.Fatal(err)
			}
		}
		if i == 0 {
			if _, err := s.Append(ctx, []Event{{RobotID: id, Type: TypeCommandResponse, Time: tick(), Stream: "st-" + id, RobotSeq: 100,
				Data: mustJSON(t, protocol.Response{CommandID: cmd.ID, Status: "ok"})}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Append(ctx, []Event{{RobotID: "mallory", Type: TypeAccessDenied, Time: tick(), Actor: "control",
		Data: mustJSON(t, DeniedData{Reason: "forbidden", Remote: "10.9.9.9:1"})}}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// allEvents reads the whole log.
func allEvents(t *testing.T, s *Store) []Event {
	t.Helper()
	var out []Event
	var after int64
	for {
		page, err := s.Events(context.Background(), after, 1000, "")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page...)
		if len(page) < 1000 {
			return out
		}
		after = page[len(page)-1].Seq
	}
}

// tableDump reads a table as text rows, ordered, for comparison.
func tableDump(t *testing.T, s *Store, query string) []string {
	t.Helper()
	rows, err := s.DB().QueryContext(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(cells, "\t"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// projections are what a restore must reproduce exactly.
var projections = map[string]string{
	"robots":            `SELECT id, type, status, doc, version, last_event FROM robots ORDER BY id`,
	"tokens":            `SELECT id, name, role, hash, created_at, expires_at, revoked_at FROM tokens ORDER BY id`,
	"enrollment_tokens": `SELECT hash, robot_id, created_at, expires_at, used_at FROM enrollment_tokens ORDER BY hash`,
	"certificates":      `SELECT serial, robot_id, fingerprint, not_before, not_after, revoked_at FROM certificates ORDER BY serial`,
	"commands":          `SELECT * FROM commands ORDER BY id`,
}

func backupOf(t *testing.T, s *Store, o BackupOptions) ([]byte, BackupSummary) {
	t.Helper()
	var buf bytes.Buffer
	sum, err := s.Backup(context.Background(), &buf, o)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if sum.Bytes != int64(buf.Len()) {
		t.Fatalf("summary says %d bytes, wrote %d", sum.Bytes, buf.Len())
	}
	return buf.Bytes(), sum
}

func restoreTo(t *testing.T, backup []byte) (string, string, RestoreReport) {
	t.Helper()
	dir, addr := filepath.Join(t.TempDir(), "restored"), freeAddr(t)
	rep, err := Restore(context.Background(), bytes.NewReader(backup), RestoreOptions{Store: Options{Dir: dir, Address: addr, Logger: quietLogger()}})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	return dir, addr, rep
}

func TestBackupRestoreReproducesProjectionsAndSecurityTables(t *testing.T) {
	src := openSingle(t)
	ctx := context.Background()
	ids := seedFleet(t, src, 40)
	// Data with insignificant whitespace comes back byte for byte; data
	// with newlines comes back compacted (a line cannot hold a newline).
	spaced := json.RawMessage(`{ "kind" : "note",  "data": {"a": [1, 2]} }`)
	multi := json.RawMessage("{\n  \"kind\": \"multi\"\n}")
	if _, err := src.Append(ctx, []Event{
		{RobotID: ids[2], Type: TypeRobotEvent, Time: t0.Add(time.Hour), Data: spaced},
		{RobotID: ids[2], Type: TypeRobotEvent, Time: t0.Add(time.Hour), Data: multi},
	}); err != nil {
		t.Fatal(err)
	}
	backup, sum := backupOf(t, src, BackupOptions{Node: "node-a", PageSize: 37})
	want := allEvents(t, src)
	if sum.Header.Events != int64(len(want)) || sum.Header.LastSeq != want[len(want)-1].Seq || sum.Header.Node != "node-a" || sum.Header.SchemaVersion != len(migrations) {
		t.Fatalf("header %+v for %d events", sum.Header, len(want))
	}
	if lines := bytes.Count(backup, []byte("\n")); lines != len(want)+2 {
		t.Fatalf("%d lines for %d events, want header + events + end", lines, len(want))
	}

	dir, addr, rep := restoreTo(t, backup)
	if rep.Events != int64(len(want)) || rep.Robots != 40 {
		t.Fatalf("restore report %+v", rep)
	}
	dst := openNode(t, dir, addr, nil)
	defer dst.Close()
	// The node restored on a loopback port now lives at its final address.
	if leader, members, err := dst.Cluster(ctx); err != nil || leader != addr || len(members) != 1 || members[0].Address != addr {
		t.Fatalf("restored node: leader %q, members %+v, %v; want %s alone", leader, members, err, addr)
	}
	got := allEvents(t, dst)
	if len(got) != len(want) {
		t.Fatalf("restored %d events, want %d", len(got), len(want))
	}
	for i := range want {
		w := want[i]
		if bytes.Contains(w.Data, []byte("\n")) {
			var c bytes.Buffer
			json.Compact(&c, w.Data)
			w.Data = c.Bytes()
		}
		if !reflect.DeepEqual(got[i], w) {
			t.Fatalf("event %d differs:\n got %+v\nwant %+v", i, got[i], w)
		}
	}
	for name, q := range projections {
		if a, b := tableDump(t, src, q), tableDump(t, dst, q); !reflect.DeepEqual(a, b) || len(a) == 0 {
			t.Errorf("%s differ after restore (%d rows vs %d):\n%v\n%v", name, len(a), len(b), a, b)
		}
	}
	if mm, err := dst.Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify restored: %v %v", mm, err)
	}
	// The restored node keeps working: the AUTOINCREMENT counter continued.
	res, err := dst.Append(ctx, []Event{{RobotID: ids[0], Type: TypeRobotOffline, Time: t0.Add(2 * time.Hour), Data: json.RawMessage(`{}`)}})
	if err != nil || res[0].Seq != sum.Header.LastSeq+1 {
		t.Fatalf("append after restore: %+v %v, want seq %d", res, err, sum.Header.LastSeq+1)
	}
	if _, _, err := dst.ConsumeEnrollment(ctx, "enroll-h1", t0, signer("zz")); !errors.Is(err, ErrTokenUsed) {
		t.Fatalf("a used enrollment token must stay used after restore: %v", err)
	}
	if _, _, err := dst.ConsumeEnrollment(ctx, "enroll-h2", t0, signer("zz")); err != nil {
		t.Fatalf("an unused enrollment token must still work after restore: %v", err)
	}
}

func TestBackupOfEmptyLogRestores(t *testing.T) {
	src := openSingle(t)
	backup, sum := backupOf(t, src, BackupOptions{})
	if sum.Header.Events != 0 || sum.Header.LastSeq != 0 {
		t.Fatalf("header %+v", sum.Header)
	}
	if _, _, rep := restoreTo(t, backup); rep.Events != 0 {
		t.Fatalf("%+v", rep)
	}
}

// TestBackupOfASmallLogNeverReadsAsFailed: a snapshot of a small log can
// end before Backup looks for its header — both ready at once — which
// once failed a backup with "back up the event log: %!w(<nil>)". Many
// backups in a row, each must succeed.
func TestBackupOfASmallLogNeverReadsAsFailed(t *testing.T) {
	s := openSingle(t)
	for i := range 300 {
		var buf bytes.Buffer
		if _, err := s.Backup(context.Background(), &buf, BackupOptions{}); err != nil {
			t.Fatalf("backup %d of an empty log: %v", i, err)
		}
	}
}

// slowWriter sleeps on every write, so a backup takes long enough for the
// concurrent writer to commit many transactions meanwhile.
type slowWriter struct {
	w     io.Writer
	delay time.Duration
}

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.w.Write(p)
}

func TestBackupUnderConcurrentWritesIsAConsistentSnapshot(t *testing.T) {
	src := openSingle(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seedFleet(t, src, 20)
	var (
		wg       sync.WaitGroup
		appended atomic.Int64
		writeErr error
	)
	started := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			id := fmt.Sprintf("busy-%d", i%7)
			batch := []Event{
				{RobotID: id, Type: TypeRobotConnected, Time: t0.Add(time.Duration(i) * time.Second), Data: mustJSON(t, ConnectedData{Session: fmt.Sprint("s", i), OSVersion: "os"})},
				{RobotID: id, Type: TypeTelemetryReported, Time: t0.Add(time.Duration(i) * time.Second), Data: mustJSON(t, protocol.Telemetry{UptimeSeconds: float64(i)})},
			}
			if _, err := src.Append(context.Background(), batch); err != nil {
				writeErr = err
				return
			}
			if appended.Add(1) == 3 {
				close(started)
			}
		}
	}()
	<-started
	var buf bytes.Buffer
	sum, err := src.Backup(context.Background(), slowWriter{&buf, 15 * time.Millisecond}, BackupOptions{PageSize: 16})
	atBackupEnd := appended.Load()
	time.Sleep(50 * time.Millisecond)
	cancel()
	wg.Wait()
	if err != nil || writeErr != nil {
		t.Fatalf("backup %v, writer %v", err, writeErr)
	}
	live := allEvents(t, src)
	last := sum.Header.LastSeq
	if live[len(live)-1].Seq <= last {
		t.Fatalf("no write landed during the backup (live last seq %d, snapshot %d): the test proves nothing", live[len(live)-1].Seq, last)
	}
	t.Logf("snapshot at seq %d; writer committed %d batches up to seq %d meanwhile (%d when the backup finished)", last, appended.Load(), live[len(live)-1].Seq, atBackupEnd)

	// The backup holds exactly the log up to its last seq, with no gap.
	var prefix []Event
	for _, e := range live {
		if e.Seq <= last {
			prefix = append(prefix, e)
		}
	}
	for i, e := range prefix {
		if e.Seq != int64(i+1) {
			t.Fatalf("live log has a hole at %d", i+1)
		}
	}
	br, err := NewBackupReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var got []Event
	for {
		e, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if !reflect.DeepEqual(got, prefix) {
		t.Fatalf("backup holds %d events, the log up to seq %d holds %d", len(got), last, len(prefix))
	}

	// Restored, its projection equals a replay of that prefix.
	dir, addr, _ := restoreTo(t, buf.Bytes())
	dst := openNode(t, dir, addr, nil)
	defer dst.Close()
	replay := map[string]*Robot{}
	for _, e := range prefix {
		if e.RobotID == "" || !robotEvent(e.Type) {
			continue
		}
		if replay[e.RobotID] == nil {
			replay[e.RobotID] = &Robot{}
		}
		if err := Apply(replay[e.RobotID], e); err != nil {
			t.Fatal(err)
		}
	}
	docs := tableDump(t, dst, `SELECT id, doc FROM robots ORDER BY id`)
	if len(docs) != len(replay) {
		t.Fatalf("restored %d robots, the prefix has %d", len(docs), len(replay))
	}
	for _, row := range docs {
		id, doc, _ := strings.Cut(row, "\t")
		want, _ := json.Marshal(replay[id])
		if doc != string(want) {
			t.Fatalf("robot %s: restored %s\nreplayed %s", id, doc, want)
		}
	}
}

// blockingWriter blocks every write until released.
type blockingWriter struct {
	release chan struct{}
	buf     bytes.Buffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return b.buf.Write(p)
}

func TestBackupReleasesTheSnapshotWhenTheReaderStalls(t *testing.T) {
	src := openSingle(t)
	seedFleet(t, src, 10)
	w := &blockingWriter{release: make(chan struct{})}
	go func() { time.Sleep(500 * time.Millisecond); close(w.release) }()
	sum, err := src.Backup(context.Background(), w, BackupOptions{PageSize: 2, StallTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrBackupStalled) || sum.Bytes == 0 {
		t.Fatalf("backup with a stalled reader: %v (%d bytes)", err, sum.Bytes)
	}
	// The file says why it ends early, and a restore refuses it.
	if _, err := CheckBackup(bytes.NewReader(w.buf.Bytes()), nil); err == nil || !strings.Contains(err.Error(), "stopped reading") {
		t.Fatalf("check of a stalled backup: %v", err)
	}
}

// editLines returns the backup with its lines changed by f.
func editLines(backup []byte, f func([]string) []string) []byte {
	lines := strings.Split(strings.TrimSuffix(string(backup), "\n"), "\n")
	return []byte(strings.Join(f(lines), "\n") + "\n")
}

func TestRestoreRefusesBadBackups(t *testing.T) {
	src := openSingle(t)
	seedFleet(t, src, 3)
	good, sum := backupOf(t, src, BackupOptions{})
	n := int(sum.Header.Events)
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"empty file", nil, "file is empty"},
		{"garbage", []byte("hello world\n"), "backup line 1: not a Lekiwi Heartbeat backup"},
		{"json but not a backup", []byte(`{"events":[]}` + "\n"), "not a Lekiwi Heartbeat backup"},
		{"newer format version", editLines(good, func(l []string) []string {
			l[0] = strings.Replace(l[0], `"version":1`, `"version":2`, 1)
			return l
		}), "format version 2 is not supported"},
		{"newer schema", editLines(good, func(l []string) []string {
			l[0] = strings.Replace(l[0], fmt.Sprintf(`"schema_version":%d`, len(migrations)), `"schema_version":99`, 1)
			return l
		}), "schema version 99 is newer"},
		{"gap", editLines(good, func(l []string) []string { return append(l[:5:5], l[6:]...) }), "backup line 6: gap: event seq 6 follows seq 5"},
		{"first events missing", editLines(good, func(l []string) []string { return append(l[:1:1], l[3:]...) }), "backup line 2: gap: event seq 3 follows seq 2 in the log, but it is the first event"},
		{"lines swapped", editLines(good, func(l []string) []string { l[3], l[4] = l[4], l[3]; return l }), "backup line 4: gap"},
		{"line repeated", editLines(good, func(l []string) []string { return append(l[:5:5], l[4:]...) }), "backup line 6: event seq 4 does not follow seq 4 on line 5"},
		{"truncated", editLines(good, func(l []string) []string { return l[:len(l)-4] }), fmt.Sprintf("ends after %d of %d events without its end line", n-3, n)},
		{"cut mid-line", good[:len(good)-len(good)/3], "backup line"},
		{"altered data", editLines(good, func(l []string) []string {
			for i := range l {
				if strings.Contains(l[i], "TelemetryReported") {
					l[i] = strings.Replace(l[i], `"Debian 12"`, `"Debian 13"`, 1)
					break
				}
			}
			return l
		}), "checksum mismatch"},
		{"invalid json line", editLines(good, func(l []string) []string { l[3] = l[3][:len(l[3])-1]; return l }), "backup line 4: not a valid backup line"},
		{"unknown field", editLines(good, func(l []string) []string {
			l[3] = strings.Replace(l[3], `{"seq"`, `{"colour":"red","seq"`, 1)
			return l
		}), `backup line 4: not a valid backup line: json: unknown field "colour"`},
		{"event without data", editLines(good, func(l []string) []string { l[3] = l[3][:strings.Index(l[3], `,"data"`)] + "}"; return l }), `backup line 4: event seq 3 has no "data"`},
		{"failed on the node", editLines(good, func(l []string) []string { return append(l[:4:4], `{"error":"leadership lost"}`) }), "backup line 5: the node failed while writing this backup: leadership lost"},
		{"data after the end", append(append([]byte{}, good...), []byte(`{"seq":999,"prev":0}`+"\n")...), "data after the end line"},
		{"count in header lies", editLines(good, func(l []string) []string {
			l[0] = strings.Replace(l[0], fmt.Sprintf(`"events":%d`, n), fmt.Sprintf(`"events":%d`, n-1), 1)
			return l
		}), "events are missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := CheckBackup(bytes.NewReader(tc.file), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check: %v; want an error containing %q", err, tc.want)
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "new")
			_, err := Restore(context.Background(), bytes.NewReader(tc.file), RestoreOptions{Store: Options{Dir: dir, Address: freeAddr(t), Logger: quietLogger()}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v; want an error containing %q", err, tc.want)
			}
			if left, _ := os.ReadDir(parent); len(left) != 0 {
				t.Fatalf("a failed restore left %v behind", left)
			}
		})
	}
	t.Run("non-empty data dir", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "info.yaml"), []byte("id: 1\n"), 0o600)
		_, err := Restore(context.Background(), bytes.NewReader(good), RestoreOptions{Store: Options{Dir: dir, Address: freeAddr(t)}})
		if err == nil || !strings.Contains(err.Error(), "is not empty") || !strings.Contains(err.Error(), "info.yaml") {
			t.Fatalf("restore over a node's data: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "info.yaml")); string(b) != "id: 1\n" {
			t.Fatal("restore touched the existing data")
		}
	})
	t.Run("into an existing empty dir", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := Restore(context.Background(), bytes.NewReader(good), RestoreOptions{Store: Options{Dir: dir, Address: freeAddr(t), Logger: quietLogger()}}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestImportEventsChecks(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	ev := func(seq int64) Event {
		return Event{Seq: seq, RobotID: "r1", Type: TypeRobotRegistered, Time: t0, Data: mustJSON(t, RegisteredData{Type: protocol.RobotLeKiwi})}
	}
	if err := s.ImportEvents(ctx, []Event{ev(5), ev(9)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		events []Event
		want   string
	}{
		{"not after the log", []Event{ev(9)}, "not after the newest event already in the log (seq 9)"},
		{"out of order", []Event{ev(12), ev(11)}, "seqs must increase strictly"},
		{"no seq", []Event{ev(0)}, "not positive"},
		{"too many", func() []Event {
			var evs []Event
			for i := range MaxAppendBatch + 1 {
				evs = append(evs, ev(int64(100+i)))
			}
			return evs
		}(), "unsafe with libdqlite"},
		{"malformed data", []Event{{Seq: 20, RobotID: "r1", Type: TypeTelemetryReported, Time: t0, Data: json.RawMessage(`{"uptime_seconds":"x"}`)}}, "malformed data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.ImportEvents(ctx, tc.events); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v; want %q", err, tc.want)
			}
		})
	}
	// Nothing of the refused batches stuck, and Append continues after 9.
	res, err := s.Append(ctx, []Event{{RobotID: "r1", Type: TypeRobotOffline, Time: t0, Data: json.RawMessage(`{}`)}})
	if err != nil || res[0].Seq != 10 {
		t.Fatalf("append after import: %+v %v", res, err)
	}
}

func FuzzBackupLine(f *testing.F) {
	f.Add([]byte(`{"seq":1,"prev":0,"robot_id":"kiwi-1","type":"RobotRegistered","time":"2026-11-27T10:00:00Z","data":{"type":"lekiwi"}}`))
	f.Add([]byte(`{"seq":7,"prev":3,"robot_id":"kiwi-1","type":"TelemetryReported","time":"2026-11-27T10:00:00.123456789Z","correlation_id":"s1","actor":"robot:kiwi-1","stream":"st","robot_seq":4,"robot_time":"2026-11-27T09:59:59Z","data":{ "uptime_seconds" : 5 }}`))
	f.Add([]byte(`{"end":{"events":2,"last_seq":7,"sha256":"00"}}`))
	f.Add([]byte(`{"error":"leadership lost"}`))
	f.Add([]byte(`{"seq":2,"prev":1,"type":"X","time":"2026-11-27T10:00:00+02:00","data":null}`))
	f.Add([]byte(`{"format":"lekiwi-heartbeat-backup","version":1,"schema_version":3,"last_seq":7,"events":2,"created_at":"2026-11-27T10:00:00Z","node":"n"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		_, _ = parseBackupHeader(line)
		kind, e, prev, _, _, err := parseBackupLine(line)
		if err != nil || kind != lineEvent {
			return
		}
		// An accepted event survives a write and a read unchanged.
		out, err := appendEventLine(nil, e, prev)
		if err != nil {
			t.Fatalf("accepted event does not encode: %v", err)
		}
		kind2, e2, prev2, _, _, err := parseBackupLine(bytes.TrimSuffix(out, []byte("\n")))
		if err != nil || kind2 != lineEvent || prev2 != prev {
			t.Fatalf("re-read %q: %v", out, err)
		}
		if !bytes.Contains(e.Data, []byte("\n")) && !bytes.Contains(e.Data, []byte("\r")) && !bytes.Equal(e.Data, e2.Data) {
			t.Fatalf("data changed: %q -> %q", e.Data, e2.Data)
		}
		e.Data, e2.Data = nil, nil
		if !reflect.DeepEqual(e, e2) || e.Time.UnixNano() != e2.Time.UnixNano() {
			t.Fatalf("event changed:\n%+v\n%+v", e, e2)
		}
		if bytes.Count(out, []byte("\n")) != 1 {
			t.Fatalf("encoded event spans lines: %q", out)
		}
	})
}
