package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

func openT(t *testing.T, path string, opts Options) *Queue {
	t.Helper()
	q, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func data(seq uint64, s string) []byte { return []byte(fmt.Sprintf(`{"sequence":%d,"x":%q}`, seq, s)) }

func push(t *testing.T, q *Queue, c Class, s string) Item {
	t.Helper()
	typ := protocol.TypeEvent
	if c == Telemetry {
		typ = protocol.TypeTelemetry
	}
	it, stored, err := q.Append(c, typ, func(seq uint64) ([]byte, error) { return data(seq, s), nil })
	if err != nil {
		t.Fatalf("Append %s %q: %v", c, s, err)
	}
	if !stored {
		t.Fatalf("Append %s %q was dropped, want stored", c, s)
	}
	return it
}

func seqsOf(items []Item) []uint64 {
	out := []uint64{}
	for _, it := range items {
		out = append(out, it.Seq)
	}
	return out
}

func pending(t *testing.T, q *Queue) []Item {
	t.Helper()
	items, err := q.Pending()
	if err != nil {
		t.Fatal(err)
	}
	return items
}

func TestReopenKeepsStreamItemsAndSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", FileName)
	q, err := Open(path, Options{SeqBlock: 10})
	if err != nil {
		t.Fatal(err)
	}
	stream := q.Stream()
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(stream) {
		t.Fatalf("stream %q is not 16 random bytes in hex", stream)
	}
	hb, _ := q.NextSeq()
	e1 := push(t, q, Event, "boot")
	t1 := push(t, q, Telemetry, "cpu 12%")
	e2 := push(t, q, Event, "teleop")
	if hb != 1 || e1.Seq != 2 || t1.Seq != 3 || e2.Seq != 4 {
		t.Fatalf("sequences %d %d %d %d, want 1 2 3 4", hb, e1.Seq, t1.Seq, e2.Seq)
	}
	if n, err := q.Ack(e1.Seq); n != 1 || err != nil {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	want := pending(t, q)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q2 := openT(t, path, Options{SeqBlock: 10})
	if q2.Stream() != stream {
		t.Fatalf("stream after reopen = %q, want %q", q2.Stream(), stream)
	}
	got := pending(t, q2)
	if !reflect.DeepEqual(got, want) || len(got) != 2 {
		t.Fatalf("pending after reopen = %+v, want %+v", got, want)
	}
	if got[0].Type != protocol.TypeTelemetry || got[0].Class != Telemetry || string(got[0].Data) != string(data(3, "cpu 12%")) {
		t.Fatalf("first pending item = %+v", got[0])
	}
	next, _ := q2.NextSeq()
	// Block of 10 reserved 1..10 before the restart: numbering continues at 11.
	if next != 11 {
		t.Fatalf("first sequence after reopen = %d, want 11 (above the reserved block)", next)
	}
	if s := q2.Stats(); s.Pending != 2 {
		t.Fatalf("stats after reopen = %+v, want 2 pending", s)
	}
}

func TestSequenceNeverGoesBackwardsAcrossReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	var last uint64
	writes := 0
	for round := range 25 {
		q, err := Open(path, Options{SeqBlock: 4, NoSync: round%2 == 0})
		if err != nil {
			t.Fatal(err)
		}
		for i := range round % 7 {
			var s uint64
			if i%2 == 0 {
				s, err = q.NextSeq()
			} else {
				var it Item
				it, _, err = q.Append(Event, protocol.TypeEvent, func(seq uint64) ([]byte, error) { return data(seq, "e"), nil })
				s = it.Seq
				writes++
			}
			if err != nil {
				t.Fatal(err)
			}
			if s <= last {
				t.Fatalf("round %d: sequence %d after %d", round, s, last)
			}
			last = s
		}
		q.Close()
	}
	q := openT(t, path, Options{})
	if got := len(pending(t, q)); got != writes {
		t.Fatalf("%d items pending, want %d", got, writes)
	}
}

