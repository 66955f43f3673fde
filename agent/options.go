package agent

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/endpoint"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// Collector produces telemetry samples. *collect.Collector reads the real
// board; a simulator passes a synthetic one.
type Collector interface {
	Sample(ctx context.Context) (protocol.Telemetry, error)
}

// Backoff describes one sleep of the state machine, for logs, tests and
// simulators.
type Backoff struct {
	State   State         // Retrying or Reconnecting
	Attempt int           // failed attempts before this sleep (0 after a loss)
	Backoff time.Duration // the full-jitter part, in [0, min(cap, base·2^attempt)]
	Jitter  time.Duration // the first-reconnect extra, in [0, FirstReconnectJitter]; 0 in Retrying
	Server  string        // the URL that failed or was lost
}

// Delay is the total sleep.
func (b Backoff) Delay() time.Duration { return b.Backoff + b.Jitter }

// Renewer renews the robot's certificate over the live connection.
// *identity.Identity implements it; the runtime only needs these three
// steps and never sees a key.
type Renewer interface {
	// NeedsRenewal reports whether the certificate is due at now.
	NeedsRenewal(now time.Time) bool
	// RenewalCSR returns a PEM certificate request for a new key the
	// Renewer keeps until Install.
	RenewalCSR() ([]byte, error)
	// Install verifies and saves the renewed certificate and makes it the
	// one the next TLS handshake presents.
	Install(protocol.Certificate) error
}

// CommandHandler answers one command. It is called on the Run goroutine
// and must not block: it returns the first response at once — ok or error
// when the command is done, progress when its work goes on in the
// background, which later answers through Agent.Respond (answers given
// before the handler has returned are queued after its first one, so work
// that ends at once cannot overtake its own progress). The runtime sets
// the response's CommandID. Control may deliver a command again (after a
// reconnect, or a control node's failover): handlers answer by command ID,
// and never act twice on one.
type CommandHandler func(cmd protocol.Command) protocol.Response

// Options configure an Agent. Zero values take the defaults named.
type Options struct {
	RobotID   string             // required, a DNS label
	RobotType protocol.RobotType // required
	// Servers are control base URLs (ws, wss, http, https); the agent dials
	// <base>/v1/agent, rotating through them on each attempt. Required.
	Servers []string
	// Queue holds unacknowledged messages and allocates sequences. The
	// caller opens it (queue.Open, NoSync for simulators) and closes it
	// after Run returned. Required.
	Queue *queue.Queue
	// Collector samples telemetry. Required.
	Collector Collector

	Hardware     protocol.Hardware
	AgentVersion string // default "dev"
	// Image is the running image's metadata announced in hello
	// (collect.Image); nil on a system not made by provision image build.
	Image        *protocol.ImageInfo
	Packages     map[string]string // announced in hello
	Capabilities []string          // default telemetry, events, commands, queue

	HeartbeatInterval       time.Duration // until a hello reply sets it; default 30s
	TelemetrySampleInterval time.Duration // default 5s
	TelemetryMinInterval    time.Duration // debounce; default 10s
	TelemetryMaxInterval    time.Duration // send even without change; default 5m
	Backoff                 backoff.Policy
	// FirstReconnectJitter bounds the extra delay before the first reconnect
	// after losing an established connection. Default 10s; negative means none.
	FirstReconnectJitter time.Duration
	HandshakeTimeout     time.Duration // dial + hello + reply; default 10s
	WriteTimeout         time.Duration // one frame; default 10s
	// Window is the most queued messages sent and not yet acknowledged.
	Window int // default 256

	// Rand drives every random choice (backoff, jitter). Default: seeded
	// from crypto/rand. Used by the Run goroutine only.
	Rand *rand.Rand
	// Logger receives the agent's logs; default discards them.
	Logger *slog.Logger
	// Now stamps envelopes; default time.Now.
	Now func() time.Time
	// HTTPClient dials the WebSocket. TLS settings go here: for mTLS to
	// control pass identity.(*Identity).HTTPClient() — a transport whose
	// TLSClientConfig is the identity's TLSConfig(), which presents the
	// current (renewed) certificate on every handshake. Its Timeout must be
	// zero; HandshakeTimeout bounds the dial. Default http.DefaultClient.
	HTTPClient *http.Client

	// Identity, if set, renews the robot's certificate over the live
	// connection: the agent announces protocol.CapRenew in hello and, when
	// control's hello reply announces it too and Identity.NeedsRenewal(Now())
	// holds, sends one renew message with a CSR; control's certificate
	// answer is passed to Identity.Install. It must be the identity whose
	// TLS configuration HTTPClient uses.
	Identity Renewer
	// RenewRetry is how long to wait, on the same connection, after a renew
	// that failed or went unanswered before sending another; a new
	// connection tries at once. Default 1h.
	RenewRetry time.Duration

	// Commands answer commands by name, besides the built-in "ping" (see
	// CommandHandler); any other name is answered with an error.
	Commands map[string]CommandHandler

	// OnTransition is called on the Run goroutine after every state change.
	// It must not block.
	OnTransition func(from, to State)
	// OnAck is called on the Run goroutine for every acknowledged sequence
	// that was sent on the current connection, with the time from sending to
	// receiving the ack. It must not block.
	OnAck func(seq uint64, t protocol.Type, latency time.Duration)
	// OnBackoff is called on the Run goroutine before every sleep.
	OnBackoff func(Backoff)
}

