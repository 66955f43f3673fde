package agent

import "fmt"

// State is where the agent's connection state machine is.
type State int32

// The states; see the package documentation for the transitions.
const (
	Initializing State = iota // opening, first telemetry sample
	Registering               // dialling a control node and exchanging hello
	Connected                 // hello answered; messages flow
	Retrying                  // registration failed; backing off
	Disconnected              // an established connection was lost
	Reconnecting              // backing off (with extra jitter) after a loss
	Stopped                   // Run returned
)

func (s State) String() string {
	switch s {
	case Initializing:
		return "initializing"
	case Registering:
		return "registering"
	case Connected:
		return "connected"
	case Retrying:
		return "retrying"
	case Disconnected:
		return "disconnected"
	case Reconnecting:
		return "reconnecting"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}
