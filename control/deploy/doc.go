// Package deploy is control's deployment engine: over-the-air updates
// rolled out to selected robots in batches (rolling, canary, blue-green),
// within rate limits and a maintenance window, stopped by failure
// thresholds and optionally rolled back.
//
// State lives in the replicated store: every decision is a Deployment*
// event applied to the deployments and deployment_robots tables in the
// same transaction (store.AppendWith), and an update command is queued in
// the store's command outbox in the transaction that records it as sent.
// Only the dqlite leader's Engine steps, and it decides only from those
// tables, so after a failover the new leader continues without skipping a
// robot or sending one twice.
package deploy