// Defaults.
const (
	DefaultHeartbeatInterval       = 30 * time.Second
	DefaultTelemetrySampleInterval = 5 * time.Second
	DefaultTelemetryMinInterval    = 10 * time.Second
	DefaultTelemetryMaxInterval    = 5 * time.Minute
	DefaultFirstReconnectJitter    = 10 * time.Second
	DefaultHandshakeTimeout        = 10 * time.Second
	DefaultWriteTimeout            = 10 * time.Second
	DefaultWindow                  = 256
	DefaultRenewRetry              = time.Hour
)

func (o *Options) validateAndDefault() ([]string, error) {
	var errs []error
	if err := protocol.ValidRobotID(o.RobotID); err != nil {
		errs = append(errs, fmt.Errorf("RobotID: %w", err))
	}
	if !o.RobotType.Valid() {
		errs = append(errs, fmt.Errorf("RobotType %q is neither %q nor %q", o.RobotType, protocol.RobotLeKiwi, protocol.RobotXLE))
	}
	if len(o.Servers) == 0 {
		errs = append(errs, errors.New("Servers is empty: give at least one control URL"))
	}
	urls := make([]string, 0, len(o.Servers))
	for _, s := range o.Servers {
		u, err := endpoint.AgentURL(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		urls = append(urls, u)
	}
	if o.Queue == nil {
		errs = append(errs, errors.New("Queue is nil: open one with queue.Open"))
	}
	if o.Collector == nil {
		errs = append(errs, errors.New("Collector is nil: pass collect.New(...) or a synthetic one"))
	}
	if o.HTTPClient != nil && o.HTTPClient.Timeout != 0 {
		errs = append(errs, errors.New("HTTPClient.Timeout must be zero (it would cut the WebSocket); HandshakeTimeout bounds the dial"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("agent options: %w", errors.Join(errs...))
	}
	if o.AgentVersion == "" {
		o.AgentVersion = "dev"
	}
	if o.Capabilities == nil {
		o.Capabilities = []string{protocol.CapTelemetry, protocol.CapEvents, protocol.CapCommands, protocol.CapQueue}
	}
	if o.Identity != nil && !slices.Contains(o.Capabilities, protocol.CapRenew) {
		o.Capabilities = append(slices.Clone(o.Capabilities), protocol.CapRenew)
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setDur(&o.HeartbeatInterval, DefaultHeartbeatInterval)
	setDur(&o.TelemetrySampleInterval, DefaultTelemetrySampleInterval)
	setDur(&o.TelemetryMinInterval, DefaultTelemetryMinInterval)
	setDur(&o.TelemetryMaxInterval, DefaultTelemetryMaxInterval)
	setDur(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	setDur(&o.WriteTimeout, DefaultWriteTimeout)
	setDur(&o.RenewRetry, DefaultRenewRetry)
	switch {
	case o.FirstReconnectJitter == 0:
		o.FirstReconnectJitter = DefaultFirstReconnectJitter
	case o.FirstReconnectJitter < 0:
		o.FirstReconnectJitter = 0
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Rand == nil {
		var seed [16]byte
		_, _ = crand.Read(seed[:]) // never fails on Linux; a zero seed would still work
		o.Rand = rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return urls, nil
}
