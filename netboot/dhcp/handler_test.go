package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lekiwi/heartbeat/netboot/pi"
)

// captureConn records what the handler writes.
type captureConn struct {
	net.PacketConn
	mu   sync.Mutex
	sent []sent
}

type sent struct {
	to  net.Addr
	msg *dhcpv4.DHCPv4
}

func (c *captureConn) WriteTo(b []byte, to net.Addr) (int, error) {
	m, err := dhcpv4.FromBytes(b)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.sent = append(c.sent, sent{to, m})
	c.mu.Unlock()
	return len(b), nil
}

func (c *captureConn) take() []sent {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

var (
	serverIP = netip.MustParseAddr("10.9.0.1")
	pi5MAC   = net.HardwareAddr{0x2c, 0xcf, 0x67, 0x0a, 0x0b, 0x0c}
	pi3MAC   = net.HardwareAddr{0xb8, 0x27, 0xeb, 0x0a, 0x0b, 0x0c}
	pcMAC    = net.HardwareAddr{0x52, 0x54, 0x00, 0x0a, 0x0b, 0x0c}
)

type clientSpec struct {
	mac    net.HardwareAddr
	vc     string
	guid   []byte
	ciaddr net.IP
}

func packet(t *testing.T, c clientSpec, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	mods = append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt)}, mods...)
	if c.vc != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(c.vc)))
	}
	if c.guid != nil {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, c.guid))
	}
	if c.ciaddr != nil {
		mods = append(mods, dhcpv4.WithClientIP(c.ciaddr))
	}
	m, err := dhcpv4.NewDiscovery(c.mac, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newTestServer(t *testing.T, cfg Config) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.ServerIP = serverIP
	cfg.Registerer = reg
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

var bcast68 = &net.UDPAddr{IP: net.IPv4bcast, Port: 68}

func TestProxyMode(t *testing.T) {
	guid5, _ := pi.EncodeClientGUID(pi.FourCCPi5, 0xd04170, pi5MAC, 0x0badcafe)
	pi5 := clientSpec{mac: pi5MAC, vc: pi.VendorClass, guid: guid5}
	pi3 := clientSpec{mac: pi3MAC, vc: pi.VendorClass, guid: append([]byte{0}, bytes.Repeat([]byte{0x44}, 16)...)}
	x86 := clientSpec{mac: pcMAC, vc: pi.VendorClass}
	piOS := clientSpec{mac: pi5MAC, vc: "dhcpcd-9.4.1:Linux-6.6:aarch64:BCM2835"}
	laptop := clientSpec{mac: pcMAC, vc: "MSFT 5.0"}
	other := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 9, 0, 254)))
	ours := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice()))

	tests := []struct {
		name string
		c    clientSpec
		mt   dhcpv4.MessageType
		mods []dhcpv4.Modifier
		port int
		peer net.Addr
		want dhcpv4.MessageType // MessageTypeNone = no reply
		menu string
		to   net.Addr
	}{
		{"pi5 discover", pi5, dhcpv4.MessageTypeDiscover, nil, 67, bcast68, dhcpv4.MessageTypeOffer, pi.BootMenu, bcast68},
		{"pi3 discover", pi3, dhcpv4.MessageTypeDiscover, nil, 67, bcast68, dhcpv4.MessageTypeOffer, pi.BootMenuPi3, bcast68},
		{"pi5 request to us", pi5, dhcpv4.MessageTypeRequest, []dhcpv4.Modifier{ours}, 67, bcast68, dhcpv4.MessageTypeAck, pi.BootMenu, bcast68},
		{"pi5 request to real server", pi5, dhcpv4.MessageTypeRequest, []dhcpv4.Modifier{other}, 67, bcast68, dhcpv4.MessageTypeNone, "", nil},
		{"pi5 request on 4011", clientSpec{pi5MAC, pi.VendorClass, guid5, net.IPv4(10, 9, 0, 77)}, dhcpv4.MessageTypeRequest, nil, PXEPort,
			&net.UDPAddr{IP: net.IPv4(10, 9, 0, 77), Port: 4011}, dhcpv4.MessageTypeAck, pi.BootMenu, &net.UDPAddr{IP: net.IPv4(10, 9, 0, 77), Port: 4011}},
		{"discover on 4011", pi5, dhcpv4.MessageTypeDiscover, nil, PXEPort, bcast68, dhcpv4.MessageTypeNone, "", nil},
		{"x86 bios pxe", x86, dhcpv4.MessageTypeDiscover, nil, 67, bcast68, dhcpv4.MessageTypeNone, "", nil},
		{"pi running its OS", piOS, dhcpv4.MessageTypeDiscover, nil, 67, bcast68, dhcpv4.MessageTypeNone, "", nil},
		{"laptop", laptop, dhcpv4.MessageTypeDiscover, nil, 67, bcast68, dhcpv4.MessageTypeNone, "", nil},
		{"pi release", pi5, dhcpv4.MessageTypeRelease, nil, 67, bcast68, dhcpv4.MessageTypeNone, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestServer(t, Config{Mode: ModeProxy, PXEPort: PXEPort})
			conn := &captureConn{}
			req := packet(t, tc.c, tc.mt, tc.mods...)
			s.handle(conn, tc.peer, req, tc.port)
			out := conn.take()
			if tc.want == dhcpv4.MessageTypeNone {
				if len(out) != 0 {
					t.Fatalf("replied %s, want silence", out[0].msg.MessageType())
				}
				return
			}
			if len(out) != 1 {
				t.Fatalf("%d replies, want 1", len(out))
			}
			r := out[0].msg
			if r.MessageType() != tc.want || r.TransactionID != req.TransactionID || !bytes.Equal(r.ClientHWAddr, tc.c.mac) {
				t.Fatalf("reply %s xid %v mac %v", r.MessageType(), r.TransactionID, r.ClientHWAddr)
			}
			if out[0].to.String() != tc.to.String() {
				t.Errorf("sent to %v, want %v", out[0].to, tc.to)
			}
			if !r.YourIPAddr.IsUnspecified() {
				t.Errorf("proxy reply has yiaddr %v", r.YourIPAddr)
			}
			if r.ClassIdentifier() != "PXEClient" || r.TFTPServerName() != "10.9.0.1" || !r.ServerIdentifier().Equal(serverIP.AsSlice()) || !r.ServerIPAddr.Equal(serverIP.AsSlice()) {
				t.Errorf("options: 60=%q 66=%q 54=%v siaddr=%v", r.ClassIdentifier(), r.TFTPServerName(), r.ServerIdentifier(), r.ServerIPAddr)
			}
			o43, err := pi.ParseOption43(r.Options.Get(dhcpv4.OptionVendorSpecificInformation))
			if err != nil || len(o43.Menu) != 1 || o43.Menu[0].Description != tc.menu {
				t.Errorf("option 43 %+v (%v), want menu %q", o43, err, tc.menu)
			}
			if g := r.Options.Get(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(g, tc.c.guid) {
				t.Errorf("option 97 echoed as %x, want %x", g, tc.c.guid)
			}
		})
	}
}

