package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/leader"
	"github.com/lekiwi/heartbeat/control/store"
)

// retention runs telemetry retention on a schedule. Every node runs the
// loop, but only the current dqlite leader does the work: the leader
// changes with failovers, and two nodes thinning the same over-budget
// robot at once would thin it twice.
type retention struct {
	store    *store.Store
	submit   func(context.Context, func(context.Context) error) error
	policy   store.RetentionPolicy
	interval time.Duration
	log      *slog.Logger
	deleted  prometheus.Counter
	lastRun  prometheus.Gauge
}

// startRetention runs retention every RetentionInterval.
func (n *Node) startRetention(ctx context.Context, reg prometheus.Registerer) {
	r := newRetention(n.store, n.gateway.Submit, n.cfg.RetentionInterval, n.log.With("component", "retention"), reg)
	n.run(ctx, func(ctx context.Context) error { r.loop(ctx); return nil })
}

func newRetention(st *store.Store, submit func(context.Context, func(context.Context) error) error, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) *retention {
	r := &retention{
		store: st, submit: submit, policy: store.DefaultRetentionPolicy(), interval: interval, log: log,
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lekiwi_control_retention_deleted_total", Help: "Telemetry events deleted by retention on this node."}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lekiwi_control_retention_last_run_timestamp_seconds", Help: "When this node last completed a retention run (as leader)."}),
	}
	reg.MustRegister(r.deleted, r.lastRun)
	return r
}

func (r *retention) loop(ctx context.Context) {
	runner := leader.Runner{
		Interval: r.interval, CheckTimeout: leader.CheckTimeout,
		CheckFailed: func(err error) { r.log.Warn("retention skipped: cluster leader unknown", "err", err) },
	}
	_ = runner.Run(ctx, r.store.IsLeader, func(ctx context.Context, _ bool) error {
		r.run(ctx)
		return nil
	})
}

// run makes one retention pass; its failures are logged, and the next pass
// continues where it stopped.
func (r *retention) run(ctx context.Context) {
	p := r.policy
	p.Submit = r.submit
	rep, err := r.store.Retain(ctx, time.Now(), p)
	r.deleted.Add(float64(rep.Deleted))
	if err != nil {
		r.log.Warn("telemetry retention failed; the next run continues", "deleted", rep.Deleted, "err", err)
		return
	}
	r.lastRun.SetToCurrentTime()
	r.log.Info("telemetry retention", "robots", rep.Robots, "telemetry", rep.Telemetry, "deleted", rep.Deleted,
		"budget_deleted", rep.BudgetDeleted, "over_budget", len(rep.OverBudget), "truncated", rep.Truncated, "elapsed", rep.Elapsed.Round(time.Millisecond))
}
