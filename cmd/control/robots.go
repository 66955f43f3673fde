package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// output is the --output flag of the read commands: a table for people,
// JSON for scripts.
type output string

func (o output) check() error {
	if o != "table" && o != "json" {
		return fmt.Errorf("--output %q: want table or json", string(o))
	}
	return nil
}

func (o output) show(w io.Writer, v any, table func(*tabwriter.Writer)) error {
	if err := o.check(); err != nil {
		return err
	}
	if o == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// newRobots is `control robots ls|show`: the fleet as the local node's
// admin socket reports it (GET /v1/robots, /v1/robots/{id}).
func newRobots(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "robots",
		Short: "List robots and show one: state, versions, teleoperation, resources",
	}
	var out string
	cmd.PersistentFlags().StringVarP(&out, "output", "o", "table", "table or json")
	var state, typ string
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List robots", Args: cobra.NoArgs,
		Example: "  control robots ls --state online\n  control robots ls --type xle -o json | jq '.robots[].id'",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output(out).check(); err != nil {
				return err
			}
			robots, err := listRobots(cmd.Context(), f, state, typ)
			if err != nil {
				return err
			}
			return output(out).show(cmd.OutOrStdout(), api.RobotList{Robots: robots}, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tTYPE\tSTATE\tMODEL\tIMAGE\tAGENT\tOS\tTELEOP\tCPU\tMEM\tDISK\tTEMP\tLAST SEEN")
				for _, r := range robots {
					res := r.Resources
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Type, robotState(r), dash(r.Hardware.Model),
						dash(imageVersion(r.Deployment.Image)), dash(r.Deployment.AgentVersion), dash(r.Deployment.OSVersion), teleop(r.Teleoperation),
						fmt.Sprintf("%.0f%%", res.CPUPercent), share(res.MemoryUsedBytes, res.MemoryTotalBytes),
						share(res.DiskUsedBytes, res.DiskTotalBytes), temperature(res.TemperatureC), ago(r.Status.LastSeen))
				}
			})
		},
	}
	ls.Flags().StringVar(&state, "state", "", "only online or offline robots")
	ls.Flags().StringVar(&typ, "type", "", "only lekiwi or xle robots")
	_ = ls.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"online", "offline"}, cobra.ShellCompDirectiveNoFileComp))
	_ = ls.RegisterFlagCompletionFunc("type", cobra.FixedCompletions([]string{"lekiwi", "xle"}, cobra.ShellCompDirectiveNoFileComp))
	show := &cobra.Command{
		Use: "show ID", Short: "Show one robot", Args: cobra.ExactArgs(1),
		ValidArgsFunction: robotIDCompletion(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := output(out).check(); err != nil {
				return err
			}
			var r store.Robot
			if err := f.client().Do(cmd.Context(), "GET", "/v1/robots/"+url.PathEscape(args[0]), nil, &r); err != nil {
				return err
			}
			return output(out).show(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) { robotTable(tw, r) })
		},
	}
	cmd.AddCommand(ls, show)
	return cmd
}

// listRobots reads every page of GET /v1/robots.
func listRobots(ctx context.Context, f *adminFlags, state, typ string) ([]store.Robot, error) {
	robots := []store.Robot{}
	after := ""
	for page := 0; page < 10000; page++ { // 10 million robots: a runaway cursor, not a fleet
		q := url.Values{"limit": {strconv.Itoa(api.MaxLimit)}}
		for k, v := range map[string]string{"state": state, "type": typ, "after": after} {
			if v != "" {
				q.Set(k, v)
			}
		}
		var list api.RobotList
		if err := f.client().Do(ctx, "GET", "/v1/robots?"+q.Encode(), nil, &list); err != nil {
			return nil, err
		}
		robots = append(robots, list.Robots...)
		if list.Next == "" || list.Next == after {
			return robots, nil
		}
		after = list.Next
	}
	return nil, fmt.Errorf("list robots: the node kept returning pages; is it a compatible version?")
}

