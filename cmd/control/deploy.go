package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/deploy"
)

// newDeploy is `control deploy …`: over-the-air deployments through the
// local node's admin socket (the API routes /v1/deployments…).
func newDeploy(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Roll a release out to robots: create, status, pause, resume, abort, rollback, list",
		Long: `Deployments install a signed release on selected robots in batches. The
leader control node runs them; any node answers these commands. Robots being
teleoperated (or offline) are deferred and updated when free.`,
	}
	var output string
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")
	show := func(w io.Writer, v any, table func(*tabwriter.Writer)) error {
		switch output {
		case "json":
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		case "table":
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			table(tw)
			return tw.Flush()
		}
		return fmt.Errorf("--output %q: want table or json", output)
	}
	showOne := func(cmd *cobra.Command, d *deploy.Deployment) error {
		return show(cmd.OutOrStdout(), d, func(tw *tabwriter.Writer) { deploymentTable(tw, d) })
	}

	var spec deploy.Spec
	var robots, batch, canary, batchFail, totalFail, window string
	var healthTimeout, updateTimeout time.Duration
	create := &cobra.Command{
		Use:   "create --release REGISTRY/REPO@sha256:… --version V [selectors] [strategy]",
		Short: "Create a deployment (role engineer)",
		Example: `  control deploy create --release registry.lan/lekiwi/os@sha256:4f… --version 2.4.0 \
      --profile lekiwi --strategy canary --canary 2 --batch-size 20% \
      --failure-threshold 10% --auto-rollback --max-concurrent 10 --window 22-04`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if robots != "" {
				spec.Target.RobotIDs = strings.Split(robots, ",")
			}
			for _, s := range []struct {
				flag, v string
				into    *deploy.Size
			}{{"batch-size", batch, &spec.BatchSize}, {"canary", canary, &spec.Canary}, {"batch-failure-threshold", batchFail, &spec.BatchFailureThreshold}, {"failure-threshold", totalFail, &spec.FailureThreshold}} {
				if s.v == "" {
					continue
				}
				if *s.into, err = deploy.ParseSize(s.v); err != nil {
					return fmt.Errorf("--%s: %w", s.flag, err)
				}
			}
			if window != "" {
				start, end, ok := strings.Cut(window, "-")
				a, errA := strconv.Atoi(start)
				b, errB := strconv.Atoi(end)
				if !ok || errA != nil || errB != nil {
					return fmt.Errorf("--window %q: want START-END in UTC hours, e.g. 22-04", window)
				}
				spec.Window = &deploy.Window{StartHour: a, EndHour: b}
			}
			spec.Health.TimeoutSeconds = int(healthTimeout / time.Second)
			spec.UpdateTimeoutSeconds = int(updateTimeout / time.Second)
			var d deploy.Deployment
			if err := f.client().Do(cmd.Context(), "POST", "/v1/deployments", spec, &d); err != nil {
				return err
			}
			return showOne(cmd, &d)
		},
	}
	fl := create.Flags()
	fl.StringVar(&spec.Release, "release", "", "signed release artifact by digest (required)")
	fl.StringVar(&spec.Version, "version", "", "release version (required)")
	fl.StringVar(&spec.Name, "name", "", "a name for people")
	fl.StringVar(&spec.Target.Profile, "profile", "", "only robots of this profile: lekiwi or xle")
	fl.StringVar(&spec.Target.Model, "model", "", "only robots whose hardware model contains this (\"Raspberry Pi 5\")")
	fl.StringVar(&robots, "robots", "", "only these robot ids (comma-separated)")
	fl.StringVar(&spec.Strategy, "strategy", deploy.Rolling, "rolling, canary or blue-green (two cohorts: half, then the rest)")
	fl.StringVar(&batch, "batch-size", "", "robots per batch: a count or a share (default 10%)")
	fl.StringVar(&canary, "canary", "", "canary batch size (default 1)")
	fl.StringVar(&spec.AfterFirst, "after-first", "", "after a good canary/blue batch: pause (default) or continue")
	fl.DurationVar(&healthTimeout, "health-timeout", 0, "trial boot health check timeout passed to agents (default: the agent's)")
	fl.IntVar(&spec.Health.Retries, "health-retries", 0, "health check retries passed to agents")
	fl.DurationVar(&updateTimeout, "update-timeout", 30*time.Minute, "a robot without a final state after this counts as failed")
	fl.StringVar(&batchFail, "batch-failure-threshold", "", "failed robots in one batch that stop the deployment (default 50%)")
	fl.StringVar(&totalFail, "failure-threshold", "", "failed robots overall that stop the deployment (default 10%)")
	fl.StringVar(&spec.OnFailure, "on-failure", "", "what a threshold does: pause (default) or abort")
	fl.BoolVar(&spec.AllowDowngrade, "allow-downgrade", false, "let robots install this release although it is older (a lower security version) than what they run or once committed; they refuse it otherwise")
	fl.BoolVar(&spec.AutoRollback, "auto-rollback", false, "on a threshold, roll back every robot updated by this deployment")
	fl.IntVar(&spec.MaxConcurrent, "max-concurrent", 0, "robots updating at once (0: no bound)")
	fl.IntVar(&spec.PerMinute, "per-minute", 0, "updates started per minute (0: no bound)")
	fl.StringVar(&window, "window", "", "maintenance window START-END in UTC hours (22-04 crosses midnight)")
	_ = create.MarkFlagRequired("release")
	_ = create.MarkFlagRequired("version")

	status := &cobra.Command{
		Use: "status ID", Short: "Show a deployment's progress per batch and per robot", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var d deploy.Deployment
			if err := f.client().Do(cmd.Context(), "GET", "/v1/deployments/"+url.PathEscape(args[0]), nil, &d); err != nil {
				return err
			}
			return showOne(cmd, &d)
		},
	}
	var state string
	list := &cobra.Command{
		Use: "list", Short: "List deployments, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Deployments []*deploy.Deployment `json:"deployments"`
			}
			q := "/v1/deployments"
			if state != "" {
				q += "?state=" + url.QueryEscape(state)
			}
			if err := f.client().Do(cmd.Context(), "GET", q, nil, &out); err != nil {
				return err
			}
			return show(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tSTATE\tVERSION\tSTRATEGY\tBATCH\tSUCCEEDED\tFAILED\tDEFERRED\tTOTAL\tCREATED")
				for _, d := range out.Deployments {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%s\n", d.ID, d.State, d.Spec.Version, d.Spec.Strategy,
						d.CurrentBatch+1, len(d.Batches), d.Counts.Succeeded, d.Counts.Failed, d.Counts.Deferred, d.Counts.Total, d.CreatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	list.Flags().StringVar(&state, "state", "", "only deployments in this state (running, paused, completed, aborted, rolling_back, rolled_back)")
	cmd.AddCommand(create, status, list)
	for _, verb := range []struct{ name, short string }{
		{"pause", "Pause: no new updates start; robots updating finish"},
		{"resume", "Resume a paused deployment (failures so far are accepted)"},
		{"abort", "Abort: no new updates; nothing is rolled back"},
		{"rollback", "Stop and roll back every robot this deployment updated"},
	} {
		var reason string
		c := &cobra.Command{
			Use: verb.name + " ID", Short: verb.short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var d deploy.Deployment
				if err := f.client().Do(cmd.Context(), "POST", "/v1/deployments/"+url.PathEscape(args[0])+"/"+verb.name, api.DeploymentActionRequest{Reason: reason}, &d); err != nil {
					return err
				}
				return showOne(cmd, &d)
			},
		}
		if verb.name != "resume" {
			c.Flags().StringVar(&reason, "reason", "", "why (recorded in the event log)")
		}
		cmd.AddCommand(c)
	}
	return cmd
}

