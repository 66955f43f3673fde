// Package agent is the robot agent's runtime: the connection state machine,
// the hello handshake, heartbeats, debounced telemetry, durable events and
// command responses, and resending whatever control has not acknowledged.
//
// States:
//
//	Initializing ─▶ Registering ─▶ Connected ─▶ Disconnected ─▶ Reconnecting ─▶ Registering
//	                    │  ▲
//	                    ▼  │ (full-jitter backoff)
//	                  Retrying
//
// Registering dials one control URL (rotating through the list on each
// attempt) and exchanges hello; failure leads to Retrying, which sleeps a
// full-jitter exponential backoff. Losing an established connection leads
// to Disconnected and then Reconnecting, whose sleep adds a random delay of
// up to FirstReconnectJitter so that a restarted control node is not stormed
// by its whole fleet at once. Only that first reconnect gets the extra delay.
//
// Ordering on the wire, which control checks per connection: hello first
// (its sequence takes part in no ordering check), then queued messages
// (telemetry, events, responses) in strictly increasing sequence — first
// those left unacknowledged from before, with their original sequence,
// timestamp and payload, then new ones — and heartbeats in strictly
// increasing sequence among themselves, interleaved freely. A renew (the
// certificate renewal request, see Options.Identity) is sent like a
// heartbeat: not queued, with a fresh sequence, no ordering check. All
// sequences come from one allocator in the queue, which never goes
// backwards.
//
// Commands: "ping" is answered by the runtime; others by the
// Options.Commands handler of their name (the OTA updater's "update", see
// agent/ota/updatecmd), which answers at once and, for long work, later through
// Respond. Responses are queued like events.
//
// Identity: the runtime itself holds no key. mTLS comes from
// Options.HTTPClient (the identity's TLS configuration, which reads the
// current certificate at every handshake); renewal goes through
// Options.Identity, a Renewer that agent/identity implements.
//
// An Agent is cheap: two goroutines while connected (the loop and a frame
// reader) plus the WebSocket library's, one while disconnected, no package
// state. A simulator runs thousands in one process with a NoSync queue, a
// synthetic Collector and a discarding logger.
package agent
