//go:build linux

package dhcp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/lekiwi/heartbeat/internal/netns"
	"github.com/lekiwi/heartbeat/netboot/pi"
)

// netnsPair is two network namespaces joined by a veth pair: the server end
// (10.77.0.1/24) and the client end (no address, for udhcpc).
type netnsPair struct {
	srvNS, cliNS     string
	srvLink, cliLink string
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newNetnsPair(t *testing.T) *netnsPair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (CI runs as root)")
	}
	for _, tool := range []string{"ip", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install iproute2 busybox)", tool)
		}
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	p := &netnsPair{srvNS: "nbdhcp-s-" + id, cliNS: "nbdhcp-c-" + id, srvLink: "nbs" + id, cliLink: "nbc" + id}
	run(t, "ip", "netns", "add", p.srvNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.srvNS).Run() })
	run(t, "ip", "netns", "add", p.cliNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.cliNS).Run() })
	run(t, "ip", "link", "add", p.srvLink, "type", "veth", "peer", "name", p.cliLink)
	t.Cleanup(func() { exec.Command("ip", "link", "del", p.srvLink).Run() }) // only if still in the root namespace
	run(t, "ip", "link", "set", p.srvLink, "netns", p.srvNS)
	run(t, "ip", "link", "set", p.cliLink, "netns", p.cliNS)
	run(t, "ip", "-n", p.srvNS, "addr", "add", "10.77.0.1/24", "dev", p.srvLink)
	run(t, "ip", "-n", p.srvNS, "link", "set", "lo", "up")
	run(t, "ip", "-n", p.srvNS, "link", "set", p.srvLink, "up")
	run(t, "ip", "-n", p.cliNS, "link", "set", p.cliLink, "up")
	return p
}

func (p *netnsPair) startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Interface = p.srvLink
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.ServerIP = netip.MustParseAddr("10.77.0.1")
	cfg.ListenPacket = func(iface string, addr *net.UDPAddr) (conn net.PacketConn, err error) {
		err = netns.Run(netns.Path(p.srvNS), func() error {
			conn, err = server4.NewIPv4UDPConn(iface, addr)
			return err
		})
		return conn, err
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Close() })
	return s
}

// udhcpc runs busybox udhcpc once in the client namespace with the given MAC
// and extra arguments, and returns the environment its script saw for each
// event ("bound", "leasefail", …) and whether it got a lease.
func (p *netnsPair) udhcpc(t *testing.T, mac string, args ...string) (events []map[string]string, ok bool) {
	t.Helper()
	run(t, "ip", "-n", p.cliNS, "link", "set", p.cliLink, "down")
	run(t, "ip", "-n", p.cliNS, "link", "set", p.cliLink, "address", mac)
	run(t, "ip", "-n", p.cliNS, "link", "set", p.cliLink, "up")
	dir := t.TempDir()
	out := filepath.Join(dir, "events")
	script := filepath.Join(dir, "script")
	// One block per invocation: the event name, then the environment.
	body := fmt.Sprintf("#!/bin/sh\n{ echo \"EVENT=$1\"; env; echo \"--END--\"; } >> %s\n", out)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// env -i keeps the script's environment to what udhcpc sets.
	cmd := append([]string{"netns", "exec", p.cliNS, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "busybox", "udhcpc", "-i", p.cliLink, "-f", "-q", "-n",
		"-t", "2", "-T", "1", "-A", "1", "-s", script}, args...)
	outb, err := exec.CommandContext(ctx, "ip", cmd...).CombinedOutput()
	t.Logf("udhcpc %s: err=%v\n%s", mac, err, outb)
	f, ferr := os.Open(out)
	if ferr != nil {
		return nil, err == nil
	}
	defer f.Close()
	cur := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "--END--" {
			events = append(events, cur)
			cur = map[string]string{}
			continue
		}
		if k, v, found := strings.Cut(line, "="); found {
			cur[k] = v
		}
	}
	return events, err == nil
}

func findEvent(events []map[string]string, name string) map[string]string {
	for _, e := range events {
		if e["EVENT"] == name {
			return e
		}
	}
	return nil
}

