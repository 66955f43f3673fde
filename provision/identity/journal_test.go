package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestJournalSurvivesATornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	now := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	j, recs, err := OpenJournal(path, func() time.Time { return now })
	if err != nil || len(recs) != 0 {
		t.Fatalf("new journal: %v %v", recs, err)
	}
	if err := j.Append(EventIssued, "kiwi-1", "/dev/sdb", ""); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if err := j.Append(EventOK, "kiwi-1", "/dev/sdb", ""); err == nil {
		t.Error("appended to a closed journal")
	}
	// A crash in the middle of the next append.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("2025-05-01T12:00:01Z,iss")
	f.Close()
	j, recs, err = OpenJournal(path, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].RobotID != "kiwi-1" || !recs[0].Time.Equal(now) {
		t.Fatalf("records %+v", recs)
	}
	if err := j.Append(EventOK, "kiwi-1", "/dev/sdb, slot 2", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenJournal(path, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open of a journal in use: %v", err)
	}
	j.Close()
	recs = readJournal(t, path)
	if len(recs) != 2 || LastEvents(recs)["kiwi-1"] != EventOK || recs[1].Target != "/dev/sdb, slot 2" {
		t.Fatalf("after the torn line: %+v", recs)
	}
}

func TestParseJournalErrors(t *testing.T) {
	for in, want := range map[string]string{
		"yesterday,issued,kiwi-1,t,\n":                  "line 1: time",
		"2025-05-01T12:00:00Z,lost,kiwi-1,t,\n":         `line 1: unknown event "lost"`,
		"2025-05-01T12:00:00Z,issued,,t,\n":             "line 1: no robot id",
		"2025-05-01T12:00:00Z,issued,kiwi-1,t\n":        "wrong number of fields",
		"2025-05-01T12:00:00Z,issued,k,t,\nx,ok,k,t,\n": "line 2: time",
	} {
		if _, err := ParseJournal([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func FuzzParseJournal(f *testing.F) {
	f.Add([]byte("2025-05-01T12:00:00Z,issued,kiwi-1,/dev/sdb,\n2025-05-01T12:01:00Z,failed,kiwi-1,/dev/sdb,\"verify, offset 3\"\n"))
	f.Add([]byte("2025-05-01T12:00:00Z,ok,kiwi-1,/dev/sdb,\n2025-05-01T12"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ParseJournal(data)
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.RobotID == "" || (r.Event != EventIssued && r.Event != EventOK && r.Event != EventFailed) {
				t.Fatalf("accepted record %+v", r)
			}
		}
	})
}
