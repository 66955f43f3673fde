package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/stream"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// Knobs of BenchmarkStreamFanout (environment, so `make`-style runs can
// scale it without editing code).
func streamBenchKnobs() (robots, subscribers int, interval, duration time.Duration) {
	robots, subscribers, interval, duration = 1000, 100, time.Second, 10*time.Second
	if v, err := strconv.Atoi(os.Getenv("STREAM_BENCH_ROBOTS")); err == nil && v > 0 {
		robots = v
	}
	if v, err := strconv.Atoi(os.Getenv("STREAM_BENCH_SUBSCRIBERS")); err == nil && v > 0 {
		subscribers = v
	}
	if v, err := time.ParseDuration(os.Getenv("STREAM_BENCH_INTERVAL")); err == nil && v > 0 {
		interval = v
	}
	if v, err := time.ParseDuration(os.Getenv("STREAM_BENCH_DURATION")); err == nil && v > 0 {
		duration = v
	}
	return
}

// streamClientResult is what the subscriber process reports.
type streamClientResult struct {
	Frames    int     `json:"frames"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	CPUSecond float64 `json:"cpu_seconds"`
	Errors    int     `json:"errors"`
}

// BenchmarkStreamFanout: 100 dashboard subscribers of robot.*.heartbeat on
// a 1,000-robot fleet. The control side (the /v1/stream hub and its
// WebSocket server, fed exactly as the gateway feeds it) runs in this
// process; the subscribers run in a child process, so this process's CPU
// is control's. The seed's 30 s heartbeat interval is compressed to 1 s
// (30× the real load: 1,000 heartbeats/s in, 100,000 frames/s out).
// Latency is publish → frame decoded by a subscriber (same host clock).
//
//	go test -tags libsqlite3 -run '^$' -bench StreamFanout -benchtime 1x ./testbench/bench
func BenchmarkStreamFanout(b *testing.B) {
	robots, subscribers, interval, duration := streamBenchKnobs()
	for range b.N {
		runStreamFanout(b, robots, subscribers, interval, duration, "")
		runStreamFanout(b, robots, subscribers, interval, duration, `{"rate":0.2,"strategy":"latest"}`)
	}
}

func runStreamFanout(b *testing.B, robots, subscribers int, interval, duration time.Duration, throttle string) {
	ctx, cancel := context.WithTimeout(context.Background(), duration+2*time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	hub := stream.NewHub(stream.Options{MaxClients: subscribers + 10, Registerer: reg})
	go func() { _ = hub.Run(ctx) }()
	srv := httptest.NewServer(hub)
	defer srv.Close()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestStreamBenchSubscribers$", "-test.v")
	cmd.Env = append(os.Environ(), "STREAM_BENCH_URL=ws"+strings.TrimPrefix(srv.URL, "http"),
		"STREAM_BENCH_N="+strconv.Itoa(subscribers), "STREAM_BENCH_FOR="+duration.String(), "STREAM_BENCH_THROTTLE="+throttle)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatalf("start subscriber process: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for hub.Clients() < subscribers && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if hub.Clients() < subscribers {
		b.Fatalf("only %d of %d subscribers connected: %s", hub.Clients(), subscribers, out.String())
	}
	time.Sleep(500 * time.Millisecond) // let subscriptions land

	// The fleet: robot i beats at i/robots of the interval, every interval.
	ids := make([]string, robots)
	for i := range ids {
		ids[i], _ = robotsim.RobotID(i)
	}
	cpu0, _ := lab.ReadProcCPU(os.Getpid())
	start := time.Now()
	published := 0
	// Paced by the clock, not by ticks: a late tick publishes what is owed.
	const step = 5 * time.Millisecond
	tick := time.NewTicker(step)
	next := 0
	for time.Since(start) < duration {
		<-tick.C
		owed := int(float64(robots) * float64(time.Since(start)) / float64(interval))
		for ; published < owed; published++ {
			hub.Publish(stream.HeartbeatMessage(ids[next], "bench", time.Now(), protocol.Heartbeat{UptimeSeconds: float64(published)}))
			next = (next + 1) % robots
		}
	}
	tick.Stop()
	elapsed := time.Since(start)
	cpu1, _ := lab.ReadProcCPU(os.Getpid())
	if err := cmd.Wait(); err != nil {
		b.Fatalf("subscriber process: %v\n%s", err, out.String())
	}
	var res streamClientResult
	for _, line := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "STREAM_BENCH_RESULT "); ok {
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				b.Fatal(err)
			}
		}
	}
	if res.Frames == 0 {
		b.Fatalf("subscribers received nothing:\n%s", out.String())
	}
	name := "robot.*.heartbeat, unthrottled"
	if throttle != "" {
		name = "robot.*.heartbeat, throttle " + throttle
	}
	controlCPU := (cpu1 - cpu0).Seconds() / elapsed.Seconds() * 100
	fmt.Printf("\n/v1/stream fan-out: %s\n", name)
	fmt.Printf("| %-44s | %s |\n|---|---|\n", "measure", "value")
	fmt.Printf("| %-44s | %d robots, heartbeat every %s (seed 30 s) |\n", "fleet", robots, interval)
	fmt.Printf("| %-44s | %d |\n", "subscribers", subscribers)
	fmt.Printf("| %-44s | %d in %s (%.0f/s) |\n", "heartbeats published", published, elapsed.Round(time.Millisecond), float64(published)/elapsed.Seconds())
	fmt.Printf("| %-44s | %d (%.0f/s) |\n", "frames delivered (all subscribers)", res.Frames, float64(res.Frames)/elapsed.Seconds())
	fmt.Printf("| %-44s | %.1f %% of one core |\n", "control CPU (hub + WebSocket writes)", controlCPU)
	fmt.Printf("| %-44s | %.1f %% of one core |\n", "subscriber process CPU", res.CPUSecond/elapsed.Seconds()*100)
	fmt.Printf("| %-44s | %.2f / %.2f / %.2f ms |\n", "delivery latency p50 / p99 / max", res.P50, res.P99, res.Max)
	fmt.Printf("| %-44s | %.0f / %.0f |\n", "slow-subscriber switches / frames coalesced", counter(b, reg, "lekiwi_control_stream_lagging_total"), counter(b, reg, "lekiwi_control_stream_coalesced_total"))
	fmt.Printf("| %-44s | %d |\n", "subscriber errors", res.Errors)
	b.ReportMetric(controlCPU, "control-cpu-%")
	b.ReportMetric(res.P99, "p99-ms")
}

func counter(b *testing.B, g prometheus.Gatherer, name string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestStreamBenchSubscribers is the subscriber side of BenchmarkStreamFanout,
// run in a child process; it skips unless the benchmark started it.
func TestStreamBenchSubscribers(t *testing.T) {
	url := os.Getenv("STREAM_BENCH_URL")
	if url == "" {
		t.Skip("subscriber process of BenchmarkStreamFanout; not a test on its own")
	}
	n, _ := strconv.Atoi(os.Getenv("STREAM_BENCH_N"))
	dur, _ := time.ParseDuration(os.Getenv("STREAM_BENCH_FOR"))
	sub := `{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"]}`
	if th := os.Getenv("STREAM_BENCH_THROTTLE"); th != "" {
		sub = `{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"],"throttle":` + th + `}`
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	var (
		mu     sync.Mutex
		lat    []time.Duration
		frames int
		errs   int
		wg     sync.WaitGroup
	)
	cpu0, _ := lab.ReadProcCPU(os.Getpid())
	stop := time.Now().Add(dur + 2*time.Second)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := websocket.Dial(ctx, url, nil)
			if err != nil {
				mu.Lock()
				errs++
				mu.Unlock()
				return
			}
			defer c.CloseNow()
			c.SetReadLimit(1 << 20)
			if err := c.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
				return
			}
			var mine []time.Duration
			count := 0
			var f struct {
				Type string    `json:"type"`
				Time time.Time `json:"time"`
			}
			for time.Now().Before(stop) {
				rctx, rcancel := context.WithDeadline(ctx, stop)
				_, b, err := c.Read(rctx)
				rcancel()
				if err != nil {
					break
				}
				now := time.Now()
				if json.Unmarshal(b, &f) != nil || f.Type != "message" {
					continue
				}
				count++
				mine = append(mine, now.Sub(f.Time))
			}
			mu.Lock()
			lat = append(lat, mine...)
			frames += count
			mu.Unlock()
		}()
	}
	wg.Wait()
	cpu1, _ := lab.ReadProcCPU(os.Getpid())
	res := streamClientResult{Frames: frames, Errors: errs, CPUSecond: (cpu1 - cpu0).Seconds()}
	if len(lat) > 0 {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		res.P50, res.P99, res.Max = ms(lab.Percentile(lat, 50)), ms(lab.Percentile(lat, 99)), ms(lab.Percentile(lat, 100))
	}
	b, _ := json.Marshal(res)
	fmt.Printf("STREAM_BENCH_RESULT %s\n", b)
}