func TestAckAndPendingOrder(t *testing.T) {
	q := openT(t, filepath.Join(t.TempDir(), FileName), Options{})
	var seqs []uint64
	for i := range 6 {
		c := Event
		if i%2 == 0 {
			c = Telemetry
		}
		seqs = append(seqs, push(t, q, c, fmt.Sprint(i)).Seq)
	}
	n, err := q.Ack(seqs[4], seqs[1], 999, seqs[1]) // out of order, unknown, duplicate
	if err != nil || n != 2 {
		t.Fatalf("Ack = %d, %v; want 2 removed", n, err)
	}
	if got, want := seqsOf(pending(t, q)), []uint64{seqs[0], seqs[2], seqs[3], seqs[5]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pending = %v, want %v", got, want)
	}
	after, err := q.PendingAfter(seqs[2], 1)
	if err != nil || !reflect.DeepEqual(seqsOf(after), []uint64{seqs[3]}) {
		t.Fatalf("PendingAfter(%d, 1) = %v, %v; want [%d]", seqs[2], seqsOf(after), err, seqs[3])
	}
	if n, err := q.Ack(); n != 0 || err != nil {
		t.Fatalf("empty Ack = %d, %v", n, err)
	}
	if s := q.Stats(); s.Pending != 4 {
		t.Fatalf("stats = %+v, want 4 pending", s)
	}
	if _, err := q.Ack(seqs...); err != nil {
		t.Fatal(err)
	}
	if s, b := q.Stats(), q.Bytes(); s.Pending != 0 || b != 0 {
		t.Fatalf("after acking everything: stats %+v, bytes %d; want empty", s, b)
	}
}

// TestEvictionTelemetryBeforeEvents walks the class rules with a queue of
// three items.
func TestEvictionTelemetryBeforeEvents(t *testing.T) {
	T, E := Telemetry, Event
	tests := []struct {
		name        string
		fill        []Class
		add         Class
		wantStored  bool
		wantClasses []Class // queue content after, oldest first
		wantEvicted int     // index into fill of the evicted item, -1 none
		wantDropT   uint64
		wantDropE   uint64
	}{
		{name: "event evicts oldest telemetry", fill: []Class{E, T, T}, add: E, wantStored: true, wantClasses: []Class{E, T, E}, wantEvicted: 1, wantDropT: 1},
		{name: "telemetry evicts oldest telemetry", fill: []Class{T, E, T}, add: T, wantStored: true, wantClasses: []Class{E, T, T}, wantEvicted: 0, wantDropT: 1},
		{name: "event evicts oldest event when no telemetry", fill: []Class{E, E, E}, add: E, wantStored: true, wantClasses: []Class{E, E, E}, wantEvicted: 0, wantDropE: 1},
		{name: "telemetry dropped when only events", fill: []Class{E, E, E}, add: T, wantStored: false, wantClasses: []Class{E, E, E}, wantEvicted: -1, wantDropT: 1},
		{name: "room left: nothing evicted", fill: []Class{E, T}, add: T, wantStored: true, wantClasses: []Class{E, T, T}, wantEvicted: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := openT(t, filepath.Join(t.TempDir(), FileName), Options{MaxItems: 3})
			var filled []Item
			for i, c := range tt.fill {
				filled = append(filled, push(t, q, c, fmt.Sprint(i)))
			}
			typ := protocol.TypeEvent
			if tt.add == Telemetry {
				typ = protocol.TypeTelemetry
			}
			it, stored, err := q.Append(tt.add, typ, func(seq uint64) ([]byte, error) { return data(seq, "new"), nil })
			if err != nil || stored != tt.wantStored {
				t.Fatalf("Append = stored %v, %v; want stored %v", stored, err, tt.wantStored)
			}
			got := pending(t, q)
			var classes []Class
			for _, g := range got {
				classes = append(classes, g.Class)
				if tt.wantEvicted >= 0 && g.Seq == filled[tt.wantEvicted].Seq {
					t.Errorf("item %d (%s) should have been evicted", g.Seq, g.Class)
				}
			}
			if !reflect.DeepEqual(classes, tt.wantClasses) {
				t.Fatalf("classes after = %v, want %v", classes, tt.wantClasses)
			}
			if stored && got[len(got)-1].Seq != it.Seq {
				t.Fatalf("new item %d is not the newest pending (%v)", it.Seq, seqsOf(got))
			}
			if s := q.Stats(); s.DroppedTelemetry != tt.wantDropT || s.DroppedEvents != tt.wantDropE || s.Pending != len(tt.wantClasses) {
				t.Fatalf("stats = %+v, want dropped telemetry %d, events %d, pending %d", s, tt.wantDropT, tt.wantDropE, len(tt.wantClasses))
			}
		})
	}
}

