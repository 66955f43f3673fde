package deploy

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
)

// fleetInStates makes three deployments in different states on one lab:
// a canary paused after its first batch, one rolled back after its
// threshold tripped, and a rolling one mid-batch with updates in flight
// and a teleoperated robot deferred.
func fleetInStates(t *testing.T) (*lab, []string) {
	t.Helper()
	l := newLab(t, 30)
	e := l.engine()
	ids := func(from, to int) []string { return l.ids[from:to] }

	canary := l.create(Spec{Strategy: Canary, Canary: Size{Count: 2}, Target: Target{RobotIDs: ids(0, 10)}})
	l.behaviour["r-001"] = "fail"
	if d := l.run(e, canary.ID, 10); d.State != StatePaused {
		t.Fatalf("canary: %s %+v", d.State, d.Counts)
	}

	for _, id := range ids(10, 14) {
		l.behaviour[id] = "hang"
	}
	rolled := l.create(Spec{BatchSize: Size{Count: 5}, AutoRollback: true, UpdateTimeoutSeconds: 60, Target: Target{RobotIDs: ids(10, 20)}})
	for range 3 {
		l.step(e)
		l.answer()
	}
	l.clock.Add(61 * time.Second)
	if d := l.run(e, rolled.ID, 10); d.State != StateRolledBack {
		t.Fatalf("rollback: %s %+v", d.State, d.Counts)
	}

	l.teleop("r-021", true)
	rolling := l.create(Spec{BatchSize: Size{Count: 3}, Target: Target{RobotIDs: ids(20, 30)}})
	l.step(e)
	l.step(e)
	d := l.get(rolling.ID)
	if d.State != StateRunning || d.Counts.Sent != 2 || d.Counts.Deferred != 1 {
		t.Fatalf("rolling: %s %+v", d.State, d.Counts)
	}
	return l, []string{canary.ID, rolled.ID, rolling.ID}
}

