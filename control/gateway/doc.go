// Package gateway terminates robot WebSocket connections (/v1/agent) on a
// control node.
//
// Each connection is a session: hello first, then heartbeats, telemetry,
// events and command responses. Heartbeats are acknowledged on receipt and
// only refresh in-memory presence, which is flushed to the store in batches.
// Everything else is appended to the event log by a single committer that
// groups whatever is waiting into one transaction, and is acknowledged only
// after that transaction committed — so an acknowledged message is durable,
// and a message the robot resends is recognised by (robot, stream, sequence)
// and acknowledged again without being applied twice.
package gateway
