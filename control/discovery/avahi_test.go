package discovery

import (
	"net"
	"net/netip"
	"testing"
	"time"

	hmdns "github.com/hashicorp/mdns"

	"github.com/lekiwi/heartbeat/internal/avahitest"
	"github.com/lekiwi/heartbeat/protocol"
)

// TestBrowserFindsAvahiAndHashicorp browses from one namespace while a real
// avahi-daemon in another publishes an XLE robot (answers by multicast) and
// hashicorp/mdns' stock server in ours publishes a LeKiwi (answers by
// unicast only): both must be reported complete, and the Avahi one gone
// when its publisher stops.
func TestBrowserFindsAvahiAndHashicorp(t *testing.T) {
	env := avahitest.Start(t)
	env.Publish(t, "xle-7", "_xle._tcp", 8443, "txtvers=1", "id=xle-7", "type=xle", "agent=1.4.0", `os=bookworm "12"`)

	events := make(chan Discovered, 64)
	var browser *Browser
	var server *hmdns.Server
	env.InPeer(t, func() {
		ifi, err := net.InterfaceByName(env.PeerIface)
		if err != nil {
			t.Error(err)
			return
		}
		svc, err := hmdns.NewMDNSService("lekiwi-3", "_lekiwi._tcp", "local.", "lekiwi-3.local.", 5555,
			[]net.IP{env.PeerIP}, []string{"id=lekiwi-3", "type=lekiwi", "agent=1.3.9"})
		if err != nil {
			t.Error(err)
			return
		}
		if server, err = hmdns.NewServer(&hmdns.Config{Zone: svc, Iface: ifi}); err != nil {
			t.Error(err)
			return
		}
		browser, err = New(Config{Interfaces: []string{env.PeerIface}, OnChange: func(d Discovered) { events <- d }})
		if err != nil {
			t.Error(err)
		}
	})
	if server != nil {
		defer server.Shutdown()
	}
	if browser == nil {
		t.FailNow()
	}
	_, stop := avahitest.Background(t, browser.Run)
	defer stop() // before the hashicorp server shuts down, as the browser may still be asking it

	found := map[string]Discovered{}
	timeout := time.After(15 * time.Second)
	for len(found) < 2 {
		select {
		case d := <-events:
			if !d.Gone {
				found[d.RobotID] = d
			}
		case <-timeout:
			t.Fatalf("browser found only %v within 15 s", found)
		}
	}
	xle := found["xle-7"]
	if xle.Type != protocol.RobotXLE || xle.Addr != netip.AddrFrom4([4]byte(env.AvahiIP)) || xle.Port != 8443 ||
		xle.Host != "avahitest.local." || xle.AgentVersion() != "1.4.0" || xle.OSVersion() != `bookworm "12"` ||
		xle.Instance != "xle-7._xle._tcp.local." || xle.Seen.IsZero() {
		t.Errorf("Avahi's robot = %+v", xle)
	}
	lk := found["lekiwi-3"]
	if lk.Type != protocol.RobotLeKiwi || lk.Addr != netip.AddrFrom4([4]byte(env.PeerIP)) || lk.Port != 5555 || lk.AgentVersion() != "1.3.9" {
		t.Errorf("hashicorp/mdns' robot = %+v", lk)
	}
	if got := browser.Snapshot(); len(got) != 2 {
		t.Errorf("Snapshot has %d robots, want 2: %+v", len(got), got)
	}

	// Stopping the publisher makes Avahi send goodbyes.
	env.StopPublishing(t, "xle-7")
	timeout = time.After(10 * time.Second)
	for {
		select {
		case d := <-events:
			if d.Gone && d.RobotID == "xle-7" {
				return
			}
		case <-timeout:
			t.Fatal("no Gone event for xle-7 after its publisher stopped")
		}
	}
}