// robotIDCompletion completes robot ids from the local node, if it answers.
func robotIDCompletion(f *adminFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		robots, err := listRobots(ctx, f, "", "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var ids []string
		for _, r := range robots {
			if strings.HasPrefix(r.ID, prefix) {
				ids = append(ids, r.ID)
			}
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

func robotTable(tw *tabwriter.Writer, r store.Robot) {
	res := r.Resources
	rows := [][2]string{
		{"ID", r.ID},
		{"TYPE", string(r.Type)},
		{"STATE", robotState(r)},
		{"NODE", dash(r.Status.Node)},
		{"SINCE", stamp(r.Status.Since)},
		{"LAST SEEN", ago(r.Status.LastSeen)},
		{"UPTIME", dash(uptime(r.Status.UptimeSeconds))},
		{"MODEL", dash(r.Hardware.Model)},
		{"SERIAL", dash(r.Hardware.Serial)},
		{"HOSTNAME", dash(r.Network.Hostname)},
		{"IPS", dash(strings.Join(r.Network.IPs, ", "))},
		{"IMAGE", dash(imageVersion(r.Deployment.Image))},
	}
	if img := r.Deployment.Image; img != nil {
		rows = append(rows, [][2]string{
			{"IMAGE PROFILE", dash(img.Profile)},
			{"IMAGE BUILT", stamp(img.Created)},
			{"IMAGE SEED", dash(img.Seed)},
		}...)
	}
	rows = append(rows, [][2]string{
		{"AGENT", dash(r.Deployment.AgentVersion)},
		{"OS", dash(r.Deployment.OSVersion)},
		{"TELEOPERATION", teleop(r.Teleoperation)},
		{"CPU", fmt.Sprintf("%.1f%%", res.CPUPercent)},
		{"MEMORY", share(res.MemoryUsedBytes, res.MemoryTotalBytes)},
		{"DISK", share(res.DiskUsedBytes, res.DiskTotalBytes)},
		{"TEMPERATURE", temperature(res.TemperatureC)},
		{"REGISTERED", stamp(r.RegisteredAt)},
	}...)
	if r.Certificate != nil {
		rows = append(rows, [2]string{"CERTIFICATE", r.Certificate.Serial + " until " + stamp(r.Certificate.NotAfter)})
	}
	if r.Revoked {
		rows = append(rows, [2]string{"REVOKED", "yes"})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
}

// imageVersion is the release a robot's system was built as, "" when it
// did not say (no image metadata, or an agent from before the field).
func imageVersion(img *protocol.ImageInfo) string {
	if img == nil {
		return ""
	}
	return img.Version
}

func robotState(r store.Robot) string {
	s := dash(r.Status.State)
	if r.Status.Connected {
		s += " (connected)"
	}
	return s
}

func teleop(t store.Teleoperation) string {
	if !t.Active {
		return "-"
	}
	s := "active"
	if t.Operator != "" {
		s += " by " + t.Operator
	}
	if !t.SessionStart.IsZero() {
		s += " since " + t.SessionStart.Local().Format("15:04:05")
	}
	return s
}

func share(used, total uint64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(used)/float64(total))
}

func temperature(c *float64) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f°C", *c)
}

func uptime(s float64) string {
	if s <= 0 {
		return ""
	}
	return (time.Duration(s) * time.Second).String()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// newEvents is `control events tail`: the event log as it grows, polled
// from GET /v1/events over the admin socket. Polling, not /v1/stream,
// because the stream may drop to latest-only for a slow reader and a tail
// must show every event.
func newEvents(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Read the fleet's event log"}
	var (
		out      string
		robot    string
		types    []string
		last     int
		after    int64
		follow   bool
		interval time.Duration
	)
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print the last events, then new ones as they are recorded (Ctrl-C ends)",
		Long: `Print the newest events of the log, then follow it. With --output json each
event is one JSON object per line (the API's event form), for jq and scripts.`,
		Example: `  control events tail
  control events tail --robot lekiwi-0042 -n 50
  control events tail --type RobotEvent,DeviceDiscovered -o json | jq .data`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output(out).check(); err != nil {
				return err
			}
			if interval < 100*time.Millisecond {
				return fmt.Errorf("--interval %v: at least 100ms", interval)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !cmd.Flags().Changed("after") {
				end, err := lastSeq(ctx, f)
				if err != nil {
					return err
				}
				after = max(end-int64(last), 0)
			}
			want := map[string]bool{}
			for _, t := range types {
				want[t] = true
			}
			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			if out == "table" {
				fmt.Fprintln(tw, "SEQ\tTIME\tROBOT\tTYPE\tDETAIL")
			}
			enc := json.NewEncoder(w)
			for {
				page, err := eventsAfter(ctx, f, after, robot)
				if err != nil {
					if ctx.Err() != nil {
						return nil // Ctrl-C
					}
					return err
				}
				for _, e := range page.Events {
					if len(want) > 0 && !want[e.Type] {
						continue
					}
					if out == "json" {
						if err := enc.Encode(e); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format("2006-01-02 15:04:05"), dash(e.RobotID), e.Type, eventDetail(e))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				after = page.Next
				if len(page.Events) == api.MaxLimit {
					continue // more waiting: no pause
				}
				if !follow {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	fl := tail.Flags()
	fl.StringVarP(&out, "output", "o", "table", "table or json (one object per line)")
	fl.StringVar(&robot, "robot", "", "only this robot's events")
	fl.StringSliceVar(&types, "type", nil, "only these event types, e.g. RobotEvent,RobotConnected (repeatable)")
	fl.IntVarP(&last, "lines", "n", 10, "start with the events among the last N of the log (before filters)")
	fl.Int64Var(&after, "after", 0, "start after this event sequence instead (0: the whole log)")
	fl.BoolVarP(&follow, "follow", "f", true, "keep printing new events; --follow=false stops at the end of the log")
	fl.DurationVar(&interval, "interval", time.Second, "how often the log is polled")
	_ = tail.RegisterFlagCompletionFunc("robot", robotIDCompletion(f))
	_ = tail.RegisterFlagCompletionFunc("type", cobra.FixedCompletions([]string{
		store.TypeRobotRegistered, store.TypeRobotConnected, store.TypeRobotDisconnected, store.TypeRobotOffline,
		store.TypeTelemetryReported, store.TypeRobotEvent, store.TypeCommandResponse, store.TypeDeviceSeen,
		store.TypeFactoryStep, store.TypeAlertFired, store.TypeAlertResolved, store.TypeDeviceDiscovered,
	}, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(tail)
	return cmd
}

func eventsAfter(ctx context.Context, f *adminFlags, after int64, robot string) (api.EventPage, error) {
	q := url.Values{"after": {strconv.FormatInt(after, 10)}, "limit": {strconv.Itoa(api.MaxLimit)}}
	if robot != "" {
		q.Set("robot", robot)
	}
	var page api.EventPage
	err := f.client().Do(ctx, "GET", "/v1/events?"+q.Encode(), nil, &page)
	return page, err
}

// lastSeq finds the newest event sequence with the API as it is (events
// after a sequence, oldest first): whether any event follows s is
// monotonic in s, even with gaps left by retention, so doubling then
// bisecting finds it in about 2·log2(seq) small requests.
func lastSeq(ctx context.Context, f *adminFlags) (int64, error) {
	follows := func(s int64) (bool, error) {
		var page api.EventPage
		err := f.client().Do(ctx, "GET", "/v1/events?limit=1&after="+strconv.FormatInt(s, 10), nil, &page)
		return len(page.Events) > 0, err
	}
	ok, err := follows(0)
	if err != nil || !ok {
		return 0, err // an empty log ends at 0
	}
	lo, hi := int64(0), int64(1) // an event follows lo; find hi that none follows
	for {
		if ok, err = follows(hi); err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		if hi > 1<<61 {
			return 0, fmt.Errorf("find the end of the event log: sequence beyond %d", hi)
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 { // the newest sequence is the least s in (lo, hi] that none follows
		mid := lo + (hi-lo)/2
		if ok, err = follows(mid); err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// eventDetail is one line about an event for the table.
func eventDetail(e store.Event) string {
	var m map[string]any
	if json.Unmarshal(e.Data, &m) != nil {
		return ""
	}
	if e.Type == store.TypeRobotEvent {
		s, _ := m["kind"].(string)
		if msg, _ := m["message"].(string); msg != "" {
			s += ": " + msg
		}
		return s
	}
	b, _ := json.Marshal(m)
	s := string(b)
	if len(s) > 100 {
		s = s[:97] + "..."
	}
	return s
}
