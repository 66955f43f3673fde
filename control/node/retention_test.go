package node

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// A node with a short retention interval compacts old telemetry by itself,
// through its committer, and keeps the robot's other events.
func TestNodeRunsRetentionOnSchedule(t *testing.T) {
	cfg := Defaults()
	cfg.Insecure = true
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.DBAddress = freeAddr(t)
	cfg.RetentionInterval = time.Second
	cfg.Discovery = false // no mDNS multicast on the host's interfaces
	ctx := context.Background()
	n, err := Start(ctx, cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(ctx)

	// Two days of telemetry every minute: the day-old part is thinned to one
	// per hour, the last hour kept whole.
	now := time.Now().UTC()
	start := now.Add(-48 * time.Hour)
	events := []store.Event{{RobotID: "kiwi-1", Type: store.TypeRobotConnected, Time: start, Data: json.RawMessage(`{"session":"s1"}`)}}
	for i := 0; i < 48*60; i++ {
		data, _ := json.Marshal(protocol.Telemetry{UptimeSeconds: float64(i * 60)})
		events = append(events, store.Event{RobotID: "kiwi-1", Type: store.TypeTelemetryReported, Time: start.Add(time.Duration(i) * time.Minute),
			Data: data, Stream: "s", RobotSeq: uint64(i + 1)})
	}
	for len(events) > 0 {
		k := min(len(events), store.MaxAppendBatch)
		if _, err := n.Store().Append(ctx, events[:k]); err != nil {
			t.Fatal(err)
		}
		events = events[k:]
	}
	count := func() (tele, other int) {
		if err := n.Store().DB().QueryRow(`SELECT count(*) FROM events WHERE type = ?`, store.TypeTelemetryReported).Scan(&tele); err != nil {
			t.Fatal(err)
		}
		if err := n.Store().DB().QueryRow(`SELECT count(*) FROM events WHERE type != ?`, store.TypeTelemetryReported).Scan(&other); err != nil {
			t.Fatal(err)
		}
		return
	}
	_, otherBefore := count() // RobotRegistered and RobotConnected
	deadline := time.Now().Add(30 * time.Second)
	for {
		tele, other := count()
		// At most: 60 (last hour) + 6×23 (10-minute tier) + 24 (hourly) + 3 protected.
		if tele <= 60+6*23+24+3+2 {
			if other != otherBefore {
				t.Fatalf("retention touched non-telemetry events: %d left of %d", other, otherBefore)
			}
			if tele < 60 {
				t.Fatalf("retention kept %d telemetry events, fewer than the last hour's 60", tele)
			}
			t.Logf("retention kept %d of %d telemetry events", tele, 48*60)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("telemetry not compacted within 30 s: %d events", tele)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if mm, err := n.Store().Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("projection after scheduled retention: %v %v", mm, err)
	}
}
