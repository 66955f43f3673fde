// Package services watches the profile's systemd units (the agent, ssh,
// the robot's teleop host...) and turns their state changes into events:
// ActiveState/SubState transitions and restart counts (NRestarts).
//
// It is driven by systemd's change signals, not by polling: on a quiet
// robot it costs nothing between changes. A periodic resync re-reads every
// unit in case a signal was lost. The Systemd interface separates the
// watch logic from D-Bus; DBus is the real implementation
// (github.com/coreos/go-systemd/v22/dbus), tests use a fake or a private
// bus.
//
// Not done here: a unit reloaded or replaced by daemon-reload keeps its
// object path, so it needs nothing; a bus restart ends Run with an error
// and the caller dials again.
package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// EventServiceChanged is the kind of the event a Change becomes. It is not
// (yet) in protocol's list of projected kinds; control stores and shows it.
const EventServiceChanged = "service.changed"

// UnitState is what systemd says about one unit.
type UnitState struct {
	Unit        string `json:"unit"`
	LoadState   string `json:"load_state"`   // loaded, not-found, masked, ...
	ActiveState string `json:"active_state"` // active, reloading, inactive, failed, activating, deactivating, maintenance
	SubState    string `json:"sub_state"`    // running, exited, dead, auto-restart, ...
	Restarts    uint32 `json:"restarts"`     // NRestarts: automatic restarts since the unit was last started by hand (services only)
}

// Systemd is the part of systemd's D-Bus API the watcher needs.
type Systemd interface {
	// Subscribe asks systemd to send change signals for units and
	// returns the names of units whose properties changed, until ctx
	// ends. Names may repeat, and may include units not asked for. The
	// channel closes when the connection is lost.
	Subscribe(ctx context.Context, units []string) (<-chan string, error)
	// UnitState reads a unit's current state.
	UnitState(ctx context.Context, unit string) (UnitState, error)
}

// Change is a reported change of one unit.
type Change struct {
	Old, New UnitState
	// Initial marks the first report of a unit that is not active when
	// the watch starts (Old is then empty).
	Initial bool
}

// ChangeData is the event data of a service.changed event.
type ChangeData struct {
	UnitState
	PreviousActiveState string `json:"previous_active_state,omitempty"`
	PreviousSubState    string `json:"previous_sub_state,omitempty"`
	// RestartsSinceLast is how many automatic restarts happened since the
	// previous report of this unit.
	RestartsSinceLast uint32 `json:"restarts_since_last,omitempty"`
}

// Event is the protocol event for the change: severity error when the
// unit failed or is missing, warning when it is down or restarted, info
// when it is (back) up.
func (c Change) Event() protocol.Event {
	n := c.New
	d := ChangeData{UnitState: n}
	if !c.Initial {
		d.PreviousActiveState, d.PreviousSubState = c.Old.ActiveState, c.Old.SubState
		if n.Restarts > c.Old.Restarts {
			d.RestartsSinceLast = n.Restarts - c.Old.Restarts
		}
	}
	sev := "info"
	switch {
	case n.ActiveState == "failed" || n.LoadState == "not-found" || n.LoadState == "error":
		sev = "error"
	case n.ActiveState != "active" || d.RestartsSinceLast > 0:
		sev = "warning"
	}
	msg := fmt.Sprintf("%s %s (%s)", n.Unit, n.ActiveState, n.SubState)
	if !c.Initial && c.Old.ActiveState != n.ActiveState {
		msg = fmt.Sprintf("%s %s → %s (%s)", n.Unit, c.Old.ActiveState, n.ActiveState, n.SubState)
	}
	if n.LoadState != "" && n.LoadState != "loaded" {
		msg += ", unit " + n.LoadState
	}
	if d.RestartsSinceLast > 0 {
		msg += fmt.Sprintf(", restarted %d× (%d in total)", d.RestartsSinceLast, n.Restarts)
	}
	data, _ := json.Marshal(d)
	return protocol.Event{Kind: EventServiceChanged, Severity: sev, Message: msg, Data: data}
}

// Defaults for Config fields left zero.
const (
	DefaultMinInterval = 10 * time.Second
	DefaultResync      = 5 * time.Minute
)

// Config configures a Watcher.
type Config struct {
	// Units are the systemd unit names to watch (required; see
	// UnitsFromProfile).
	Units []string
	// MinInterval bounds events per unit: changes within it after a
	// report are coalesced into one report of the latest state when it
	// ends (default DefaultMinInterval), so a crash-looping service costs
	// at most one event per unit per interval. Negative means no bound.
	MinInterval time.Duration
	// Resync is how often every unit is re-read regardless of signals
	// (default DefaultResync).
	Resync time.Duration
}

