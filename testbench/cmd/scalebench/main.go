// Command scalebench runs the scale scenarios (`make
// bench-scale`): `scalebench run` orchestrates control processes and
// re-executes itself as `scalebench sim` (simulated robots) and
// `scalebench subs` (dashboard subscribers) child processes, so that no
// process exceeds the open-file limit and each one's cost is measured on
// its own.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/testbench/scale"
)

func main() {
	root := &cobra.Command{Use: "scalebench", Short: "Lekiwi Heartbeat scale scenarios", SilenceUsage: true}
	root.AddCommand(newRun(), newReport(), newSim(), newSubs())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

// raiseFileLimit lifts the soft open-file limit to the hard one; children
// inherit it.
func raiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("raise open-file limit to %d: %w", l.Max, err)
	}
	return l.Max, nil
}

func newRun() *cobra.Command {
	o := scale.Options{Out: os.Stdout}
	var sizes, intervals string
	var budget time.Duration
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the scale scenarios and write scale.md, scale.json and scale.png to --out",
		Long: `Single node (mTLS): for each --sizes, bin/control as a child process and the
fleet in simulator children of at most --per-process robots; the heartbeat
interval is ramped down (--intervals; each change restarts control, which is
the reconnect storm measured) until ack p99, CPU or ingest saturates. At the
first interval a second window runs with --subscribers dashboard subscribers
on /v1/stream. Then the cluster (--cluster-robots over --cluster-members,
0 skips it): every robot visible from every member, and a member restart.
Everything runs under --dir (removed after) and ends within --budget.`,
		Example: `  scalebench run --out bench-out --sizes 1000,5000
  scalebench run --out bench-out --skip-single --cluster-robots 50000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, err := raiseFileLimit()
			if err != nil {
				return err
			}
			if o.PerProcess*2+500 > int(limit) {
				return fmt.Errorf("--per-process %d needs ~%d open files per simulator, the limit is %d", o.PerProcess, o.PerProcess*2+500, limit)
			}
			if o.Sizes, err = parseInts(sizes); err != nil {
				return err
			}
			if o.Intervals, err = parseDurations(intervals); err != nil {
				return err
			}
			if o.WorkerBinary, err = os.Executable(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, budget)
			defer cancel()
			fmt.Printf("open-file limit per process %d; %d cores; writing to %s\n", limit, runtime.NumCPU(), o.OutDir)
			steps, err := scale.Run(ctx, o)
			fmt.Println(scale.Table(steps))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ControlBinary, "control-binary", "bin/control", "control binary")
	f.StringVar(&o.OutDir, "out", "", "directory for scale.md, scale.json, scale.png and logs (required)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temp dir, removed after)")
	f.StringVar(&sizes, "sizes", "1000,5000,10000,19000", "single-node fleet sizes")
	f.StringVar(&intervals, "intervals", "30s,10s,5s,2s,1s,500ms,250ms,100ms", "heartbeat intervals, ramped down until saturation")
	f.DurationVar(&o.Window, "window", 20*time.Second, "measurement window per step")
	f.IntVar(&o.PerProcess, "per-process", 8000, "robots per simulator process (2 open files each)")
	f.IntVar(&o.SourceAddrs, "source-addrs", 4, "simulator processes bind 127.0.0.2 ... 127.0.0.(1+N) (0: kernel's choice)")
	f.Float64Var(&o.ConnectRate, "connect-rate", 500, "robot connections per second, whole fleet")
	f.DurationVar(&o.ReconnectJitter, "reconnect-jitter", 10*time.Second, "robots' first-reconnect jitter (production 10 s)")
	f.DurationVar(&o.SaturationP99, "saturation-p99", 250*time.Millisecond, "ack p99 above which the ramp stops")
	f.Float64Var(&o.SaturationCPU, "saturation-cpu", 0.9, "fraction of all cores (control + simulators) at which the ramp stops")
	f.IntVar(&o.Subscribers, "subscribers", 100, "dashboard subscribers on /v1/stream in the extra window (0 skips)")
	f.StringVar(&o.SubscriberThrottle, "subscriber-throttle", `{"rate":0.2,"strategy":"latest"}`, "throttle of the subscribers' subscription (JSON)")
	f.IntVar(&o.ClusterRobots, "cluster-robots", 0, "robots across the cluster (0 skips the cluster scenario; issue target 50000)")
	f.IntVar(&o.ClusterMembers, "cluster-members", 4, "cluster members, all running the gateway (three voters, the rest standbys as dqlite assigns; 4 so that 50,000 robots fit on the survivors of a restart under the open-file limit)")
	f.DurationVar(&o.ClusterInterval, "cluster-interval", 30*time.Second, "heartbeat interval in the cluster scenario")
	f.Float64Var(&o.ClusterConnectRate, "cluster-connect-rate", 100, "robot connections per second to the cluster (50,000 at 100/s hold on one 2-core host; see docs/BENCHMARKS.md)")
	f.BoolVar(&o.SkipSingle, "skip-single", false, "skip the single-node scenario")
	f.DurationVar(&o.DBNetworkLatency, "db-network-latency", 0, "passed to every node: raft elections start after 15x this (raise it when the shared CPU starves the cluster)")
	f.IntVar(&o.StormHogs, "storm-hogs", 0, "busy-loop processes running during every reconnect storm (a storm on a machine whose CPU is already taken)")
	f.BoolVar(&o.SimProfile, "sim-profile", false, "profile every simulator process (cpu.pprof, heap.pprof under --out/<scenario>-sim<N>)")
	f.IntVar(&o.SimNice, "sim-nice", 0, "run the simulators at this nice value (1-19): they stand in for robots with their own CPUs, so let the control nodes have the cores first")
	f.BoolVar(&o.SQLProfile, "sql-profile", false, "time every control node's SQLite statements (LD_PRELOAD profiler, needs cc; <scenario>-<node>.sqlprof.tsv under --out)")
	f.DurationVar(&budget, "budget", 90*time.Minute, "the whole run ends (and cleans up) after this")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newReport() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:     "report FILE.json...",
		Short:   "Merge the scale.json of several runs into one scale.md and scale.png",
		Example: `  scalebench report --out merged run-1k/scale.json run-19k/scale.json`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var steps []scale.Step
			for _, path := range args {
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				var s []scale.Step
				if err := json.Unmarshal(b, &s); err != nil {
					return fmt.Errorf("%s: not a scale.json: %w", path, err)
				}
				steps = append(steps, s...)
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			md := scale.Table(steps)
			if err := os.WriteFile(filepath.Join(out, "scale.md"), []byte(md), 0o644); err != nil {
				return err
			}
			png, err := scale.Plot(steps)
			if err != nil {
				return err
			}
			fmt.Print(md)
			return os.WriteFile(filepath.Join(out, "scale.png"), png, 0o644)
		},
	}
	cmd.Flags().StringVar(&out, "out", ".", "directory for scale.md and scale.png")
	return cmd
}

func newSim() *cobra.Command {
	var o scale.WorkerOptions
	var local string
	cmd := &cobra.Command{
		Use:    "sim",
		Short:  "Simulator child: run robots and report status lines on stdout until stdin closes",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := raiseFileLimit(); err != nil {
				return err
			}
			if local != "" {
				a, err := netip.ParseAddr(local)
				if err != nil {
					return fmt.Errorf("--local-addr: %w", err)
				}
				o.LocalAddr = a
			}
			o.Status = os.Stdout
			ctx, cancel := childContext()
			defer cancel()
			return scale.RunWorker(ctx, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.FirstIndex, "first-index", 0, "number of the first robot")
	f.IntVar(&o.Robots, "robots", 0, "robots in this process")
	f.StringSliceVar(&o.Servers, "server", nil, "control base URL (repeatable; robots go round-robin on loss)")
	f.StringVar(&o.CADir, "ca-dir", "", "fleet CA directory")
	f.StringVar(&o.Dir, "dir", "", "robots' state directory")
	f.StringVar(&local, "local-addr", "", "source address of the robots' connections")
	f.Float64Var(&o.ConnectRate, "connect-rate", 0, "robot starts per second (0: all at once)")
	f.DurationVar(&o.ReconnectJitter, "reconnect-jitter", 10*time.Second, "first-reconnect jitter")
	f.StringVar(&o.ProfileDir, "profile-dir", "", "write cpu.pprof and heap.pprof of this simulator here")
	return cmd
}

func newSubs() *cobra.Command {
	var o scale.SubscribersOptions
	cmd := &cobra.Command{
		Use:    "subs",
		Short:  "Subscriber child: hold N /v1/stream subscribers and report status lines on stdout until stdin closes",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.N <= 0 || o.URL == "" {
				return errors.New("subs: --url and --n > 0 are required")
			}
			o.Status = os.Stdout
			ctx, cancel := childContext()
			defer cancel()
			return scale.RunSubscribers(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.URL, "url", "", "wss://host:port/v1/stream")
	f.StringVar(&o.Token, "token", "", "bearer token (read permission)")
	f.StringVar(&o.CADir, "ca-dir", "", "fleet CA directory (trust for the node's certificate)")
	f.IntVar(&o.N, "n", 100, "subscribers")
	f.StringVar(&o.Subscribe, "subscribe", `{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"]}`, "subscription frame")
	return cmd
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("--sizes: %q is not a positive whole number", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := time.ParseDuration(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("--intervals: %q is not a positive duration (e.g. 30s, 500ms)", f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("--intervals: at least one interval")
	}
	return out, nil
}

// childContext is a child process's lifetime: it ends on SIGINT or SIGTERM,
// or when the parent closes the child's stdin (the parent died or is done).
func childContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(ctx)
	scale.WatchStdin(cancel)
	return ctx, func() { cancel(); stop() }
}
