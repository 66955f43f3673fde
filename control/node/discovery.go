package node

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/control/discovery"
	"github.com/lekiwi/heartbeat/control/leader"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// DefaultDiscoveryGrace is how long a robot must be seen on the network,
// and not connected, before DeviceDiscovered is recorded: a booting agent
// advertises and connects at about the same time, and a robot that
// connects within the grace is not news.
const DefaultDiscoveryGrace = 20 * time.Second

// discoveryRecheck is how often a robot that was connected when checked is
// checked again while it stays on the network: if it disconnects but keeps
// advertising, that appearance is then recorded.
const discoveryRecheck = time.Minute

// startDiscovery browses for robots over mDNS and records DeviceDiscovered
// for those on the network but not connected. It never fails the node:
// without a usable mDNS socket (port 5353 refused, no multicast
// interface) it logs and the node runs without discovery.
func (n *Node) startDiscovery(ctx context.Context, grace time.Duration) {
	log := n.log.With("component", "discovery")
	rec := newDiscoveryRecorder(n.store, n.gateway.Submit, n.cfg.NodeID, grace, log)
	b, err := discovery.New(discovery.Config{Interfaces: n.cfg.DiscoveryInterfaces, OnChange: rec.observe, Logger: log})
	if err != nil {
		log.Warn("mDNS discovery off: robots on the network but not connected are not recorded", "err", err)
		return
	}
	n.run(ctx, func(ctx context.Context) error {
		if err := b.Run(ctx); err != nil && ctx.Err() == nil {
			log.Warn("mDNS discovery stopped", "err", err)
		}
		return nil
	})
	n.run(ctx, func(ctx context.Context) error { rec.run(ctx); return nil })
	log.Info("mDNS discovery on", "interfaces", n.cfg.DiscoveryInterfaces, "grace", grace)
}

// discoveryRecorder turns the browser's reports into DeviceDiscovered
// events, once per robot per appearance: an appearance begins when a robot
// is first complete on the network and ends when it says goodbye or its
// records expire; announcements and changes in between record nothing.
//
// Every node of a cluster browses, but only the dqlite leader records, so a
// LAN with three control nodes still gets one event. After a failover the
// new leader records the appearances it knows that are still unrecorded by
// itself: an appearance the old leader recorded may be recorded once more.
type discoveryRecorder struct {
	st       *store.Store
	submit   func(context.Context, func(context.Context) error) error
	nodeID   string
	grace    time.Duration
	recheck  time.Duration
	log      *slog.Logger
	now      func() time.Time
	isLeader leader.IsLeader

	mu      sync.Mutex
	present map[string]*appearance // by robot id
	wake    chan struct{}
}

type appearance struct {
	d         discovery.Discovered
	first     time.Time // when this appearance began
	nextCheck time.Time
	recorded  bool
}

func newDiscoveryRecorder(st *store.Store, submit func(context.Context, func(context.Context) error) error, nodeID string, grace time.Duration, log *slog.Logger) *discoveryRecorder {
	if grace <= 0 {
		grace = DefaultDiscoveryGrace
	}
	return &discoveryRecorder{
		st: st, submit: submit, nodeID: nodeID, grace: grace, recheck: discoveryRecheck, log: log, now: time.Now,
		isLeader: st.IsLeader, present: map[string]*appearance{}, wake: make(chan struct{}, 1),
	}
}

// observe is the browser's OnChange: it only updates the table (the
// browser's goroutine must not wait for the store).
func (r *discoveryRecorder) observe(d discovery.Discovered) {
	if err := protocol.ValidRobotID(d.RobotID); err != nil {
		r.log.Debug("ignoring an mDNS service whose robot id is not valid", "instance", d.Instance, "err", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.Gone {
		delete(r.present, d.RobotID)
		return
	}
	if a, ok := r.present[d.RobotID]; ok {
		a.d = d // same appearance: newer address, port or TXT
		return
	}
	r.present[d.RobotID] = &appearance{d: d, first: r.now()}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run makes passes until ctx ends: on every new appearance and on a tick
// short enough to honour the grace.
func (r *discoveryRecorder) run(ctx context.Context) {
	tick := min(max(r.grace/4, 100*time.Millisecond), 5*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		r.pass(ctx)
	}
}

// pass records the appearances whose grace ended and whose robot is not
// connected. It does its reads and writes outside the lock.
func (r *discoveryRecorder) pass(ctx context.Context) {
	now := r.now()
	type due struct {
		a *appearance
		d discovery.Discovered
	}
	var todo []due
	r.mu.Lock()
	for _, a := range r.present {
		if !a.recorded && !now.Before(a.first.Add(r.grace)) && !now.Before(a.nextCheck) {
			todo = append(todo, due{a, a.d})
		}
	}
	r.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	if leads, err := leader.Check(ctx, r.isLeader, leader.CheckTimeout); err != nil || !leads {
		return
	}
	for _, t := range todo {
		connected, err := r.connected(ctx, t.d.RobotID)
		if err != nil {
			r.log.Warn("cannot tell whether a discovered robot is connected; trying again", "robot", t.d.RobotID, "err", err)
			continue
		}
		if connected {
			r.mu.Lock()
			t.a.nextCheck = now.Add(r.recheck)
			r.mu.Unlock()
			continue
		}
		ev := discoveredEvent(t.d, r.nodeID, now)
		err = r.submit(ctx, func(ctx context.Context) error {
			_, err := r.st.Append(ctx, []store.Event{ev})
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("DeviceDiscovered not recorded; trying again", "robot", t.d.RobotID, "err", err)
			}
			continue
		}
		r.mu.Lock()
		t.a.recorded = true
		r.mu.Unlock()
		r.log.Info("robot on the network but not connected", "robot", t.d.RobotID, "address", t.d.Addr, "agent", t.d.AgentVersion())
	}
}

// connected reports whether control has a live session with the robot
// on any node; a robot control never heard of is not connected.
func (r *discoveryRecorder) connected(ctx context.Context, id string) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rb, err := r.st.Robot(qctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return rb.Status.Connected, nil
}

func discoveredEvent(d discovery.Discovered, nodeID string, now time.Time) store.Event {
	data := store.DeviceDiscoveredData{Instance: d.Instance, Type: d.Type, Host: d.Host, Port: d.Port,
		AgentVersion: d.AgentVersion(), OSVersion: d.OSVersion(), Node: nodeID}
	if d.Addr.IsValid() {
		data.Address = d.Addr.String()
	}
	b, _ := json.Marshal(data) // strings and ints only: cannot fail
	return store.Event{RobotID: d.RobotID, Type: store.TypeDeviceDiscovered, Time: now.UTC(), Data: b,
		Actor: "control/discovery@" + nodeID}
}