// snapshot is the JSON of Get for each deployment and of List.
func snapshot(t *testing.T, st *store.Store, ids []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, id := range ids {
		d, err := Get(context.Background(), st, id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		b, _ := json.Marshal(d)
		out[id] = string(b)
	}
	list, err := List(context.Background(), st, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(list)
	out["list"] = string(b)
	return out
}

func sameSnapshot(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for k, w := range want {
		if got[k] != w {
			t.Fatalf("%s: %s differs\nwant %s\ngot  %s", what, k, w, got[k])
		}
	}
}

func queuedCommands(t *testing.T, st *store.Store) int {
	t.Helper()
	evs, err := st.EventsOfTypes(context.Background(), 0, 10000, store.TypeCommandQueued)
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

// Backup, restore into a new store, start: the restored database has no
// deployment tables, Sync (run by every node at start) rebuilds them from
// the log, and every deployment and per-robot state equals the original.
// The restored engine then continues without re-sending anything.
func TestRestoreRebuildsDeploymentsFromTheLog(t *testing.T) {
	ctx := context.Background()
	l, ids := fleetInStates(t)
	want := snapshot(t, l.st, ids)
	sentBefore := queuedCommands(t, l.st)
	if s, err := Check(ctx, l.st); err != nil || !s.Current() || s.Deployments != 3 || s.CreatedEvents != 3 {
		t.Fatalf("live store: %v %v", s, err)
	}

	var backup bytes.Buffer
	if _, err := l.st.Backup(ctx, &backup, store.BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	addr := freeLoopback(t)
	if _, err := store.Restore(ctx, &backup, store.RestoreOptions{Store: store.Options{Dir: dir, Address: addr, Logger: storetest.Logger()}}); err != nil {
		t.Fatal(err)
	}
	restored, err := store.Open(ctx, store.Options{Dir: dir, Address: addr, Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()

	s, err := Check(ctx, restored)
	if err != nil || s.Current() || s.Ready || s.Deployments != 0 || s.CreatedEvents != 3 || s.LogSeq == 0 {
		t.Fatalf("restored store before sync: %v %v", s, err)
	}
	// Once the tables exist but are not rebuilt, reads and writes say so
	// instead of answering "no deployments".
	if err := Migrate(ctx, restored.DB()); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(ctx, restored, ids[0]); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("get before the rebuild: %v, want ErrRebuilding", err)
	}
	if _, err := List(ctx, restored, "", 10); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("list before the rebuild: %v, want ErrRebuilding", err)
	}
	if _, err := Pause(ctx, restored, ids[2], "", "engineer:bob", l.clock.Now()); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("pause before the rebuild: %v, want ErrRebuilding", err)
	}
	if _, err := Create(ctx, restored, Spec{Release: "registry.local/lekiwi@sha256:" + string(bytes.Repeat([]byte("cd"), 32)), Version: "3", Target: Target{RobotIDs: []string{"r-020"}}}, "engineer:bob", l.clock.Now()); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("create before the rebuild: %v, want ErrRebuilding (r-020 is busy in a deployment the tables do not show yet)", err)
	}

	rep, err := Sync(ctx, restored)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Reset || rep.Replayed == 0 {
		t.Fatalf("sync report %+v", rep)
	}
	sameSnapshot(t, "restored", want, snapshot(t, restored, ids))
	if s, err := Check(ctx, restored); err != nil || !s.Current() {
		t.Fatalf("after sync: %v %v", s, err)
	}
	if rep, err := Sync(ctx, restored); err != nil || rep.Reset || rep.Replayed != 0 {
		t.Fatalf("second sync: %+v %v, want nothing to do", rep, err)
	}

	// The restored node's engine continues: nothing in flight is sent again.
	e := New(restored, Options{Now: l.clock.Now, IsLeader: func(context.Context) (bool, error) { return true, nil }, Logger: l.engine().o.Logger})
	if err := e.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queuedCommands(t, restored); got != sentBefore {
		t.Fatalf("restored engine queued %d commands, the original %d", got, sentBefore)
	}
	sameSnapshot(t, "restored after a step", want, snapshot(t, restored, ids))
	// And takes live writes again.
	if d, err := Pause(ctx, restored, ids[2], "restored", "engineer:bob", l.clock.Now()); err != nil || d.State != StatePaused {
		t.Fatalf("pause after the rebuild: %v", err)
	}
	if s, err := Check(ctx, restored); err != nil || !s.Current() {
		t.Fatalf("after a live write: %v %v", s, err)
	}
}

// Sync on a live store: nothing to do when the tables agree; a full
// rebuild when the progress table is missing (tables made before it
// existed); a resume when a rebuild stopped half way. Rebuild repairs a
// wrong row. Each ends equal to the original.
func TestSyncAndRebuildOnALiveStore(t *testing.T) {
	ctx := context.Background()
	l, ids := fleetInStates(t)
	want := snapshot(t, l.st, ids)
	db := l.st.DB()

	if rep, err := Sync(ctx, l.st); err != nil || rep.Reset || rep.Replayed != 0 || !rep.Before.Current() {
		t.Fatalf("sync of agreeing tables: %+v %v", rep, err)
	}

	// A projection bug: one robot's row is wrong. Rebuild repairs it.
	if _, err := db.ExecContext(ctx, `UPDATE deployment_robots SET state = ? WHERE robot_id = 'r-002'`, RobotFailed); err != nil {
		t.Fatal(err)
	}
	n, err := Rebuild(ctx, l.st)
	if err != nil || n == 0 {
		t.Fatalf("rebuild: %d %v", n, err)
	}
	sameSnapshot(t, "rebuilt", want, snapshot(t, l.st, ids))

	// Tables from before the progress table: rebuilt from scratch.
	if _, err := db.ExecContext(ctx, `DROP TABLE deployment_projection`); err != nil {
		t.Fatal(err)
	}
	rep, err := Sync(ctx, l.st)
	if err != nil || !rep.Reset || rep.Replayed != n {
		t.Fatalf("sync without the progress table: %+v %v (want a reset and %d events)", rep, err, n)
	}
	sameSnapshot(t, "synced", want, snapshot(t, l.st, ids))

	// A rebuild stopped after the first events: Sync resumes it.
	if err := reset(ctx, db); err != nil {
		t.Fatal(err)
	}
	evs, err := l.st.EventsOfTypes(ctx, 0, 5, EventTypes()...)
	if err != nil || len(evs) != 5 {
		t.Fatalf("events: %d %v", len(evs), err)
	}
	err = store.WithTx(ctx, db, func(tx *sql.Tx) error {
		for _, e := range evs {
			if err := apply(ctx, tx, e); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `UPDATE deployment_projection SET applied_seq = ? WHERE id = 1`, evs[4].Seq)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Get(ctx, l.st, ids[0]); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("get mid-rebuild: %v", err)
	}
	if err := l.engine().Step(ctx); err != nil && !errors.Is(err, ErrRebuilding) {
		t.Fatalf("engine step mid-rebuild: %v", err)
	}
	rep, err = Sync(ctx, l.st)
	if err != nil || rep.Reset || rep.Replayed != n-5 {
		t.Fatalf("resumed sync: %+v %v (want no reset and %d events)", rep, err, n-5)
	}
	sameSnapshot(t, "resumed", want, snapshot(t, l.st, ids))
}

// Two nodes syncing the same restored tables at once share the work and
// end with the same tables (each step is guarded by applied_seq).
func TestConcurrentRebuildsConverge(t *testing.T) {
	ctx := context.Background()
	l, ids := fleetInStates(t)
	want := snapshot(t, l.st, ids)
	if err := reset(ctx, l.st.DB()); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := replay(ctx, l.st); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	sameSnapshot(t, "after two concurrent replays", want, snapshot(t, l.st, ids))
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// A deployment larger than one multi-row INSERT (dqlite carries at most
// 255 parameters per statement) is created whole, and rebuilt whole.
func TestCreateAndRebuildBeyondOneInsert(t *testing.T) {
	ctx := context.Background()
	l := newLab(t, 3*insertChunk+7)
	d := l.create(Spec{BatchSize: Size{Count: 2 * insertChunk}})
	if d.Counts.Total != len(l.ids) || d.Counts.Pending != len(l.ids) || len(d.Batches) != 2 || d.Batches[1].Counts.Total != insertChunk+7 {
		t.Fatalf("created %+v batches %+v", d.Counts, d.Batches)
	}
	for i, r := range d.Robots {
		if r.RobotID != l.ids[i] || r.Batch != i/(2*insertChunk) {
			t.Fatalf("robot %d: %+v", i, r)
		}
	}
	l.step(l.engine())
	want := snapshot(t, l.st, []string{d.ID})
	if _, err := Rebuild(ctx, l.st); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, "rebuilt", want, snapshot(t, l.st, []string{d.ID}))
}
