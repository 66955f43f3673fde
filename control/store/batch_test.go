package store

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store/queryplantest"
)

// Events come back from the log exactly as appended, whether the batch
// travelled as one JSON parameter or, when a string cannot, as bound
// parameters.
func TestAppendKeepsEveryByte(t *testing.T) {
	for _, c := range []struct {
		name  string
		event Event
		json  bool
	}{
		{"plain", Event{RobotID: "r1", Type: "Note", Data: []byte(`{"a":1}`)}, true},
		{"quotes, escapes, html, unicode", Event{RobotID: "r-ü", Type: "Note", Data: []byte(`{"s":"a\"b\\c <&> \u2028 ☃ \\u0000"}`), Actor: `o'brien "x"`, CorrelationID: "c\tid"}, true},
		{"stream at the largest sequence", Event{RobotID: "r2", Type: "Note", Data: []byte(`[]`), Stream: "events", RobotSeq: math.MaxInt64, RobotTime: time.Unix(0, math.MaxInt64-1).UTC()}, true},
		{"invalid UTF-8", Event{RobotID: "r3", Type: "Note", Data: []byte("\"\xff\xfe\"")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := jsonRows([]Event{c.event}, eventValues, eventStrings); ok != c.json {
				t.Fatalf("jsonRows ok = %v, want %v", ok, c.json)
			}
			s := openSingle(t)
			ctx := context.Background()
			c.event.Time = t0
			// Three copies in one batch (the later two of a stream are
			// resends): order and sequences must hold too.
			batch := []Event{c.event, c.event, c.event}
			if c.event.Stream == "" {
				batch[1].Type, batch[2].Type = "Note2", "Note3"
			}
			res, err := s.Append(ctx, batch)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Events(ctx, 0, 10, "")
			if err != nil {
				t.Fatal(err)
			}
			want := 3
			if c.event.Stream != "" {
				want = 1
			}
			if len(got) != want {
				t.Fatalf("%d events stored, want %d", len(got), want)
			}
			for i, e := range got {
				if e.Seq != res[i].Seq {
					t.Errorf("event %d: seq %d in the log, Append said %d", i, e.Seq, res[i].Seq)
				}
				in := batch[i]
				if e.RobotID != in.RobotID || e.Type != in.Type || string(e.Data) != string(in.Data) || e.Actor != in.Actor ||
					e.CorrelationID != in.CorrelationID || e.Stream != in.Stream || e.RobotSeq != in.RobotSeq ||
					!e.Time.Equal(in.Time) || !e.RobotTime.Equal(in.RobotTime) {
					t.Errorf("event %d:\n got  %+v\n want %+v", i, e, in)
				}
			}
		})
	}
}

// A batch larger than one statement's parameters (64 events, 10 columns)
// is one insert and one upsert with JSON, and still several when a string
// forces bound parameters: both land every event and robot.
func TestAppendFullBatchBothWays(t *testing.T) {
	for _, bad := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback=%v", bad), func(t *testing.T) {
			s := openSingle(t)
			ctx := context.Background()
			var batch []Event
			for i := range MaxAppendBatch {
				actor := "gateway"
				if bad && i == MaxAppendBatch-1 {
					actor = "\xff"
				}
				batch = append(batch, Event{RobotID: fmt.Sprintf("r%02d", i), Type: TypeRobotConnected, Time: t0, Actor: actor,
					Data: mustJSON(t, ConnectedData{Session: fmt.Sprint(i), Type: "lekiwi"})})
			}
			if _, ok := jsonRows(batch, eventValues, eventStrings); ok == bad {
				t.Fatalf("jsonRows ok = %v with fallback %v", ok, bad)
			}
			if _, err := s.Append(ctx, batch); err != nil {
				t.Fatal(err)
			}
			n, err := s.CountRobots(ctx, StateOnline)
			if err != nil || n != MaxAppendBatch {
				t.Fatalf("%d robots online (%v), want %d", n, err, MaxAppendBatch)
			}
			// A RobotRegistered precedes each first connect.
			events, err := s.Events(ctx, 0, 1000, "")
			if err != nil || len(events) != 2*MaxAppendBatch {
				t.Fatalf("%d events (%v), want %d", len(events), err, 2*MaxAppendBatch)
			}
			for i, e := range events {
				if e.Seq != int64(i+1) || (i%2 == 0) != (e.Type == TypeRobotRegistered) {
					t.Fatalf("event %d: seq %d type %s; want registration and connect in turn", i, e.Seq, e.Type)
				}
			}
		})
	}
}

// dqlite's protocol would cut text at a NUL byte: Append refuses it
// instead of storing less than it was given.
func TestAppendRefusesNUL(t *testing.T) {
	s := openSingle(t)
	_, err := s.Append(context.Background(), []Event{{RobotID: "r4", Type: "Note", Time: t0, Data: []byte(`{}`), Actor: "a\x00b"}})
	if err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("Append with a NUL in the actor: %v, want a refusal naming the NUL", err)
	}
	if _, ok := jsonRows([]string{"a\x00b"}, func(s string) []any { return []any{s} }, func(s string) []string { return []string{s} }); ok {
		t.Error("jsonRows accepted a NUL byte")
	}
}

func TestDuplicatesJSONQuerySearchesTheIndex(t *testing.T) {
	s := openSingle(t)
	plan, err := queryplantest.Explain(context.Background(), s.DB(), duplicatesJSONQuery, `[["r1","s",1]]`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, "SEARCH e USING COVERING INDEX sqlite_autoindex_events") {
		t.Errorf("plan %q: want a search of the events' unique index per key", plan)
	}
}
