// Package chaos is the failure scenarios of a control cluster (the
// TestChaos* tests, `make chaos`): members of a lab.ProcCluster are killed,
// stopped, restarted and partitioned while a Fleet of simulated robots,
// each listing every control node, fails over between them under an
// EventLoad whose every event is numbered. Each scenario ends with
// VerifyDelivery: the event log holds every acknowledged event exactly
// once. The -chaos.agents and -chaos.every test flags size the fleet and
// the load.
package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// Fleet is simulated robots split over the control nodes: robot i
// lists the servers rotated by i, so each node starts with its share and
// every robot can fail over to every node.
type Fleet struct {
	Fleets  []*robotsim.Fleet
	Robots  []*robotsim.Robot
	LogPath string // the agents' warnings

	logFile *os.File

	mu      sync.Mutex
	acked   map[string]map[uint64]bool // event sequences acknowledged, per robot
	lastAck map[string]time.Time       // when each robot last had an event acknowledged
}

// NewFleet prepares n robots (mTLS identities from ca) under dir; the
// agents' warnings go to dir/agents.log.
func NewFleet(n int, servers []string, ca *pki.CA, dir string) (*Fleet, error) {
	cf := &Fleet{acked: map[string]map[uint64]bool{}, lastAck: map[string]time.Time{}, LogPath: filepath.Join(dir, "agents.log")}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(cf.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cf.logFile = logf
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	k := len(servers)
	for i := range k {
		count := n/k + min(1, max(0, n%k-i))
		if count == 0 {
			continue
		}
		rot := append(slices.Clone(servers[i:]), servers[:i]...)
		f, err := robotsim.NewFleet(robotsim.FleetOptions{
			Robots: count, FirstIndex: len(cf.Robots), Servers: rot, Dir: dir, CA: ca, Seed: uint64(i) << 20,
			// Telemetry stays quiet: the load is the numbered events.
			TelemetrySampleInterval: 30 * time.Second, TelemetryMinInterval: time.Minute,
			// Production backoff shape, shortened like the other labs: a
			// reconnect after losing a server waits [0, 2 s] extra.
			FirstReconnectJitter: 2 * time.Second,
			Backoff:              backoff.Policy{Base: 100 * time.Millisecond, Cap: 2 * time.Second},
			OnAck:                cf.onAck,
			Logger:               logger,
		})
		if err != nil {
			return nil, err
		}
		cf.Fleets = append(cf.Fleets, f)
		cf.Robots = append(cf.Robots, f.Robots()...)
	}
	return cf, nil
}

func (cf *Fleet) onAck(r *robotsim.Robot, seq uint64, t protocol.Type, _ time.Duration) {
	if t != protocol.TypeEvent {
		return
	}
	cf.mu.Lock()
	m := cf.acked[r.ID]
	if m == nil {
		m = map[uint64]bool{}
		cf.acked[r.ID] = m
	}
	m[seq] = true
	cf.lastAck[r.ID] = time.Now()
	cf.mu.Unlock()
}

// Unserved lists robots that have had no event acknowledged since t.
func (cf *Fleet) Unserved(t time.Time) []string {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	var ids []string
	for _, r := range cf.Robots {
		if cf.lastAck[r.ID].Before(t) {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// Acked is how many events control acknowledged, over all robots.
func (cf *Fleet) Acked() int {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	n := 0
	for _, m := range cf.acked {
		n += len(m)
	}
	return n
}

// Start starts every robot.
func (cf *Fleet) Start(ctx context.Context) error {
	for _, f := range cf.Fleets {
		if err := f.Start(ctx, 0); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops every robot.
func (cf *Fleet) Stop() error {
	var errs []error
	for _, f := range cf.Fleets {
		errs = append(errs, f.Stop())
	}
	return errors.Join(errs...)
}

// LogTail is the last n lines of the agents' warnings.
func (cf *Fleet) LogTail(n int) string {
	data, _ := os.ReadFile(cf.LogPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Connected counts robots in state Connected.
func (cf *Fleet) Connected() int {
	n := 0
	for _, f := range cf.Fleets {
		n += f.Connected()
	}
	return n
}

// States counts robots by agent state ("connected: 998, reconnecting: 2").
func (cf *Fleet) States() string {
	counts := map[string]int{}
	for _, r := range cf.Robots {
		counts[r.State().String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// WaitConnected waits until every robot is connected.
func (cf *Fleet) WaitConnected(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for cf.Connected() < len(cf.Robots) {
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("%d of %d robots connected after %s (%s)", cf.Connected(), len(cf.Robots), timeout, cf.States())
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), nil
}

// WaitConnectedInControl waits until control, read through via's admin
// socket, lists every robot as connected. The agents' own state is not
// enough: the gateway answers a hello before the robot's connection record
// commits, so an agent is connected a moment before control knows it.
func (cf *Fleet) WaitConnectedInControl(ctx context.Context, via *lab.Member, timeout time.Duration) error {
	start := time.Now()
	for {
		robots, err := RobotsSnapshot(ctx, via)
		missing := len(cf.Robots)
		if err == nil {
			connected := map[string]bool{}
			for _, raw := range robots {
				var r struct {
					ID     string `json:"id"`
					Status struct {
						Connected bool `json:"connected"`
					} `json:"status"`
				}
				if json.Unmarshal(raw, &r) == nil {
					connected[r.ID] = r.Status.Connected
				}
			}
			missing = 0
			for _, r := range cf.Robots {
				if !connected[r.ID] {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("%d of %d robots not connected in control (read through %s) after %s (last read error: %v)", missing, len(cf.Robots), via.Name, timeout, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitDrained waits until every robot is connected with nothing left
// unacknowledged in its queue.
func (cf *Fleet) WaitDrained(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		pending, down := 0, 0
		for _, r := range cf.Robots {
			if r.State() != agent.Connected {
				down++
			}
			pending += r.Stats().Queue.Pending
		}
		if pending == 0 && down == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("queues not drained after %s: %d items pending, %d robots not connected", timeout, pending, down)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ConnWatch samples every robot's connection state and records outages
// (from the first sample not Connected to the next sample Connected).
type ConnWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	down    map[string]time.Time // robots down now, since
	outages []Outage
}

// Outage is one robot's time away from control.
type Outage struct {
	Robot      string
	Start, End time.Time
}

// Watch starts sampling every period.
func (cf *Fleet) Watch(period time.Duration) *ConnWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &ConnWatch{cancel: cancel, done: make(chan struct{}), down: map[string]time.Time{}}
	go func() {
		defer close(w.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			now := time.Now()
			w.mu.Lock()
			for _, r := range cf.Robots {
				up := r.State() == agent.Connected
				since, wasDown := w.down[r.ID]
				switch {
				case !up && !wasDown:
					w.down[r.ID] = now
				case up && wasDown:
					delete(w.down, r.ID)
					w.outages = append(w.outages, Outage{Robot: r.ID, Start: since, End: now})
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends sampling.
func (w *ConnWatch) Stop() { w.cancel(); <-w.done }

// Since summarises outages that began at or after t0: how many robots had
// one, how many are still down, and when the last of them came back.
func (w *ConnWatch) Since(t0 time.Time) (robots, stillDown int, lastBack time.Time, longest time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string]bool{}
	for _, o := range w.outages {
		if o.Start.Before(t0) {
			continue
		}
		seen[o.Robot] = true
		if o.End.After(lastBack) {
			lastBack = o.End
		}
		longest = max(longest, o.End.Sub(o.Start))
	}
	for id, since := range w.down {
		if !since.Before(t0) {
			seen[id] = true
		}
		stillDown++
	}
	return len(seen), stillDown, lastBack, longest
}

// EventLoad makes every robot emit numbered events ("chaos.tick", data
// {"n": k} with k = 0, 1, 2 … per robot) at a steady rate.
type EventLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	emitted map[string]int
	errs    int
	lastErr error
}

// EventKind is the kind of the load's events.
const EventKind = "chaos.tick"

// StartEventLoad starts one emitter per robot, each emitting every period
// (first one at a random offset so the fleet's events spread evenly).
func StartEventLoad(robots []*robotsim.Robot, every time.Duration) *EventLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &EventLoad{cancel: cancel, emitted: map[string]int{}}
	for _, r := range robots {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(every)):
			}
			t := time.NewTicker(every)
			defer t.Stop()
			for n := 0; ; {
				data, _ := json.Marshal(map[string]int{"n": n})
				if err := r.Emit(ctx, protocol.Event{Kind: EventKind, Data: data}); err != nil {
					if ctx.Err() != nil {
						return
					}
					l.mu.Lock()
					l.errs++
					l.lastErr = err
					l.mu.Unlock()
				} else {
					n++
					l.mu.Lock()
					l.emitted[r.ID] = n
					l.mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	return l
}

// Stop ends the load and returns how many events each robot emitted.
func (l *EventLoad) Stop() map[string]int {
	l.cancel()
	l.wg.Wait()
	return l.Emitted()
}

// Emitted is the number of events each robot has emitted so far.
func (l *EventLoad) Emitted() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.emitted))
	for k, v := range l.emitted {
		out[k] = v
	}
	return out
}

// Errors is how many emits failed, and the last failure.
func (l *EventLoad) Errors() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs, l.lastErr
}

// DeliveryReport is what the event log holds of a load.
type DeliveryReport struct {
	Emitted    int // events the robots emitted (durably queued)
	Acked      int // of those, acknowledged by control
	Stored     int // chaos events found in the log
	Lost       int // emitted but not in the log
	LostAcked  int // acknowledged but not in the log
	Duplicates int // stored more than once (same number or same robot sequence)
	Examples   []string
	LogEvents  int // every event in the log
}

func (r *DeliveryReport) example(format string, args ...any) {
	if len(r.Examples) < 10 {
		r.Examples = append(r.Examples, fmt.Sprintf(format, args...))
	}
}

// OK is true when nothing was lost and nothing duplicated.
func (r DeliveryReport) OK() bool { return r.Lost == 0 && r.LostAcked == 0 && r.Duplicates == 0 }

func (r DeliveryReport) String() string {
	return fmt.Sprintf("emitted %d, acknowledged %d, stored %d, lost %d (acknowledged %d), duplicates %d; %d events in the log%s",
		r.Emitted, r.Acked, r.Stored, r.Lost, r.LostAcked, r.Duplicates, r.LogEvents, strings.Join(append([]string{""}, r.Examples...), "\n  "))
}

// VerifyDelivery reads the whole event log through a control node's API
// (admin socket: no rate limit) and checks that every event the load
// emitted, and every event control acknowledged, is there exactly once.
func VerifyDelivery(ctx context.Context, via *lab.Member, emitted map[string]int, cf *Fleet) (DeliveryReport, error) {
	var rep DeliveryReport
	type key struct {
		robot string
		n     int
	}
	count := map[key]int{}
	seqs := map[string]map[uint64]bool{}
	var after int64
	for {
		var page api.EventPage
		if err := via.Admin().Do(ctx, "GET", fmt.Sprintf("/v1/events?after=%d&limit=%d", after, api.MaxLimit), nil, &page); err != nil {
			return rep, fmt.Errorf("read the event log through %s: %w", via.Name, err)
		}
		if len(page.Events) == 0 {
			break
		}
		after = page.Next
		for _, e := range page.Events {
			rep.LogEvents++
			if e.Type != store.TypeRobotEvent {
				continue
			}
			var ev protocol.Event
			var d struct {
				N *int `json:"n"`
			}
			if json.Unmarshal(e.Data, &ev) != nil || ev.Kind != EventKind || json.Unmarshal(ev.Data, &d) != nil || d.N == nil {
				continue
			}
			rep.Stored++
			count[key{e.RobotID, *d.N}]++
			s := seqs[e.RobotID]
			if s == nil {
				s = map[uint64]bool{}
				seqs[e.RobotID] = s
			}
			if s[e.RobotSeq] {
				rep.Duplicates++
				rep.example("robot %s sequence %d stored twice", e.RobotID, e.RobotSeq)
			}
			s[e.RobotSeq] = true
		}
	}
	for robot, n := range emitted {
		rep.Emitted += n
		for i := range n {
			switch c := count[key{robot, i}]; {
			case c == 0:
				rep.Lost++
				rep.example("robot %s event %d missing", robot, i)
			case c > 1:
				rep.Duplicates += c - 1
				rep.example("robot %s event %d stored %d times", robot, i, c)
			}
		}
	}
	for k, c := range count {
		if k.n >= emitted[k.robot] && c > 0 {
			// Stored but never counted as emitted: Emit failed after
			// queueing? Report it; it is neither loss nor duplicate.
			rep.example("robot %s event %d stored but not counted as emitted", k.robot, k.n)
		}
	}
	cf.mu.Lock()
	for robot, m := range cf.acked {
		for seq := range m {
			rep.Acked++
			if !seqs[robot][seq] {
				rep.LostAcked++
				rep.example("robot %s sequence %d acknowledged but not in the log", robot, seq)
			}
		}
	}
	cf.mu.Unlock()
	return rep, nil
}

// RobotsSnapshot lists every robot through a control node's API (admin
// socket), sorted by id, as JSON for comparison.
func RobotsSnapshot(ctx context.Context, via *lab.Member) ([]json.RawMessage, error) {
	var out []json.RawMessage
	after := ""
	for {
		var page struct {
			Robots []json.RawMessage `json:"robots"`
			Next   string            `json:"next"`
		}
		if err := via.Admin().Do(ctx, "GET", "/v1/robots?limit=1000&after="+after, nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Robots...)
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// LogDigest summarises the whole event log read through a control node:
// how many events, the newest sequence, and a SHA-256 over all of them.
type LogDigest struct {
	Events  int
	LastSeq int64
	SHA256  string
}

// EventLogDigest reads the event log through via's API (admin socket).
func EventLogDigest(ctx context.Context, via *lab.Member) (LogDigest, error) {
	var d LogDigest
	h := sha256.New()
	for {
		var page struct {
			Events []json.RawMessage `json:"events"`
			Next   int64             `json:"next"`
		}
		if err := via.Admin().Do(ctx, "GET", fmt.Sprintf("/v1/events?after=%d&limit=%d", d.LastSeq, api.MaxLimit), nil, &page); err != nil {
			return d, err
		}
		if len(page.Events) == 0 {
			d.SHA256 = hex.EncodeToString(h.Sum(nil))
			return d, nil
		}
		for _, e := range page.Events {
			h.Write(e)
			h.Write([]byte{'\n'})
		}
		d.Events += len(page.Events)
		d.LastSeq = page.Next
	}
}
