package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// EventsOptions configure RunEvents.
type EventsOptions struct {
	Robots   int
	Duration time.Duration
	MaxBatch int // events per transaction; 1 = no group commit
	// Rate, when set, paces the fleet to this many events per second in
	// total instead of saturating the cluster: query latency at a steady
	// load rather than at the throughput limit.
	Rate float64
	Out  io.Writer
}

// EventsResult holds one run's figures.
type EventsResult struct {
	Robots       int
	MaxBatch     int
	Rate         float64 // 0: saturating
	Window       time.Duration
	EventsPerSec float64 // acknowledged (durable) events per second
	QueryP50     time.Duration
	QueryP99     time.Duration
	Queries      int
}

// RunEvents starts a three-node cluster in this process, has every
// robot emit events as fast as its window allows, and measures durable
// events per second and GET /v1/robots/{id} latency on another node.
func RunEvents(ctx context.Context, o EventsOptions) (EventsResult, error) {
	res := EventsResult{Robots: o.Robots, MaxBatch: o.MaxBatch, Rate: o.Rate, Window: o.Duration}
	dir, err := os.MkdirTemp("", "lekiwi-events-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	var nodes []*node.Node
	defer func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			nodes[i].Close(cctx)
			cancel()
		}
	}()
	var join []string
	for i := range 3 {
		n, err := lab.StartControl(ctx, lab.ControlOptions{Dir: filepath.Join(dir, fmt.Sprintf("c%d", i)), Join: join, MaxBatch: o.MaxBatch, HeartbeatInterval: 5 * time.Second,
			// The probe polls every 20 ms, above the API's default 20/s per
			// principal: rate-limited answers retried after 100 ms were
			// once reported as 100 ms query latency.
			RateLimit: 1000})
		if err != nil {
			return res, err
		}
		nodes = append(nodes, n)
		join = append(join, n.Config().DBAddress)
	}
	var acked atomic.Int64
	var measuring atomic.Bool
	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, Servers: []string{nodes[0].URL()}, Dir: filepath.Join(dir, "fleet"), CA: nodes[0].CA(),
		TelemetrySampleInterval: time.Minute, TelemetryMinInterval: time.Hour,
		OnAck: func(_ *robotsim.Robot, _ uint64, t protocol.Type, _ time.Duration) {
			if t == protocol.TypeEvent && measuring.Load() {
				acked.Add(1)
			}
		},
	})
	if err != nil {
		return res, err
	}
	defer fleet.Stop()
	if err := fleet.Start(ctx, 0); err != nil {
		return res, err
	}
	if _, err := waitConnected(ctx, fleet, o.Robots, time.Minute); err != nil {
		return res, err
	}
	api, err := lab.NewAPIClient(ctx, nodes[1], "operator")
	if err != nil {
		return res, err
	}
	api.HTTP.Timeout = 10 * time.Second
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, r := range fleet.Robots() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.Rate > 0 {
				// Paced: each robot its share of the rate, phases spread.
				every := time.Duration(float64(time.Second) * float64(o.Robots) / o.Rate)
				time.Sleep(time.Duration(rand.Int64N(int64(every))))
				t := time.NewTicker(every)
				defer t.Stop()
				for {
					select {
					case <-wctx.Done():
						return
					case <-t.C:
					}
					if err := r.Emit(wctx, protocol.Event{Kind: "bench.tick"}); err != nil {
						return
					}
				}
			}
			// Keep about a window's worth queued per robot: the agent sends
			// at most 256 unacknowledged.
			for wctx.Err() == nil {
				if r.Stats().Queue.Pending > 200 {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				if err := r.Emit(wctx, protocol.Event{Kind: "bench.tick"}); err != nil && !errors.Is(err, context.Canceled) {
					return
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // ramp
	measuring.Store(true)
	start := time.Now()
	var lat []time.Duration
	robots := fleet.Robots()
	for i := 0; time.Since(start) < o.Duration; i++ {
		t0 := time.Now()
		var out map[string]any
		if err := api.Get(ctx, "/v1/robots/"+robots[i%len(robots)].ID, &out); err != nil {
			stop()
			wg.Wait()
			return res, fmt.Errorf("state query under load: %w", err)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	measuring.Store(false)
	stop()
	wg.Wait()
	res.EventsPerSec = float64(acked.Load()) / elapsed.Seconds()
	res.Queries = len(lat)
	res.QueryP50, res.QueryP99 = lab.Percentile(lat, 50), lab.Percentile(lat, 99)
	return res, nil
}

// Table renders results side by side.
func EventsTable(rs ...EventsResult) string {
	var b strings.Builder
	b.WriteString("| events per transaction | robots | offered load | durable events/s | state query p50 / p99 (n) |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		load := "saturating"
		if r.Rate > 0 {
			load = fmt.Sprintf("%.0f events/s", r.Rate)
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %.0f | %s / %s (%d) |\n", r.MaxBatch, r.Robots, load, r.EventsPerSec, r.QueryP50.Round(time.Microsecond), r.QueryP99.Round(time.Microsecond), r.Queries)
	}
	return b.String()
}