func TestNetnsProxyMode(t *testing.T) {
	p := newNetnsPair(t)
	s := p.startServer(t, Config{Mode: ModeProxy})

	piMAC := net.HardwareAddr{0xd8, 0x3a, 0xdd, 0x12, 0x34, 0x56}
	guid, err := pi.EncodeClientGUID(pi.FourCCPi5, 0xd04170, piMAC, 0x0badcafe)
	if err != nil {
		t.Fatal(err)
	}
	events, ok := p.udhcpc(t, piMAC.String(), "-V", pi.VendorClass, "-x", "0x61:"+hex.EncodeToString(guid),
		"-O", "43", "-O", "60", "-O", "66")
	bound := findEvent(events, "bound")
	if !ok || bound == nil {
		t.Fatalf("Pi client got no answer: ok=%v events=%v", ok, events)
	}
	t.Logf("bound env: %v", bound)
	wantO43, _ := pi.BuildOption43(pi.BootMenu)
	if got := bound["opt43"]; !strings.EqualFold(got, hex.EncodeToString(wantO43)) {
		t.Errorf("option 43 = %q, want %x", got, wantO43)
	}
	if got := bound["vendor"]; got != "PXEClient" { // udhcpc names option 60 "vendor"
		t.Errorf("option 60 = %q, want PXEClient", got)
	}
	if got := bound["tftp"]; got != "10.77.0.1" {
		t.Errorf("option 66 (tftp) = %q, want 10.77.0.1", got)
	}
	if got := bound["serverid"]; got != "10.77.0.1" {
		t.Errorf("option 54 = %q", got)
	}
	if got := bound["ip"]; got != "0.0.0.0" {
		t.Errorf("proxy reply carried address %q", got)
	}

	// A non-Pi client (other vendor class, non-Pi MAC) gets nothing.
	events, ok = p.udhcpc(t, "52:54:00:aa:bb:cc", "-V", "MSFT 5.0")
	if ok || findEvent(events, "bound") != nil {
		t.Fatalf("non-Pi client was answered: %v", events)
	}

	// Nor does an x86 BIOS PXE ROM, which sends the Pi's very vendor class.
	events, ok = p.udhcpc(t, "52:54:00:aa:bb:cd", "-V", pi.VendorClass)
	if ok || findEvent(events, "bound") != nil {
		t.Fatalf("x86 PXE client was answered: %v", events)
	}

	// All three were snooped, the Pi with its serial and model.
	seen := map[string]DeviceSeen{}
	for len(seen) < 3 {
		select {
		case e := <-s.Events():
			seen[e.MAC] = e
		case <-time.After(2 * time.Second):
			t.Fatalf("only %d DeviceSeen events: %v", len(seen), seen)
		}
	}
	if e := seen[piMAC.String()]; !e.IsPi || e.Serial != "0badcafe" || e.Model != "Raspberry Pi 5 8GB" {
		t.Errorf("Pi event %+v", e)
	}
	for _, mac := range []string{"52:54:00:aa:bb:cc", "52:54:00:aa:bb:cd"} {
		if e, ok := seen[mac]; !ok || e.IsPi {
			t.Errorf("%s: event %+v (seen %v)", mac, e, ok)
		}
	}
}

func TestNetnsFullModeLeaseSurvivesRestart(t *testing.T) {
	p := newNetnsPair(t)
	cfg := Config{Mode: ModeFull, PoolStart: netip.MustParseAddr("10.77.0.100"), PoolEnd: netip.MustParseAddr("10.77.0.110"),
		SubnetMask: net.CIDRMask(24, 32), LeaseTime: time.Hour, LeaseFile: filepath.Join(t.TempDir(), "leases.json")}
	s := p.startServer(t, cfg)
	const macA, macB = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
	events, ok := p.udhcpc(t, macA)
	if b := findEvent(events, "bound"); !ok || b == nil || b["ip"] != "10.77.0.100" || b["subnet"] != "255.255.255.0" {
		t.Fatalf("first client: ok=%v %v", ok, events)
	}
	s.Close()

	// Restart on the same lease file; another client asks first. Without
	// the persisted lease it would get .100.
	p.startServer(t, cfg)
	events, ok = p.udhcpc(t, macB)
	if b := findEvent(events, "bound"); !ok || b == nil || b["ip"] != "10.77.0.101" {
		t.Fatalf("second client after restart: ok=%v %v", ok, events)
	}
	events, ok = p.udhcpc(t, macA)
	if b := findEvent(events, "bound"); !ok || b == nil || b["ip"] != "10.77.0.100" {
		t.Fatalf("first client after restart did not keep 10.77.0.100: ok=%v %v", ok, events)
	}
}
