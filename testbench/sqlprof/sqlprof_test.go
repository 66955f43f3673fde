package sqlprof

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
)

// TestProfileAttributesStatements runs a real dqlite store in a child
// process with the profiler loaded and checks that the statements the
// workload ran are in the profile with their counts.
func TestProfileAttributesStatements(t *testing.T) {
	dir := t.TempDir()
	lib, err := Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "profile.tsv")
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildWorkload$", "-test.v")
	cmd.Env = append(append(os.Environ(), Env(lib, out)...), "SQLPROF_INTERVAL_MS=100", "SQLPROF_CHILD=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, b)
	}
	stmts, err := Read(out)
	if err != nil {
		t.Fatal(err)
	}
	var robots *Statement
	for i := range stmts {
		if strings.Contains(stmts[i].SQL, "robots") && strings.HasPrefix(stmts[i].SQL, "SELECT count(*)") {
			robots = &stmts[i]
		}
		if i > 0 && stmts[i].Total() > stmts[i-1].Total() {
			t.Errorf("profile not sorted by time at line %d", i+2)
		}
	}
	// OfflineAmong's IN lists of 3 and 5 parameters fold into one line.
	var in []Statement
	for _, s := range stmts {
		if strings.Contains(s.SQL, "id IN (") {
			in = append(in, s)
		}
	}
	if len(in) != 1 || !strings.Contains(in[0].SQL, "IN (?,?)") || in[0].Prepares != 2 {
		t.Errorf("IN-list statements = %+v, want one line ending IN (?,?) prepared twice", in)
	}
	if robots == nil {
		t.Fatalf("the workload's count query is not in the profile:\n%v", stmts)
	}
	// childRounds counts, each stepped once to its row and once to done.
	if robots.Prepares < childRounds || robots.Rows < childRounds {
		t.Errorf("count query: %d prepares, %d rows; want at least %d each", robots.Prepares, robots.Rows, childRounds)
	}
}

const childRounds = 50

// TestChildWorkload is the child of TestProfileAttributesStatements.
func TestChildWorkload(t *testing.T) {
	if os.Getenv("SQLPROF_CHILD") == "" {
		t.Skip("child process of TestProfileAttributesStatements")
	}
	st := storetest.Open(t)
	ctx := context.Background()
	for range childRounds {
		if _, err := st.CountRobots(ctx, store.StateOnline); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{3, 5} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("robot-%d", i)
		}
		if _, err := st.OfflineAmong(ctx, ids); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // a few dumps
}

func TestReadParsesProfileLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.tsv")
	body := "step_ms\tprepare_ms\tsteps\trows\tprepares\tsql\n12\t3\t40\t20\t40\tSELECT id FROM robots WHERE id IN (?,?)\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Statement{SQL: "SELECT id FROM robots WHERE id IN (?,?)", Step: 12 * time.Millisecond, Prepare: 3 * time.Millisecond, Steps: 40, Rows: 20, Prepares: 40}
	if len(got) != 1 || got[0] != want {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	if err := os.WriteFile(path, []byte("h\nnot a profile line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err == nil {
		t.Error("Read accepted a malformed line")
	}
}
