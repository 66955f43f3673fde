// Package leader runs a node's background work only on the node that is
// the dqlite leader. Every control node runs the same loops; each round
// asks the cluster whether this node leads, and only the leader does the
// round's work. There is no election of its own: the work follows dqlite's
// leadership through failovers.
//
// The contract of Runner.Run:
//
//   - Rounds are Interval apart; the first comes one Interval after Run
//     starts. A round that takes longer than Interval delays the next one;
//     missed ticks are dropped, not queued.
//   - Each round first checks leadership (bounded by CheckTimeout). A
//     failed check goes to CheckFailed and counts as not leading.
//   - When this node leads, the job runs once, synchronously, with a
//     context derived from Run's (bounded by RoundTimeout). gained is true
//     on the first round this node leads after a round it did not (and on
//     the first round of all), so a job can drop state it derived while
//     leading before: another node may have moved things meanwhile.
//   - Leadership lost is noticed at the next round's check: a running job
//     is not interrupted, its context ends only with Run's context or
//     RoundTimeout. The jobs here continue from replicated state and
//     tolerate another node doing the same work for the length of one
//     round, which is what a failover costs them. A flap between two
//     checks is not seen at all; one that spans a check shows as gained.
//   - A job's error goes to JobFailed; the next round runs as usual.
//   - When ctx ends, Run waits for a running job (whose context is then
//     cancelled too) and returns ctx.Err().
package leader

import (
	"context"
	"time"
)

// DefaultInterval is the time between rounds of a Runner with no Interval.
const DefaultInterval = time.Second

// CheckTimeout is the bound the node's loops put on one leadership check:
// long enough for a leader election, short enough that a stuck cluster
// query does not hold up the loop for long.
const CheckTimeout = 10 * time.Second

// Runner calls a job on a schedule while this node leads. The zero value
// runs every DefaultInterval, with no timeouts, and drops errors.
type Runner struct {
	// Interval between rounds; default DefaultInterval.
	Interval time.Duration
	// CheckTimeout bounds the leadership check alone; zero leaves it to
	// RoundTimeout, or to Run's context.
	CheckTimeout time.Duration
	// RoundTimeout bounds a whole round, the check and the job together;
	// zero: no bound beyond Run's context.
	RoundTimeout time.Duration
	// CheckFailed, if set, sees every failed leadership check.
	CheckFailed func(error)
	// JobFailed, if set, sees every error the job returns.
	JobFailed func(error)
}

// IsLeader reports whether this node leads; store.(*Store).IsLeader is one.
type IsLeader func(context.Context) (bool, error)

// Job is one round's work on the leader; see the package comment for when
// it runs and what gained means.
type Job func(ctx context.Context, gained bool) error

// Run makes rounds until ctx ends, then returns ctx.Err(). A nil isLeader
// means this node always leads.
func (r Runner) Run(ctx context.Context, isLeader IsLeader, job Job) error {
	interval := r.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	leading := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		leading = r.round(ctx, isLeader, job, leading)
	}
}

// round checks leadership and runs the job if this node leads; it returns
// whether it did.
func (r Runner) round(ctx context.Context, isLeader IsLeader, job Job, wasLeading bool) bool {
	if r.RoundTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.RoundTimeout)
		defer cancel()
	}
	leads, err := Check(ctx, isLeader, r.CheckTimeout)
	if err != nil && r.CheckFailed != nil {
		r.CheckFailed(err)
	}
	if !leads {
		return false
	}
	if err := job(ctx, !wasLeading); err != nil && r.JobFailed != nil {
		r.JobFailed(err)
	}
	return true
}

// Check asks isLeader once, bounded by timeout (zero: by ctx alone). A nil
// isLeader always leads; an error is returned with false.
func Check(ctx context.Context, isLeader IsLeader, timeout time.Duration) (bool, error) {
	if isLeader == nil {
		return true, nil
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	leads, err := isLeader(ctx)
	if err != nil {
		return false, err
	}
	return leads, nil
}
