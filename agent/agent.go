package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// Agent is one robot's runtime. Create it with New, drive it with Run, feed
// it events with Emit from any goroutine.
type Agent struct {
	o       Options
	urls    []string
	q       *queue.Queue
	log     *slog.Logger
	rng     *rand.Rand // Run goroutine only
	started time.Time

	state      atomic.Int32
	running    atomic.Bool
	lastActive atomic.Int64 // unix ns; the Run loop's last sign of life
	kick       chan struct{}

	sent, acked, reconnects, rejected, renewed atomic.Uint64

	// answering holds the commands whose handler is running, with the
	// answers Respond was given for them meanwhile: those are queued after
	// the handler's first answer, so a final ok never reaches control
	// before the progress that preceded it.
	answeringMu sync.Mutex
	answering   map[string][]protocol.Response

	// Owned by the Run goroutine.
	hbInterval time.Duration
	serverCaps []string  // from the last hello reply
	renewAt    time.Time // no renew before this (Options.Now clock); zero on each new connection
	tel        telemetryState
}

// Stats are the agent's counters since New.
type Stats struct {
	Sent       uint64 // frames sent after hello (heartbeats, queued messages, resends)
	Acked      uint64 // of those, acknowledged by control
	Reconnects uint64 // established connections lost
	Rejected   uint64 // queued messages control refused as invalid, removed from the queue
	Renewed    uint64 // certificates renewed over the connection and installed
	Queue      protocol.QueueStats
}

// New checks opts and builds an Agent. It does no I/O.
func New(opts Options) (*Agent, error) {
	urls, err := opts.validateAndDefault()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		o:          opts,
		urls:       urls,
		q:          opts.Queue,
		log:        opts.Logger.With("robot", opts.RobotID),
		rng:        opts.Rand,
		started:    time.Now(),
		kick:       make(chan struct{}, 1),
		hbInterval: opts.HeartbeatInterval,
	}
	a.lastActive.Store(time.Now().UnixNano())
	return a, nil
}

// State is the current state; safe from any goroutine.
func (a *Agent) State() State { return State(a.state.Load()) }

// Stats returns the counters; safe from any goroutine.
func (a *Agent) Stats() Stats {
	return Stats{
		Sent: a.sent.Load(), Acked: a.acked.Load(), Reconnects: a.reconnects.Load(), Rejected: a.rejected.Load(),
		Renewed: a.renewed.Load(),
		Queue:   a.q.Stats(),
	}
}

// LastActive is when the Run loop last went round. The loop wakes at least
// every TelemetrySampleInterval, and blocks at most HandshakeTimeout or
// WriteTimeout in one call, so a much older time means it is stuck — the
// systemd watchdog uses this.
func (a *Agent) LastActive() time.Time { return time.Unix(0, a.lastActive.Load()) }

func (a *Agent) touch() { a.lastActive.Store(time.Now().UnixNano()) }

// Emit queues an event durably (fsync'd unless the queue is NoSync) and
// returns; it is sent as soon as the agent is connected, and resent until
// control acknowledges it. It works while disconnected and while Run is not
// running. Safe from any goroutine.
func (a *Agent) Emit(ctx context.Context, ev protocol.Event) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("emit %s event: %w", ev.Kind, err)
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("emit event: %w", err)
	}
	if _, _, err := a.append(queue.Event, protocol.TypeEvent, ev); err != nil {
		return fmt.Errorf("emit %s event: %w", ev.Kind, err)
	}
	return nil
}

// Respond queues a command response durably, like Emit: a CommandHandler's
// later answers (the final ok or error after a progress) go through it.
// Safe from any goroutine.
func (a *Agent) Respond(ctx context.Context, resp protocol.Response) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("respond to command %s: %w", resp.CommandID, err)
	}
	if err := resp.Validate(); err != nil {
		return fmt.Errorf("respond to command %s: %w", resp.CommandID, err)
	}
	if a.deferAnswer(resp) {
		return nil
	}
	if _, _, err := a.append(queue.Event, protocol.TypeResponse, resp); err != nil {
		return fmt.Errorf("respond to command %s: %w", resp.CommandID, err)
	}
	return nil
}

// deferAnswer keeps resp for later when its command's handler is still
// running (its first answer is not queued yet) and reports whether it did.
func (a *Agent) deferAnswer(resp protocol.Response) bool {
	a.answeringMu.Lock()
	defer a.answeringMu.Unlock()
	held, running := a.answering[resp.CommandID]
	if running {
		a.answering[resp.CommandID] = append(held, resp)
	}
	return running
}

