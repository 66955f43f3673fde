package mdns

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/internal/avahitest"
	"github.com/lekiwi/heartbeat/protocol"
)

// TestAvahiSeesAdvertiser runs the advertiser in one namespace and a real
// avahi-daemon in another: the daemon must cache the service from the
// announcements alone (no query asked), avahi-browse must resolve it with
// its TXT, and the goodbye must remove it.
func TestAvahiSeesAdvertiser(t *testing.T) {
	env := avahitest.Start(t)
	var adv *Advertiser
	env.InPeer(t, func() {
		var err error
		adv, err = New(Config{
			RobotID: "xle-7", Type: protocol.RobotXLE, AgentVersion: `1.4.0`, OSVersion: `bookworm 12\5`,
			Port: 9100, Interfaces: []string{env.PeerIface},
		})
		if err != nil {
			t.Error(err)
		}
	})
	if adv == nil {
		t.FailNow()
	}
	ctx, stop := avahitest.Background(t, adv.Run)

	// Announcements: avahi caches them although nobody asked.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := env.BrowseCache(ctx, ServiceType(protocol.RobotXLE))
		if err == nil && strings.Contains(out, ";IPv4;xle-7;_xle._tcp;local") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("avahi's cache never held the announced service:\n%s (err %v)", out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// avahi-browse names the interface by an index from another namespace:
	// leave that field out.
	wantLine := `;IPv4;xle-7;_xle._tcp;local;xle-7.local;` + env.PeerIP.String() + `;9100;`
	var out string
	deadline = time.Now().Add(15 * time.Second)
	for {
		var err error
		out, err = env.Browse(ctx, ServiceType(protocol.RobotXLE))
		if err == nil && strings.Contains(out, wantLine) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("avahi-browse did not resolve the advertised service; want a line starting %q, got:\n%s (err %v)", wantLine, out, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, kv := range []string{`"txtvers=1"`, `"id=xle-7"`, `"type=xle"`, `"agent=1.4.0"`, `"os=bookworm 12\\5"`} {
		if !strings.Contains(out, kv) {
			t.Errorf("avahi-browse TXT lacks %s:\n%s", kv, out)
		}
	}

	// Goodbye: after Run ends, avahi drops the service at once rather than
	// after the 120 s TTL.
	stop()
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, err := env.Browse(context.Background(), ServiceType(protocol.RobotXLE))
		if err == nil && !strings.Contains(out, "xle-7") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("avahi still lists the service after the goodbye:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
