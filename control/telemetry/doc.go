// Package telemetry keeps the fleet's resource history and raises alerts
// from it.
//
// Samples come from the event log, not from the gateway: robots'
// TelemetryReported events are already durable there, so the dqlite
// leader reads them after a cursor and writes, per robot and metric, raw
// samples (kept 1 h), 1-minute aggregates (7 days) and 1-hour aggregates
// (90 days) — min, max, sum and count per bucket — plus each series'
// latest value. One transaction holds a small batch of events, its
// samples, the aggregate upserts and the cursor's compare-and-set
// advance, so a batch counts exactly once however often ingestion is
// interrupted, re-run after a failover, or raced by a deposed leader. The
// gateway's write path is untouched.
//
// Alert rules (threshold for a duration, with a lower clear level for
// hysteresis, and robot offline for a duration) are evaluated on the
// leader against that data. A firing alert is a row of the alerts table;
// it is created together with its AlertFired event and deleted together
// with its AlertResolved event, so each alert fires once and resolves
// once across failovers. The events reach dashboards through the stream's
// log tail (topic alert.<robot>, critical); a webhook can receive them
// too.
package telemetry
