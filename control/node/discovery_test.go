package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/discovery"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func startTestNode(t *testing.T, mutate func(*Config)) *Node {
	t.Helper()
	cfg := Defaults()
	cfg.Insecure, cfg.DataDir, cfg.Listen, cfg.DBAddress = true, t.TempDir(), "127.0.0.1:0", freeAddr(t)
	cfg.RetentionInterval = 0
	cfg.Discovery = false // no multicast on the host's interfaces
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := Start(ctx, cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	return n
}

func discovered(id string, gone bool) discovery.Discovered {
	return discovery.Discovered{
		Instance: id + "._lekiwi._tcp.local.", RobotID: id, Type: protocol.RobotLeKiwi, Host: id + ".local.",
		Addr: netip.MustParseAddr("192.0.2.9"), Port: 22, TXT: map[string]string{"agent": "1.2.3", "os": "Debian 12"},
		Seen: time.Now(), Gone: gone,
	}
}

func discoveredEvents(t *testing.T, st *store.Store) []store.Event {
	t.Helper()
	evs, err := st.Events(context.Background(), 0, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Event
	for _, e := range evs {
		if e.Type == store.TypeDeviceDiscovered {
			out = append(out, e)
		}
	}
	return out
}

// Reports from the mDNS browser become DeviceDiscovered events on a real
// node: one per robot per appearance however often it announces, none for
// a connected robot nor for a robot id that is not valid, a new one after
// the robot left and came back; the robot is not added to the fleet.
func TestDiscoveredBecomesOneEventPerAppearance(t *testing.T) {
	n := startTestNode(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	data, _ := json.Marshal(store.ConnectedData{Session: "s1", Node: "n1", Type: protocol.RobotLeKiwi})
	if _, err := n.Store().Append(ctx, []store.Event{{RobotID: "kiwi-on", Type: store.TypeRobotConnected, Time: time.Now(), Data: data}}); err != nil {
		t.Fatal(err)
	}
	const grace = 100 * time.Millisecond
	rec := newDiscoveryRecorder(n.Store(), n.Gateway().Submit, "n1", grace, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { defer close(done); rec.run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := 0; i < 3; i++ { // three announcements
		rec.observe(discovered("kiwi-off", false))
		rec.observe(discovered("kiwi-on", false))
		bad := discovered("x", false)
		bad.RobotID = "Not_A_Label"
		rec.observe(bad)
		time.Sleep(grace / 2)
	}
	waitEvents := func(want int) []store.Event {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			evs := discoveredEvents(t, n.Store())
			if len(evs) >= want || time.Now().After(deadline) {
				// Several more passes must not add any.
				time.Sleep(10 * grace)
				return discoveredEvents(t, n.Store())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	evs := waitEvents(1)
	if len(evs) != 1 || evs[0].RobotID != "kiwi-off" {
		t.Fatalf("DeviceDiscovered events %+v: want exactly one, for kiwi-off", evs)
	}
	var d store.DeviceDiscoveredData
	if err := json.Unmarshal(evs[0].Data, &d); err != nil {
		t.Fatal(err)
	}
	want := store.DeviceDiscoveredData{Instance: "kiwi-off._lekiwi._tcp.local.", Type: protocol.RobotLeKiwi, Host: "kiwi-off.local.",
		Address: "192.0.2.9", Port: 22, AgentVersion: "1.2.3", OSVersion: "Debian 12", Node: "n1"}
	if d != want {
		t.Fatalf("data %+v, want %+v", d, want)
	}
	if _, err := n.Store().Robot(ctx, "kiwi-off"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("kiwi-off in the fleet after discovery: %v", err)
	}

	// Gone, then back: a new appearance.
	rec.observe(discovered("kiwi-off", true))
	rec.observe(discovered("kiwi-off", false))
	if evs := waitEvents(2); len(evs) != 2 || evs[1].RobotID != "kiwi-off" {
		t.Fatalf("after goodbye and return: %+v, want a second event for kiwi-off", evs)
	}
}

// A robot that connects within the grace is not recorded.
func TestDiscoveredThenConnectedWithinGrace(t *testing.T) {
	n := startTestNode(t, nil)
	ctx := context.Background()
	rec := newDiscoveryRecorder(n.Store(), n.Gateway().Submit, "n1", time.Hour, slog.New(slog.DiscardHandler))
	now := time.Now()
	rec.now = func() time.Time { return now }
	rec.observe(discovered("kiwi-boot", false))
	rec.pass(ctx)
	data, _ := json.Marshal(store.ConnectedData{Session: "s1", Node: "n1", Type: protocol.RobotLeKiwi})
	if _, err := n.Store().Append(ctx, []store.Event{{RobotID: "kiwi-boot", Type: store.TypeRobotConnected, Time: now, Data: data}}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	rec.pass(ctx)
	if evs := discoveredEvents(t, n.Store()); len(evs) != 0 {
		t.Fatalf("events %+v for a robot that connected within the grace", evs)
	}
	// It disconnects but keeps advertising: recorded at the next check.
	disc, _ := json.Marshal(store.DisconnectedData{Session: "s1"})
	if _, err := n.Store().Append(ctx, []store.Event{{RobotID: "kiwi-boot", Type: store.TypeRobotDisconnected, Time: now, Data: disc}}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(discoveryRecheck)
	rec.pass(ctx)
	if evs := discoveredEvents(t, n.Store()); len(evs) != 1 {
		t.Fatalf("events %+v: want one once the robot is disconnected", evs)
	}
}

// A node whose discovery cannot start (here: an interface that does not
// exist; on a host, port 5353 refused) starts anyway.
func TestNodeStartsWhenDiscoveryCannot(t *testing.T) {
	n := startTestNode(t, func(c *Config) {
		c.Discovery = true
		c.DiscoveryInterfaces = []string{"nosuch-lekiwi0"}
	})
	if _, err := n.Store().Events(context.Background(), 0, 1, ""); err != nil {
		t.Fatalf("node not usable: %v", err)
	}
}

func TestDiscoveryConfig(t *testing.T) {
	c := Defaults()
	if !c.Discovery {
		t.Fatal("discovery is off by default")
	}
	env := map[string]string{EnvPrefix + "DISCOVERY": "false", EnvPrefix + "DISCOVERY_INTERFACES": "eth1, wlan0"}
	if err := c.LoadEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Discovery || len(c.DiscoveryInterfaces) != 2 || c.DiscoveryInterfaces[1] != "wlan0" {
		t.Fatalf("after env: discovery %v on %q", c.Discovery, c.DiscoveryInterfaces)
	}
}
