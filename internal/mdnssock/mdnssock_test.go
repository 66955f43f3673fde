package mdnssock

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/lekiwi/heartbeat/internal/netns"
)

func TestGroup(t *testing.T) {
	g := Group()
	if !g.IP.Equal(net.IPv4(224, 0, 0, 251)) || g.Port != 5353 {
		t.Fatalf("Group() = %v, want 224.0.0.251:5353", g)
	}
	g.Port = 1
	if Group().Port != 5353 {
		t.Fatal("changing one Group() result changed the next")
	}
}

func TestInterfacesByName(t *testing.T) {
	if _, err := Interfaces([]string{"lo", "no-such-if0"}); err == nil || !strings.Contains(err.Error(), `"no-such-if0"`) {
		t.Fatalf("Interfaces with an unknown name: err = %v, want one naming it", err)
	}
	ifaces, err := Interfaces([]string{"lo"})
	if err != nil {
		t.Fatal(err)
	}
	// Named interfaces are taken as given, loopback included.
	if len(ifaces) != 1 || ifaces[0].Name != "lo" {
		t.Fatalf("Interfaces([lo]) = %+v", ifaces)
	}
	if ips := IPv4Addrs(ifaces[0]); len(ips) == 0 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) || len(ips[0]) != 4 {
		t.Errorf("IPv4Addrs(lo) = %v, want 127.0.0.1 in 4-byte form first", ips)
	}
}

func TestUsableFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags net.Flags
	}{
		{"down", net.FlagMulticast},
		{"no multicast", net.FlagUp},
		{"loopback", net.FlagUp | net.FlagMulticast | net.FlagLoopback},
		// Up and multicast, but index 0 has no addresses.
		{"no IPv4 address", net.FlagUp | net.FlagMulticast},
	} {
		if usable(net.Interface{Name: tc.name, Flags: tc.flags}) {
			t.Errorf("%s: usable, want not", tc.name)
		}
	}
}

// TestInterfacesAutomatic checks the interfaces picked with no names
// against the rule, on whatever network the host has.
func TestInterfacesAutomatic(t *testing.T) {
	ifaces, err := Interfaces(nil)
	if err != nil {
		if !strings.Contains(err.Error(), "name one in the configuration") {
			t.Fatalf("Interfaces(nil) error does not say what to do: %v", err)
		}
		return
	}
	for _, ifi := range ifaces {
		if !usable(ifi) {
			t.Errorf("Interfaces(nil) picked %s (flags %v, IPv4 %v)", ifi.Name, ifi.Flags, IPv4Addrs(ifi))
		}
	}
}

// TestListenInNamespace opens two sockets on a veth interface in a network
// namespace of the test's own: both bind port 5353 (SO_REUSEADDR, as Avahi
// beside us needs), a packet sent to the group by one is heard by the other
// through multicast loopback, with TTL 255 and the interface it came on.
func TestListenInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mDNS socket test needs root for a network namespace (CI runs it as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("mDNS socket test needs ip(8) (apt-get install iproute2)")
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ns := "lkms" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	// A veth pair with both ends in the namespace; md1 has no IPv4 address,
	// so Interfaces must leave it out.
	run(t, "ip", "-n", ns, "link", "add", "md0", "type", "veth", "peer", "name", "md1")
	run(t, "ip", "-n", ns, "addr", "add", "10.214.0.1/24", "dev", "md0")
	run(t, "ip", "-n", ns, "link", "set", "md0", "multicast", "on", "up")
	run(t, "ip", "-n", ns, "link", "set", "md1", "multicast", "on", "up")
	run(t, "ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "md0")

	err := netns.Run(netns.Path(ns), func() error {
		if _, err := Interfaces([]string{"eth-none"}); err == nil {
			return fmt.Errorf("unknown interface resolved in the namespace")
		}
		ifaces, err := Interfaces(nil)
		if err != nil {
			return err
		}
		if len(ifaces) != 1 || ifaces[0].Name != "md0" {
			return fmt.Errorf("Interfaces(nil) = %+v, want md0 alone", ifaces)
		}
		if _, err := Listen(nil); err == nil {
			return fmt.Errorf("Listen on no interface succeeded, want an error")
		}
		recv, err := Listen(ifaces)
		if err != nil {
			return err
		}
		defer recv.Close()
		send, err := Listen(ifaces)
		if err != nil {
			return fmt.Errorf("second socket on port 5353: %w", err)
		}
		defer send.Close()
		if ttl, err := send.MulticastTTL(); err != nil || ttl != 255 {
			return fmt.Errorf("multicast TTL = %d, %v; want 255", ttl, err)
		}
		payload := []byte("lekiwi mdnssock test")
		if _, err := send.WriteTo(payload, &ipv4.ControlMessage{IfIndex: ifaces[0].Index}, Group()); err != nil {
			return fmt.Errorf("send to group: %w", err)
		}
		if err := recv.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for range 10 { // anything else on the group is skipped, a bounded number of times
			n, cm, from, err := recv.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("receive from group: %w", err)
			}
			if !bytes.Equal(buf[:n], payload) {
				continue
			}
			if cm == nil || cm.IfIndex != ifaces[0].Index {
				return fmt.Errorf("control message %+v, want interface index %d", cm, ifaces[0].Index)
			}
			if u, ok := from.(*net.UDPAddr); !ok || u.Port != Port {
				return fmt.Errorf("packet from %v, want source port %d", from, Port)
			}
			return nil
		}
		return fmt.Errorf("our packet never arrived")
	})
	if err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