func TestSnooping(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s, reg := newTestServer(t, Config{EventQueue: 2, Now: func() time.Time { return now }})
	conn := &captureConn{}
	guid4, _ := pi.EncodeClientGUID(pi.FourCCPi4, 0xd03114, pi5MAC, 0x1234abcd)

	// 1: a Pi running its OS (no GUID) — new device, Pi by OUI, nothing known yet.
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pi5MAC, vc: "dhcpcd"}, dhcpv4.MessageTypeDiscover), 67)
	// 2: the same device again — deduplicated.
	now = now.Add(time.Second)
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pi5MAC, vc: "dhcpcd"}, dhcpv4.MessageTypeDiscover), 67)
	// 3: it reboots into the bootloader: serial and model learned → event.
	now = now.Add(time.Second)
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pi5MAC, vc: pi.VendorClass, guid: guid4}, dhcpv4.MessageTypeDiscover), 67)
	// 4: a laptop — queue (2) is full now: dropped, counted.
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pcMAC, vc: "MSFT 5.0"}, dhcpv4.MessageTypeDiscover), 67)
	if got := counterValue(t, s.metrics.eventsDropped); got != 1 {
		t.Fatalf("dropped = %v, want 1", got)
	}
	e1, e2 := <-s.Events(), <-s.Events()
	if e1.MAC != pi5MAC.String() || !e1.IsPi || e1.Serial != "" || !e1.FirstSeen.Equal(e1.LastSeen) {
		t.Errorf("first event %+v", e1)
	}
	if e2.MAC != pi5MAC.String() || e2.Serial != "1234abcd" || e2.Revision != "d03114" || e2.Model != "Raspberry Pi 4B 8GB" || e2.LastSeen.Sub(e2.FirstSeen) != 2*time.Second {
		t.Errorf("second event %+v", e2)
	}
	// 5: the laptop again: its pending event is delivered now.
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pcMAC, vc: "MSFT 5.0"}, dhcpv4.MessageTypeDiscover), 67)
	select {
	case e := <-s.Events():
		if e.MAC != pcMAC.String() || e.IsPi {
			t.Errorf("laptop event %+v", e)
		}
	default:
		t.Fatal("dropped event was not re-sent on the next packet")
	}
	select {
	case e := <-s.Events():
		t.Fatalf("unexpected event %+v", e)
	default:
	}
	// A packet from the OS again must not erase the serial.
	s.handle(conn, bcast68, packet(t, clientSpec{mac: pi5MAC, vc: "dhcpcd"}, dhcpv4.MessageTypeDiscover), 67)
	if d := s.Devices(); len(d) != 2 || d[0].Serial != "1234abcd" {
		t.Errorf("devices %+v", d)
	}
	if n := seriesSum(t, reg, "netboot_dhcp_devices_seen_total"); n != 2 {
		t.Errorf("devices_seen total = %v, want 2", n)
	}
}

