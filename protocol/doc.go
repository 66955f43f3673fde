// Package protocol defines the wire messages exchanged between robots (agent),
// control nodes and netboot stations over one WebSocket per robot.
//
// Every frame is a JSON text message holding an Envelope. The envelope's
// sequence is per robot (per sender stream) and strictly increasing; control
// acknowledges a sequence only once what it carries is durable, and drops
// duplicates by (robot id, stream, sequence). Unknown JSON fields are ignored so
// that either side can grow; unknown message types are answered with an error.
//
// This package imports nothing else of the project: it is the one place agent
// and control meet.
package protocol
