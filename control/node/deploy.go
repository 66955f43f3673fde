package node

import (
	"context"

	"github.com/lekiwi/heartbeat/control/deploy"
)

// startDeployEngine runs the deployment engine (issue 8) on every node;
// it steps only while this node is the dqlite leader, and continues from
// the replicated deployment tables after a failover.
func (n *Node) startDeployEngine(ctx context.Context) {
	e := deploy.New(n.store, deploy.Options{Logger: n.log.With("component", "deploy"), Actor: "control/deploy@" + n.cfg.NodeID})
	n.wg.Add(1)
	go func() { defer n.wg.Done(); _ = e.Run(ctx) }()
}
