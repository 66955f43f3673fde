package telemetry

import (
	"context"
	"time"

	"github.com/lekiwi/heartbeat/control/leader"
)

// RunOptions drive the leader's periodic work.
type RunOptions struct {
	// Interval between ingest and alert passes (default 10 s).
	Interval time.Duration
	// PruneInterval between prunes (default 5 min).
	PruneInterval time.Duration
	// IsLeader says whether this node should do the work now (nil: it
	// always should); store.(*Store).IsLeader in a cluster. Each check is
	// bounded by leader.CheckTimeout and a failed one skips the pass.
	IsLeader func(context.Context) (bool, error)
	Rules    []Rule
	// Notify, if set, receives every alert committed (the webhook's
	// Enqueue); it must not block.
	Notify func(Alert)
	// OnPass, if set, sees each pass's outcome (metrics, tests).
	OnPass func(IngestReport, []Alert, error)
}

// Run ingests, evaluates alerts and prunes on a schedule while this node
// is the leader, until ctx ends. Failures are logged and retried on the
// next tick: every step continues from state in the database.
func (s *Store) Run(ctx context.Context, o RunOptions) error {
	if o.Interval <= 0 {
		o.Interval = 10 * time.Second
	}
	if o.PruneInterval <= 0 {
		o.PruneInterval = 5 * time.Minute
	}
	var lastPrune time.Time
	r := leader.Runner{Interval: o.Interval, CheckTimeout: leader.CheckTimeout}
	return r.Run(ctx, o.IsLeader, func(ctx context.Context, _ bool) error {
		rep, alerts, err := s.Pass(ctx, o.Rules, o.Notify)
		if o.OnPass != nil {
			o.OnPass(rep, alerts, err)
		}
		if err != nil {
			s.log.Warn("telemetry pass failed; the next one continues", "err", err)
		}
		if now := s.o.Now(); now.Sub(lastPrune) >= o.PruneInterval {
			lastPrune = now
			if rep, err := s.Prune(ctx, 0); err != nil {
				s.log.Warn("telemetry prune failed; the next one continues", "err", err)
			} else if rep.Raw+rep.Minute+rep.Hour > 0 {
				s.log.Info("telemetry pruned", "raw", rep.Raw, "minute", rep.Minute, "hour", rep.Hour, "truncated", rep.Truncated)
			}
		}
		return nil
	})
}

// Pass ingests what is new, then evaluates the rules and hands each
// committed alert to notify. Alerts are evaluated only once ingestion
// caught up, so they never judge a half-read backlog.
func (s *Store) Pass(ctx context.Context, rules []Rule, notify func(Alert)) (IngestReport, []Alert, error) {
	rep, err := s.Ingest(ctx)
	if err != nil || !rep.CaughtUp || len(rules) == 0 {
		return rep, nil, err
	}
	alerts, err := s.EvaluateAlerts(ctx, rules)
	if notify != nil {
		for _, a := range alerts {
			notify(a)
		}
	}
	return rep, alerts, err
}
