package updatecmd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lekiwi/heartbeat/agent/ota"
)

func TestRecordsBoundedAndDurable(t *testing.T) {
	st := ota.FileStore{Path: filepath.Join(t.TempDir(), CommandsFile)}
	r, err := loadRecords(st)
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxRecords + 5 {
		if err := r.put(record{ID: fmt.Sprint("c", i), Status: statusAccepted}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.put(record{ID: "c40", Status: "ok", Message: "done"}); err != nil {
		t.Fatal(err)
	}
	again, err := loadRecords(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.list) != maxRecords {
		t.Fatalf("%d records kept, want %d", len(again.list), maxRecords)
	}
	if _, ok := again.get("c0"); ok {
		t.Fatal("the oldest record was not dropped")
	}
	if x, ok := again.get("c40"); !ok || x.Status != "ok" || len(again.accepted()) != maxRecords-1 {
		t.Fatalf("c40 %+v %v, accepted %d", x, ok, len(again.accepted()))
	}
	for _, bad := range []string{`{`, `[{"status":"ok"}]`, `[{"id":"a","status":"maybe"}]`} {
		if err := os.WriteFile(st.Path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if r, err := loadRecords(st); err == nil || r == nil || len(r.list) != 0 {
			t.Fatalf("%s: loaded %+v, %v", bad, r, err)
		}
	}
}

func FuzzParseRecords(f *testing.F) {
	f.Add([]byte(`[{"id":"c1","args":{"deployment_id":"d","release":"r@sha256:00"},"status":"accepted","at":"2026-01-01T00:00:00Z"}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := parseRecords(b)
		if err != nil {
			return
		}
		for _, r := range list {
			if r.ID == "" || (r.Status != statusAccepted && r.Status != "ok" && r.Status != "error") {
				t.Fatalf("accepted a bad record %+v", r)
			}
		}
	})
}