// deploymentTable prints a deployment: summary, batches, then robots that
// are not simply pending.
func deploymentTable(tw *tabwriter.Writer, d *deploy.Deployment) {
	fmt.Fprintf(tw, "ID\t%s\nSTATE\t%s\nRELEASE\t%s (%s)\nSTRATEGY\t%s\n", d.ID, d.State, d.Spec.Release, d.Spec.Version, d.Spec.Strategy)
	if d.Spec.AllowDowngrade {
		fmt.Fprintf(tw, "DOWNGRADE\tallowed: robots install it even where it is older than what they run\n")
	}
	if d.Reason != "" {
		fmt.Fprintf(tw, "REASON\t%s\n", d.Reason)
	}
	c := d.Counts
	fmt.Fprintf(tw, "ROBOTS\t%d total, %d succeeded, %d failed, %d updating, %d deferred, %d pending, %d rolled back\n\n",
		c.Total, c.Succeeded, c.Failed, c.Sent+c.RollbackSent, c.Deferred, c.Pending, c.RolledBack)
	fmt.Fprintln(tw, "BATCH\tSTATE\tSIZE\tSUCCEEDED\tFAILED\tUPDATING\tDEFERRED")
	for _, b := range d.Batches {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\n", b.Index, b.State, b.Size, b.Counts.Succeeded, b.Counts.Failed, b.Counts.Sent+b.Counts.RollbackSent, b.Counts.Deferred)
	}
	fmt.Fprintln(tw, "\nROBOT\tBATCH\tSTATE\tUPDATE\tREASON")
	for _, r := range d.Robots {
		if r.State == deploy.RobotPending {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", r.RobotID, r.Batch, r.State, r.UpdateState, r.Reason)
	}
}