// handle runs h for cmd and queues its first answer, then the answers
// Respond was given for cmd while h ran, in the order given. A handler
// whose background work finishes at once may call Respond before h has
// even returned; without this the final answer would overtake the progress.
func (a *Agent) handle(cmd protocol.Command, h CommandHandler) {
	a.answeringMu.Lock()
	if a.answering == nil {
		a.answering = map[string][]protocol.Response{}
	}
	a.answering[cmd.ID] = nil // handlers run one at a time, on the Run goroutine
	a.answeringMu.Unlock()
	resp := h(cmd)
	resp.CommandID = cmd.ID
	a.log.Info("command", "id", cmd.ID, "name", cmd.Name, "status", resp.Status)
	a.answeringMu.Lock()
	defer a.answeringMu.Unlock()
	a.queueAnswer(resp)
	for _, r := range a.answering[cmd.ID] {
		a.queueAnswer(r)
	}
	delete(a.answering, cmd.ID)
}

func (a *Agent) queueAnswer(resp protocol.Response) {
	if _, _, err := a.append(queue.Event, protocol.TypeResponse, resp); err != nil {
		a.log.Error("queue command response", "id", resp.CommandID, "status", resp.Status, "err", err)
	}
}

// append queues a message and wakes the Run loop.
func (a *Agent) append(c queue.Class, t protocol.Type, payload any) (queue.Item, bool, error) {
	it, stored, err := a.q.Append(c, t, func(seq uint64) ([]byte, error) { return a.encode(t, seq, payload) })
	if err == nil {
		a.wake()
	}
	return it, stored, err
}

func (a *Agent) encode(t protocol.Type, seq uint64, payload any) ([]byte, error) {
	env, err := protocol.New(t, a.o.RobotID, seq, a.o.Now(), payload)
	if err != nil {
		return nil, err
	}
	return protocol.Encode(env)
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) setState(s State) {
	old := State(a.state.Swap(int32(s)))
	if old == s {
		return
	}
	a.log.Info("agent state", "from", old.String(), "to", s.String())
	if a.o.OnTransition != nil {
		a.o.OnTransition(old, s)
	}
}

// Run drives the state machine until ctx ends, then closes the connection
// and returns nil. It returns an error only if the Agent is already running.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called while the agent is already running")
	}
	defer a.running.Store(false)
	defer a.setState(Stopped)
	a.setState(Initializing)
	a.touch()

	sampleTick := time.NewTicker(a.o.TelemetrySampleInterval)
	defer sampleTick.Stop()
	a.sample(ctx)

	attempt, next := 0, 0
	for ctx.Err() == nil {
		url := a.urls[next%len(a.urls)]
		next++
		a.setState(Registering)
		conn, err := a.register(ctx, url)
		a.touch()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			a.log.Warn("registration failed", "server", url, "attempt", attempt+1, "err", err)
			a.setState(Retrying)
			b := Backoff{State: Retrying, Attempt: attempt, Backoff: a.o.Backoff.Delay(attempt, a.rng), Server: url}
			attempt++
			if !a.sleep(ctx, b, sampleTick) {
				break
			}
			continue
		}
		attempt = 0
		a.setState(Connected)
		err = a.serve(ctx, conn, sampleTick)
		if ctx.Err() != nil {
			break
		}
		a.log.Warn("connection to control lost", "server", url, "err", err)
		a.setState(Disconnected)
		a.reconnects.Add(1)
		a.setState(Reconnecting)
		b := Backoff{State: Reconnecting, Attempt: attempt, Backoff: a.o.Backoff.Delay(attempt, a.rng),
			Jitter: backoff.Uniform(a.o.FirstReconnectJitter, a.rng), Server: url}
		attempt++
		if !a.sleep(ctx, b, sampleTick) {
			break
		}
	}
	return nil
}

// sleep waits out a backoff while still sampling telemetry (so changes
// while disconnected reach the queue). It reports false when ctx ended.
func (a *Agent) sleep(ctx context.Context, b Backoff, sampleTick *time.Ticker) bool {
	if a.o.OnBackoff != nil {
		a.o.OnBackoff(b)
	}
	a.log.Debug("backing off", "state", b.State.String(), "attempt", b.Attempt, "delay", b.Delay())
	t := time.NewTimer(b.Delay())
	defer t.Stop()
	for {
		a.touch()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-sampleTick.C:
			a.onSampleTick(ctx, false)
		case <-a.kick:
			// Emitted while disconnected: already durable, sent on connect.
		}
	}
}

// uptime is the robot's uptime now, extrapolated from the last sample.
func (a *Agent) uptime() float64 {
	if a.tel.have {
		return a.tel.last.UptimeSeconds + time.Since(a.tel.lastAt).Seconds()
	}
	return time.Since(a.started).Seconds()
}

// heartbeatDelay is the interval with ±10% jitter, so heartbeats of robots
// that connected together drift apart.
func (a *Agent) heartbeatDelay() time.Duration {
	f := 0.9 + 0.2*a.rng.Float64()
	return time.Duration(float64(a.hbInterval) * f)
}