func TestSnoopingBoundedTable(t *testing.T) {
	now := time.Unix(0, 0)
	s, _ := newTestServer(t, Config{MaxDevices: 3, EventQueue: 100, Now: func() time.Time { now = now.Add(time.Second); return now }})
	for i := 0; i < 5; i++ {
		s.handle(&captureConn{}, bcast68, packet(t, clientSpec{mac: net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}}, dhcpv4.MessageTypeDiscover), 67)
	}
	d := s.Devices()
	if len(d) != 3 || d[0].MAC != "02:00:00:00:00:02" {
		t.Errorf("devices %+v, want the 3 most recent", d)
	}
}

func TestFullMode(t *testing.T) {
	dir := t.TempDir()
	leaseFile := filepath.Join(dir, "leases.json")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := Config{Mode: ModeFull, PoolStart: netip.MustParseAddr("10.9.0.1"), PoolEnd: netip.MustParseAddr("10.9.0.4"),
		SubnetMask: net.CIDRMask(24, 32), Router: netip.MustParseAddr("10.9.0.254"), DNS: []netip.Addr{netip.MustParseAddr("10.9.0.253")},
		LeaseTime: time.Hour, LeaseFile: leaseFile, Now: func() time.Time { return now }}
	s, _ := newTestServer(t, cfg)
	conn := &captureConn{}
	ours := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice()))

	dora := func(s *Server, c clientSpec) (offer, ack *dhcpv4.DHCPv4) {
		t.Helper()
		s.handle(conn, bcast68, packet(t, c, dhcpv4.MessageTypeDiscover), 67)
		out := conn.take()
		if len(out) != 1 || out[0].msg.MessageType() != dhcpv4.MessageTypeOffer {
			t.Fatalf("discover from %v: %v", c.mac, out)
		}
		offer = out[0].msg
		s.handle(conn, bcast68, packet(t, c, dhcpv4.MessageTypeRequest, ours, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))), 67)
		out = conn.take()
		if len(out) != 1 {
			t.Fatalf("request from %v: %d replies", c.mac, len(out))
		}
		return offer, out[0].msg
	}
	guid5, _ := pi.EncodeClientGUID(pi.FourCCPi5, 0xd04170, pi5MAC, 0x0badcafe)
	laptop := clientSpec{mac: pcMAC, vc: "MSFT 5.0"}
	pi5 := clientSpec{mac: pi5MAC, vc: pi.VendorClass, guid: guid5}

	offer, ack := dora(s, laptop)
	// 10.9.0.1 is the server itself: skipped.
	if !offer.YourIPAddr.Equal(net.IPv4(10, 9, 0, 2)) || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("laptop got offer %v ack %s %v", offer.YourIPAddr, ack.MessageType(), ack.YourIPAddr)
	}
	if ack.ClassIdentifier() != "" || ack.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
		t.Error("non-Pi client got boot options")
	}
	if !net.IP(ack.SubnetMask()).Equal(net.IP(net.CIDRMask(24, 32))) || len(ack.Router()) != 1 || len(ack.DNS()) != 1 || ack.IPAddressLeaseTime(0) != time.Hour {
		t.Errorf("ack options: %s", ack.Summary())
	}
	_, ack = dora(s, pi5)
	if !ack.YourIPAddr.Equal(net.IPv4(10, 9, 0, 3)) || ack.ClassIdentifier() != "PXEClient" || ack.TFTPServerName() != "10.9.0.1" {
		t.Fatalf("pi got %s", ack.Summary())
	}
	// A request for an address we did not offer: NAK.
	s.handle(conn, bcast68, packet(t, clientSpec{mac: net.HardwareAddr{2, 1, 1, 1, 1, 1}}, dhcpv4.MessageTypeRequest, ours,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 9, 0, 2)))), 67)
	if out := conn.take(); len(out) != 1 || out[0].msg.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("stolen address request: %v", out)
	}

	// Restart: a new client asks first; without persistence it would get .2.
	s2, _ := newTestServer(t, cfg)
	newcomer := clientSpec{mac: net.HardwareAddr{2, 2, 2, 2, 2, 2}}
	_, ack = dora(s2, newcomer)
	if !ack.YourIPAddr.Equal(net.IPv4(10, 9, 0, 4)) {
		t.Fatalf("newcomer after restart got %v, want 10.9.0.4 (.2 and .3 are leased)", ack.YourIPAddr)
	}
	_, ack = dora(s2, laptop)
	if !ack.YourIPAddr.Equal(net.IPv4(10, 9, 0, 2)) {
		t.Fatalf("laptop after restart got %v, want its old 10.9.0.2", ack.YourIPAddr)
	}
	// Pool exhausted: a fourth client gets nothing.
	s2.handle(conn, bcast68, packet(t, clientSpec{mac: net.HardwareAddr{2, 3, 3, 3, 3, 3}}, dhcpv4.MessageTypeDiscover), 67)
	if out := conn.take(); len(out) != 0 {
		t.Fatalf("exhausted pool offered %v", out[0].msg.YourIPAddr)
	}
	// After the laptop's lease expires and it releases, the address can go to another client.
	s2.handle(conn, bcast68, packet(t, laptop, dhcpv4.MessageTypeRelease), 67)
	s2.handle(conn, bcast68, packet(t, clientSpec{mac: net.HardwareAddr{2, 3, 3, 3, 3, 3}}, dhcpv4.MessageTypeDiscover), 67)
	if out := conn.take(); len(out) != 1 || !out[0].msg.YourIPAddr.Equal(net.IPv4(10, 9, 0, 2)) {
		t.Fatalf("released address not reused: %v", out)
	}
	if l := s2.Leases(); len(l) != 3 {
		t.Errorf("leases %+v", l)
	}
}

func TestNewErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no server ip":   {},
		"bad mode":       {ServerIP: serverIP, Mode: "relay"},
		"full no mask":   {ServerIP: serverIP, Mode: ModeFull, PoolStart: serverIP, PoolEnd: serverIP},
		"full reversed":  {ServerIP: serverIP, Mode: ModeFull, SubnetMask: net.CIDRMask(24, 32), PoolStart: netip.MustParseAddr("10.0.0.9"), PoolEnd: netip.MustParseAddr("10.0.0.1")},
		"full huge pool": {ServerIP: serverIP, Mode: ModeFull, SubnetMask: net.CIDRMask(8, 32), PoolStart: netip.MustParseAddr("10.0.0.0"), PoolEnd: netip.MustParseAddr("10.255.255.255")},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{ServerIP: serverIP, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{ServerIP: serverIP, Registerer: reg}); err == nil {
		t.Error("second Server on the same Registerer accepted")
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// seriesSum adds up every series of a counter family in reg.
func seriesSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
