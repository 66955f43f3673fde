package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/control/store"
)

// startDeployEngine runs the deployment engine on every node; it steps
// only while this node is the dqlite leader, and continues from the
// replicated deployment tables after a failover.
//
// The deployment tables are a projection of the event log that the store
// does not rebuild (a restored database has none), so the node first
// makes them agree with the log: the tables are created before Start
// returns (a restored node then answers "being rebuilt" rather than "no
// deployments"), and the replay runs in the background, refusing
// deployment writes until it is done. The engine syncs again whenever it
// takes the lead.
func (n *Node) startDeployEngine(ctx context.Context) {
	log := n.log.With("component", "deploy")
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := deploy.Migrate(mctx, n.store.DB()); err != nil {
		log.Warn("deployment tables not created yet; the background sync retries", "err", err)
	}
	cancel()
	e := deploy.New(n.store, deploy.Options{Logger: log, Actor: "control/deploy@" + n.cfg.NodeID})
	n.run(ctx, func(ctx context.Context) error {
		syncDeployments(ctx, n.store, log)
		return e.Run(ctx)
	})
}

// syncDeployments runs deploy.Sync until it succeeds, a few times at most
// (the engine retries when it leads). A rebuild commits in steps, so a
// retry resumes where the last attempt stopped.
func syncDeployments(ctx context.Context, st *store.Store, log *slog.Logger) {
	wait := time.Second
	for attempt := 1; attempt <= 5; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		rep, err := deploy.Sync(sctx, st)
		cancel()
		if err == nil {
			if !rep.Before.Current() {
				log.Info("deployment tables rebuilt from the event log", "before", rep.Before.String(), "reset", rep.Reset, "replayed", rep.Replayed)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("deployment tables do not agree with the event log yet; retrying", "attempt", attempt, "replayed", rep.Replayed, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait *= 2
	}
}
