// Command fleet is the lab tool: `fleet demo` runs a control node with a
// simulated fleet (what `make run` starts), `fleet bench` measures ingest,
// latency and memory.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/testbench/bench"
	"github.com/lekiwi/heartbeat/testbench/demo"
)

func main() {
	root := &cobra.Command{Use: "fleet", Short: "Lekiwi Heartbeat lab: simulated fleets and benchmarks", SilenceUsage: true}
	root.AddCommand(newDemo(), newBench(), newReconnect(), newEvents())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newDemo() *cobra.Command {
	o := demo.Options{Out: os.Stdout}
	var verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run one control node and simulated robots until Ctrl-C",
		Long: `Starts a control node (dqlite data in --data-dir, reused across runs) and
--robots simulated robots (LeKiwi and XLE mixed, each the real agent runtime
with its own fixture /proc tree and on-disk queue, over real sockets). Prints
the API URL and a live online count. Ctrl-C stops robots, then the node.`,
		Example: `  fleet demo --robots 50 --data-dir .run/control
  curl http://127.0.0.1:8080/v1/robots?state=online`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelInfo
			}
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signalContext()
			defer stop()
			return demo.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Robots, "robots", 50, "number of simulated robots")
	f.StringVar(&o.DataDir, "data-dir", ".run/control", "control node data directory (robot state goes beside it)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "HTTP address of the control node")
	f.StringVar(&o.DBAddress, "db-address", "127.0.0.1:9001", "dqlite address of the control node")
	f.DurationVar(&o.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "heartbeat interval robots are told to use")
	f.BoolVarP(&verbose, "verbose", "v", false, "log connections and state changes")
	return cmd
}

func newBench() *cobra.Command {
	o := bench.Options{Out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure heartbeat ingest, ack latency and memory with N simulated robots",
		Long: `Starts bin/control as a separate process (so its memory is its own), connects
--robots simulated robots from this process, and measures: control RSS per
connection, heartbeat ingest rate and ack latency p50/p99 over --duration, and a
real agent process's RSS and CPU at steady state. Prints a Markdown table for
docs/BENCHMARKS.md.`,
		Example: `  fleet bench --robots 1000 --duration 30s --control-binary bin/control --agent-binary bin/agent`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			res, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintln(o.Out, res.Table())
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Robots, "robots", 1000, "simulated robots")
	f.DurationVar(&o.Duration, "duration", 30*time.Second, "measurement window once all robots are online")
	f.DurationVar(&o.HeartbeatInterval, "heartbeat-interval", time.Second, "heartbeat interval control tells robots (production: 30s)")
	f.StringVar(&o.ControlBinary, "control-binary", "bin/control", "control binary to run")
	f.StringVar(&o.AgentBinary, "agent-binary", "bin/agent", "agent binary to measure")
	return cmd
}

func newReconnect() *cobra.Command {
	o := bench.ReconnectOptions{Out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "bench-reconnect",
		Short: "Restart a control node under N mTLS robots and time the reconnect storm",
		Long: `Starts bin/control as a child process with a fleet CA, connects --robots
simulated robots with mTLS (TLS 1.3), then restarts the control node and
measures how long the whole fleet takes to come back and what it costs the
node, with TLS session resumption on (default) or off.`,
		Example: `  fleet bench-reconnect --robots 5000
  fleet bench-reconnect --robots 5000 --no-resumption`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			res, err := bench.RunReconnect(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintln(o.Out, res.Table())
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Robots, "robots", 5000, "simulated robots")
	f.StringVar(&o.ControlBinary, "control-binary", "bin/control", "control binary to run")
	f.BoolVar(&o.NoResumption, "no-resumption", false, "disable TLS session resumption on the robots")
	return cmd
}

func newEvents() *cobra.Command {
	var robots int
	var duration time.Duration
	var rate float64
	cmd := &cobra.Command{
		Use:   "bench-events",
		Short: "Durable events/s on a 3-node cluster, group commit vs one transaction per event",
		Long: `Starts a three-node control cluster in this process (mTLS, lab CA) and
--robots simulated robots emitting events as fast as their send window allows,
twice: with one transaction per event, then with group commit (up to 64 events
per transaction). Reports acknowledged (durable) events per second and the
latency of GET /v1/robots/{id} on another node during the load. A third run
paces the fleet at --rate events/s with group commit: query latency at a steady
load instead of at the throughput limit.`,
		Example: "  fleet bench-events --robots 200 --duration 20s",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			var rs []bench.EventsResult
			for _, batch := range []int{1, 64} {
				r, err := bench.RunEvents(ctx, bench.EventsOptions{Robots: robots, Duration: duration, MaxBatch: batch, Out: os.Stdout})
				if err != nil {
					return err
				}
				fmt.Printf("batch %d: %.0f events/s\n", batch, r.EventsPerSec)
				rs = append(rs, r)
			}
			if rate > 0 {
				r, err := bench.RunEvents(ctx, bench.EventsOptions{Robots: robots, Duration: duration, MaxBatch: 64, Rate: rate, Out: os.Stdout})
				if err != nil {
					return err
				}
				fmt.Printf("paced at %.0f/s: %.0f events/s\n", rate, r.EventsPerSec)
				rs = append(rs, r)
			}
			fmt.Println(bench.EventsTable(rs...))
			if rs[0].EventsPerSec > 0 {
				fmt.Printf("group commit / one transaction per event: %.1fx\n", rs[1].EventsPerSec/rs[0].EventsPerSec)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&robots, "robots", 200, "simulated robots emitting events")
	cmd.Flags().DurationVar(&duration, "duration", 20*time.Second, "measurement window per mode")
	cmd.Flags().Float64Var(&rate, "rate", 500, "events/s of the paced run (0 skips it)")
	return cmd
}
