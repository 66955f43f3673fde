package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// BenchmarkIngest measures the leader's cost of folding telemetry into
// the tables: one op is 250 events from 250 robots = 1,000 samples
// (cpu, memory, disk, temperature each), in transactions of
// DefaultIngestBatch events. The events are appended outside the timer.
func BenchmarkIngest1000Samples(b *testing.B) {
	st := openBenchStore(b)
	tel, err := New(st, Options{Logger: quiet(), IngestBatch: benchBatch()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	for i := range b.N {
		b.StopTimer()
		var evs []store.Event
		for r := range 250 {
			data, _ := json.Marshal(protocol.Telemetry{Resources: protocol.Resources{CPUPercent: float64(r % 100), MemoryUsedBytes: 1, MemoryTotalBytes: 2, DiskUsedBytes: 1, DiskTotalBytes: 3, TemperatureC: temp(50)}})
			evs = append(evs, store.Event{RobotID: fmt.Sprintf("robot-%04d", r), Type: store.TypeTelemetryReported, Time: at.Add(time.Duration(i) * time.Millisecond), Data: data})
			if len(evs) == store.MaxAppendBatch {
				if _, err := st.Append(ctx, evs); err != nil {
					b.Fatal(err)
				}
				evs = nil
			}
		}
		if _, err := st.Append(ctx, evs); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		rep, err := tel.Ingest(ctx)
		if err != nil || rep.Samples != 1000 {
			b.Fatalf("%+v, %v", rep, err)
		}
	}
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func openBenchStore(b *testing.B) *store.Store {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	st, err := store.Open(context.Background(), store.Options{Dir: b.TempDir(), Address: addr, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

// benchBatch is TELEMETRY_BENCH_BATCH or the default.
func benchBatch() int {
	var n int
	fmt.Sscan(os.Getenv("TELEMETRY_BENCH_BATCH"), &n)
	return n
}
