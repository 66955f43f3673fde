// Package store is the control plane's state: a dqlite database (replicated
// SQLite, go-dqlite's app package) holding an append-only event log, which is
// the source of truth, and projections derived from it.
//
// Writers append events and update the projections they touch in the same
// transaction, so a projection never runs ahead of or behind the log. Every
// projection can be rebuilt by replaying the log through the same Apply code,
// and Verify checks that the rebuilt state equals the live one.
//
// Presence (when a robot was last heard from) is deliberately not in the log:
// heartbeats are frequent and worthless once superseded, so gateways keep them
// in memory and flush last-seen times here in batches.
package store
