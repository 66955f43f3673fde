package pid1

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/lekiwi/heartbeat/agent/factory"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/testbench/pisim/netlab"
)

// TestFactoryNetworkLeasesOverDHCP runs the factory mode's network step
// and run loop in the simulated Pis' namespace of a netlab LAN, against
// busybox udhcpd as the factory's DHCP server: every wired link is brought
// up, a lease is taken and applied (address, default route, resolv.conf),
// the DHCP messages carry the provisioning vendor class and a client
// identifier (seen by a listener on the station's bridge), the lease
// (4 s here) is renewed while the factory run goes on, and a factory run
// that fails is started again until it succeeds.
func TestFactoryNetworkLeasesOverDHCP(t *testing.T) {
	if !netlab.Inside() {
		if err := netlab.Available(); err != nil {
			t.Skip(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := netlab.Reexec(ctx, "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
		t.Logf("in a private network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("%s in a private network namespace: %v", t.Name(), err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lab, err := netlab.New(ctx, 81)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	lab.FactoryLease = 4 * time.Second
	stop, err := lab.StartFactoryDHCP(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err) // busybox is in the Makefile's DEB_TEST
	}
	t.Cleanup(func() { stop() })
	// The lab gives the Pis' side a static address; the init starts bare.
	ipCmd(t, "-n", lab.Pis, "addr", "flush", "dev", lab.PisIf)
	// A second adapter with no cable: its peer stays down.
	ipCmd(t, "-n", lab.Pis, "link", "add", "eth1", "type", "veth", "peer", "name", "unplugged", "netns", lab.Factory)

	seen := watchDHCP(t, ctx, lab)
	root := t.TempDir()
	con := &syncBuffer{}
	runs := 0
	var start time.Time
	var networkTook time.Duration
	o := Options{
		Root:           root,
		FactoryBackoff: time.Millisecond,
		runFactory: func(ctx context.Context, ro factory.RunOptions) error {
			runs++
			if runs == 1 {
				networkTook = time.Since(start)
			}
			if ro.StationURL != "http://10.81.0.1:8080" || ro.Token != "tok" || ro.Probe.ProcRoot != filepath.Join(root, "proc") {
				t.Errorf("factory run options = %+v", ro)
			}
			// factory.Run refuses to start without a way to reboot; in the
			// initramfs it is reboot(2) itself.
			if _, ok := ro.Reboot.(reboot.Syscall); !ok {
				t.Errorf("factory run reboots with %T, want reboot.Syscall (no service manager in the initramfs)", ro.Reboot)
			}
			if runs < 3 {
				return errors.New("station unreachable")
			}
			// A long run (an image download): the lease is renewed meanwhile.
			for !strings.Contains(con.String(), "network: renewed") {
				if err := sleep(ctx, 100*time.Millisecond); err != nil {
					return errors.New("the lease was not renewed during the run")
				}
			}
			return nil
		},
	}
	boot, err := ParseCmdline("console=tty1 lekiwi.station=http://10.81.0.1:8080 lekiwi.token=tok")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	err = lab.Run(lab.Pis, func() error {
		return runFactory(ctx, o, boot, NewConsole(con, func() time.Duration { return 0 }))
	})
	t.Logf("console:\n%s", con.String())
	if err != nil {
		t.Fatal(err)
	}
	if networkTook > 7*time.Second {
		t.Errorf("the network step took %s: the unplugged eth1 held up eth0 (want about 2 s of grace, not the 10 s carrier wait)", networkTook)
	}
	if runs != 3 {
		t.Errorf("the factory run ran %d times, want 3 (two failures, then success)", runs)
	}

	addr := ipCmd(t, "-n", lab.Pis, "-4", "-o", "addr", "show", "dev", lab.PisIf)
	first, last := lab.FactoryPool()
	var leased netip.Prefix
	for _, f := range strings.Fields(addr) {
		if p, err := netip.ParsePrefix(f); err == nil {
			leased = p
		}
	}
	if !leased.IsValid() || leased.Bits() != 24 || leased.Addr().Less(first) || last.Less(leased.Addr()) {
		t.Fatalf("%s has %q, want an address of the factory pool %s-%s/24", lab.PisIf, addr, first, last)
	}
	if route := ipCmd(t, "-n", lab.Pis, "-4", "route", "show", "default"); !strings.Contains(route, "default via "+lab.StationIP.String()+" dev "+lab.PisIf) {
		t.Errorf("default route = %q, want via the station %s", route, lab.StationIP)
	}
	resolv, err := os.ReadFile(filepath.Join(root, "etc", "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(resolv), "nameserver "+lab.StationIP.String()+"\n") || !strings.Contains(string(resolv), "search "+netlab.FactoryDomain+"\n") {
		t.Errorf("resolv.conf:\n%s\nwant the lease's name server %s and domain %s", resolv, lab.StationIP, netlab.FactoryDomain)
	}
	for _, want := range []string{"eth0 (", ") carrier up, eth1 (", ") no carrier", "leased " + leased.String() + " from " + lab.FactoryIP.String() + ", router " + lab.StationIP.String(),
		"run 1 stopped: station unreachable", "run 2 stopped", "renewed " + leased.String() + " on " + lab.PisIf + " for 4s"} {
		if !strings.Contains(con.String(), want) {
			t.Errorf("the console lacks %q", want)
		}
	}

	mac := linkMAC(t, lab)
	msgs := seen()
	var renewal bool
	for _, m := range msgs {
		renewal = renewal || (m.MessageType() == dhcpv4.MessageTypeRequest && m.ClientIPAddr.Equal(leased.Addr().AsSlice()))
	}
	if len(msgs) < 3 || !renewal {
		t.Fatalf("the station's bridge saw %d DHCP messages (renewal from %s: %v), want DISCOVER, REQUEST and a renewing REQUEST", len(msgs), leased.Addr(), renewal)
	}
	for _, m := range msgs {
		if got := m.ClassIdentifier(); got != VendorClass {
			t.Errorf("%s carries vendor class %q, want %q", m.MessageType(), got, VendorClass)
		}
		if got := m.Options.Get(dhcpv4.OptionClientIdentifier); !bytes.Equal(got, append([]byte{1}, mac...)) {
			t.Errorf("%s carries client identifier %x, want 01 and the MAC %s", m.MessageType(), got, mac)
		}
	}
}

// watchDHCP listens for DHCP client messages on the station's bridge and
// returns a function giving those from the Pis' side seen so far.
func watchDHCP(t *testing.T, ctx context.Context, lab *netlab.Lab) func() []*dhcpv4.DHCPv4 {
	t.Helper()
	conn, err := server4.NewIPv4UDPConn(lab.StationIf, &net.UDPAddr{Port: dhcpv4.ServerPort})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []*dhcpv4.DHCPv4
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest {
				continue
			}
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return func() []*dhcpv4.DHCPv4 {
		time.Sleep(100 * time.Millisecond) // the last REQUEST crossed the bridge already; let the reader take it
		mu.Lock()
		defer mu.Unlock()
		return append([]*dhcpv4.DHCPv4(nil), got...)
	}
}

func linkMAC(t *testing.T, lab *netlab.Lab) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := lab.Run(lab.Pis, func() error {
		ifc, err := net.InterfaceByName(lab.PisIf)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// syncBuffer is a bytes.Buffer safe for the console's writers in several
// goroutines (the lease keeper writes too).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
