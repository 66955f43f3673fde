// Package protocol defines the wire messages exchanged between robots (agent),
// control nodes and netboot stations over one WebSocket per robot.
//
// Every frame is a JSON text message holding an Envelope. The envelope's
// sequence is per robot (per sender stream) and strictly increasing; control
// acknowledges a sequence only once what it carries is durable, and drops
// duplicates by (robot id, stream, sequence). Unknown JSON fields are ignored so
// that either side can grow; unknown message types are answered with an error.
//
// It also holds the JSON bodies of the HTTPS calls programs other than
// control make to it (enrollment, the factory routes, the error body every
// answer shares; see rest.go), and of the netboot station's board routes.
//
// This package imports nothing else of the project: it is the one place agent,
// provision, netboot and control meet.
package protocol