func TestByteBound(t *testing.T) {
	small := func(seq uint64) ([]byte, error) { return make([]byte, 100), nil }
	big := func(seq uint64) ([]byte, error) { return make([]byte, 250), nil }
	// Each small item takes 8 (key) + 3 + len(type) + 100 bytes.
	q := openT(t, filepath.Join(t.TempDir(), FileName), Options{MaxBytes: 400})
	for range 3 {
		if _, ok, err := q.Append(Telemetry, protocol.TypeTelemetry, small); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	// 3 x 120 = 360 bytes; a 270-byte event must evict two telemetry items.
	if _, ok, err := q.Append(Event, protocol.TypeEvent, big); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if s, b := q.Stats(), q.Bytes(); s.Pending != 2 || s.DroppedTelemetry != 2 || b > 400 {
		t.Fatalf("stats %+v, bytes %d; want 2 pending, 2 telemetry dropped, <= 400 bytes", s, b)
	}
	huge := func(seq uint64) ([]byte, error) { return make([]byte, 500), nil }
	if _, _, err := q.Append(Event, protocol.TypeEvent, huge); !errors.Is(err, ErrItemTooBig) {
		t.Fatalf("Append of an item over the whole bound = %v, want ErrItemTooBig", err)
	}
	if s := q.Stats(); s.Pending != 2 {
		t.Fatalf("a refused item changed the queue: %+v", s)
	}
}

func TestDropCountsPersistAndAreReportedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	q, err := Open(path, Options{MaxItems: 2})
	if err != nil {
		t.Fatal(err)
	}
	push(t, q, Event, "a")
	push(t, q, Event, "b")
	if _, stored, _ := q.Append(Telemetry, protocol.TypeTelemetry, func(seq uint64) ([]byte, error) { return data(seq, "t"), nil }); stored {
		t.Fatal("telemetry stored in a queue full of events")
	}
	push(t, q, Event, "c") // evicts event a
	q.Close()

	q = openT(t, path, Options{MaxItems: 2})
	if s := q.Stats(); s.DroppedTelemetry != 1 || s.DroppedEvents != 1 {
		t.Fatalf("drop counts after reopen = %+v, want 1 and 1", s)
	}
	report := func(seq uint64, d protocol.QueueDroppedData) ([]byte, error) {
		env, err := protocol.New(protocol.TypeEvent, "r1", seq, time.Now(), protocol.Event{Kind: protocol.EventQueueDropped, Data: mustJSON(t, d)})
		if err != nil {
			return nil, err
		}
		return protocol.Encode(env)
	}
	// The queue (2 items) is full: the report waits rather than evict.
	if _, queued, err := q.AppendDropReport(report); queued || err != nil {
		t.Fatalf("AppendDropReport on a full queue = %v, %v; want nothing queued", queued, err)
	}
	if s := q.Stats(); s.DroppedEvents != 1 || s.Pending != 2 {
		t.Fatalf("a report on a full queue changed it: %+v", s)
	}
	items := pending(t, q)
	q.Ack(items[0].Seq)
	it, queued, err := q.AppendDropReport(report)
	if err != nil || !queued {
		t.Fatalf("AppendDropReport with room = %v, %v; want queued", queued, err)
	}
	if got := reportTotals(t, it); got != (protocol.QueueDroppedData{Telemetry: 1, Events: 1}) {
		t.Fatalf("report totals = %+v, want 1 and 1", got)
	}
	if _, queued, err := q.AppendDropReport(report); queued || err != nil {
		t.Fatalf("second AppendDropReport = %v, %v; want nothing new to report", queued, err)
	}
	push(t, q, Event, "d") // evicts "c", the oldest event
	q.Ack(seqsOf(pending(t, q))...)
	it, queued, err = q.AppendDropReport(report)
	if err != nil || !queued {
		t.Fatalf("AppendDropReport after a new drop = %v, %v; want queued", queued, err)
	}
	if got := reportTotals(t, it); got != (protocol.QueueDroppedData{Telemetry: 1, Events: 2}) {
		t.Fatalf("second report totals = %+v, want telemetry 1, events 2", got)
	}
}

func reportTotals(t *testing.T, it Item) protocol.QueueDroppedData {
	t.Helper()
	env, err := protocol.Decode(it.Data)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := protocol.DecodePayload[protocol.Event](env)
	if err != nil || ev.Kind != protocol.EventQueueDropped {
		t.Fatalf("report event %+v, %v", ev, err)
	}
	var d protocol.QueueDroppedData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestOpenErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	openT(t, path, Options{})
	_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open of a held queue = %v, want a lock error", err)
	}
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