// UnitsFromProfile returns the units a profile names: required first,
// then enabled ones, without duplicates. Disabled units are not watched.
func UnitsFromProfile(s profiles.Services) []string {
	var units []string
	for _, u := range slices.Concat(s.Required, s.Enable, s.Watch) {
		if !slices.Contains(units, u) {
			units = append(units, u)
		}
	}
	return units
}

// Watcher reports unit changes.
type Watcher struct {
	sd  Systemd
	cfg Config

	reported map[string]UnitState // last state reported (or seen at start)
	mu       sync.Mutex           // guards current, read by States
	current  map[string]UnitState
	lastEmit map[string]time.Time
}

// New returns a watcher of cfg.Units through sd.
func New(sd Systemd, cfg Config) (*Watcher, error) {
	if sd == nil {
		return nil, errors.New("services: nil Systemd")
	}
	if len(cfg.Units) == 0 {
		return nil, errors.New("services: no units to watch (the profile's services lists are empty)")
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	return &Watcher{sd: sd, cfg: cfg, reported: map[string]UnitState{}, current: map[string]UnitState{}, lastEmit: map[string]time.Time{}}, nil
}

// States returns the latest known state of every watched unit, in Units
// order. Safe from any goroutine.
func (w *Watcher) States() []UnitState {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]UnitState, 0, len(w.cfg.Units))
	for _, u := range w.cfg.Units {
		if s, ok := w.current[u]; ok {
			out = append(out, s)
		}
	}
	return out
}

// Run subscribes, reads every unit, reports those not active, then
// reports changes until ctx ends or the subscription is lost (an error;
// the caller reconnects and calls Run on a new Watcher). emit is called
// from Run's goroutine.
func (w *Watcher) Run(ctx context.Context, emit func(Change)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes, err := w.sd.Subscribe(ctx, w.cfg.Units)
	if err != nil {
		return fmt.Errorf("services: subscribe to systemd unit changes: %w", err)
	}
	watched := make(map[string]bool, len(w.cfg.Units))
	for _, u := range w.cfg.Units {
		watched[u] = true
		s, err := w.sd.UnitState(ctx, u)
		if err != nil {
			return fmt.Errorf("services: read unit %s: %w", u, err)
		}
		w.setCurrent(u, s)
		w.reported[u] = s
		if s.ActiveState != "active" {
			w.lastEmit[u] = time.Now()
			emit(Change{New: s, Initial: true})
		}
	}
	resync := time.NewTicker(w.cfg.Resync)
	defer resync.Stop()
	// One timer serves every unit's coalescing window.
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	for {
		var dirty []string
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u, ok := <-changes:
			if !ok {
				return errors.New("services: systemd subscription closed (D-Bus connection lost?)")
			}
			if watched[u] {
				dirty = append(dirty, u)
			}
		case <-resync.C:
			dirty = w.cfg.Units
		case <-flush.C:
		}
		for _, u := range dirty {
			s, err := w.sd.UnitState(ctx, u)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("services: read unit %s: %w", u, err)
			}
			w.setCurrent(u, s)
		}
		if next := w.report(time.Now(), emit); !next.IsZero() {
			flush.Reset(time.Until(next))
		}
	}
}

func (w *Watcher) setCurrent(unit string, s UnitState) {
	w.mu.Lock()
	w.current[unit] = s
	w.mu.Unlock()
}

// report emits every unit whose state differs meaningfully from its last
// report and whose window has passed; it returns when the next pending
// unit's window ends (zero if none is pending).
func (w *Watcher) report(now time.Time, emit func(Change)) time.Time {
	var next time.Time
	for _, u := range w.cfg.Units {
		w.mu.Lock()
		cur := w.current[u]
		w.mu.Unlock()
		old := w.reported[u]
		if !differs(old, cur) {
			continue
		}
		if w.cfg.MinInterval > 0 {
			if due := w.lastEmit[u].Add(w.cfg.MinInterval); now.Before(due) {
				if next.IsZero() || due.Before(next) {
					next = due
				}
				continue
			}
		}
		w.reported[u], w.lastEmit[u] = cur, now
		emit(Change{Old: old, New: cur})
	}
	return next
}

// differs says whether a change is worth an event: a different active,
// sub or load state, or more restarts. A restart count that went down
// (the unit was restarted by hand, which resets it) is recorded silently
// with the next reported change.
func differs(a, b UnitState) bool {
	return a.ActiveState != b.ActiveState || a.SubState != b.SubState || a.LoadState != b.LoadState || b.Restarts > a.Restarts
}
