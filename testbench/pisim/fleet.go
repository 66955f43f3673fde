package pisim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/lekiwi/heartbeat/internal/netns"
)

// Config says where simulated Pis boot. Zero values take the defaults.
type Config struct {
	// Interface is the client-side interface the Pis are plugged into.
	// Required. It may carry an address: DHCP frames are sent from 0.0.0.0
	// regardless, and the TFTP transfers leave from it (see Fleet).
	Interface string
	// Netns is the path of the network namespace Interface lives in (e.g.
	// /run/netns/NAME); "" is the caller's namespace.
	Netns string
	// DiscoverRetry is the DHCP retransmission interval; default 4 s, the
	// bootloader's DHCP_REQ_TIMEOUT.
	DiscoverRetry time.Duration
	// DHCPTimeout bounds the whole DHCP exchange; default 45 s, the
	// bootloader's DHCP_TIMEOUT.
	DHCPTimeout time.Duration
	// TFTPPort is the TFTP server's request port; default 69.
	TFTPPort int
	// BlockSize is the TFTP blksize asked for; default 1468, as the Pi.
	BlockSize int
	// TFTPTimeout and TFTPRetries are per packet; defaults 1 s and 5.
	TFTPTimeout time.Duration
	TFTPRetries int
	// KeepContent keeps every transferred file's bytes in File.Content,
	// for a caller that boots them (testbench/vmlab/piboot); off, a fleet
	// of simulated Pis holds only sizes.
	KeepContent bool
}

func (c Config) withDefaults() Config {
	if c.DiscoverRetry <= 0 {
		c.DiscoverRetry = 4 * time.Second
	}
	if c.DHCPTimeout <= 0 {
		c.DHCPTimeout = 45 * time.Second
	}
	if c.TFTPPort == 0 {
		c.TFTPPort = 69
	}
	if c.BlockSize == 0 {
		c.BlockSize = 1468
	}
	if c.TFTPTimeout <= 0 {
		c.TFTPTimeout = time.Second
	}
	if c.TFTPRetries <= 0 {
		c.TFTPRetries = 5
	}
	return c
}

// Fleet boots any number of simulated Pis, concurrently, through one
// DHCP client socket pair: replies are broadcast to port 68, which one
// socket per namespace can own, so a reader goroutine hands each reply to
// the boot whose transaction ID and hardware address it carries. TFTP
// transfers use a socket of their own each, from the interface's address:
// all Pis of a fleet share that source address (the station tells them
// apart by the serial in the path, as it must), which is the one way they
// differ from real Pis, each of which configures its leased address.
type Fleet struct {
	cfg     Config
	recv    *net.UDPConn
	send    *rawSender
	mu      sync.Mutex
	waiters map[uint32]*waiter
	dropped atomic.Int64
	done    chan struct{}
}

type waiter struct {
	mac net.HardwareAddr
	ch  chan reply
}

type reply struct {
	msg *dhcpv4.DHCPv4
	at  time.Time
}

// NewFleet opens the DHCP client sockets on cfg.Interface (in cfg.Netns).
// Close it when done.
func NewFleet(cfg Config) (*Fleet, error) {
	cfg = cfg.withDefaults()
	if cfg.Interface == "" {
		return nil, errors.New("pisim: Config.Interface is required: the interface the simulated Pis are plugged into")
	}
	f := &Fleet{cfg: cfg, waiters: map[uint32]*waiter{}, done: make(chan struct{})}
	err := netns.Run(cfg.Netns, func() error {
		var err error
		if f.send, err = openRawSender(cfg.Interface); err != nil {
			return err
		}
		if f.recv, err = server4.NewIPv4UDPConn(cfg.Interface, &net.UDPAddr{Port: dhcpv4.ClientPort}); err != nil {
			f.send.close()
			return fmt.Errorf("pisim: listening on %s port 68 (needs root; only one DHCP client per namespace): %w", cfg.Interface, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A burst of 100 Pis gets two broadcast offers each, all at once.
	_ = f.recv.SetReadBuffer(4 << 20)
	go f.readLoop()
	return f, nil
}

// Close stops the reader and closes the sockets. Boots in progress fail.
func (f *Fleet) Close() error {
	err := f.recv.Close()
	<-f.done
	return errors.Join(err, f.send.close())
}

// Dropped counts DHCP replies that matched a boot whose queue was full.
func (f *Fleet) Dropped() int64 { return f.dropped.Load() }

func (f *Fleet) readLoop() {
	defer close(f.done)
	buf := make([]byte, 1500)
	for {
		n, _, err := f.recv.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient receive error costs that packet, as on a wire
		}
		at := time.Now()
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		f.mu.Lock()
		t := m.TransactionID
		w := f.waiters[uint32(t[0])<<24|uint32(t[1])<<16|uint32(t[2])<<8|uint32(t[3])]
		f.mu.Unlock()
		if w == nil || m.ClientHWAddr.String() != w.mac.String() {
			continue // another client's exchange, or a late reply
		}
		select {
		case w.ch <- reply{msg: m, at: at}:
		default:
			f.dropped.Add(1)
		}
	}
}

func (f *Fleet) register(mac net.HardwareAddr) (uint32, *waiter) {
	w := &waiter{mac: mac, ch: make(chan reply, 32)}
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		xid := rand.Uint32()
		if _, used := f.waiters[xid]; !used {
			f.waiters[xid] = w
			return xid, w
		}
	}
}

func (f *Fleet) unregister(xid uint32) {
	f.mu.Lock()
	delete(f.waiters, xid)
	f.mu.Unlock()
}

// Offer is one DHCPOFFER a simulated Pi received.
type Offer struct {
	Server  netip.Addr    // option 54
	Address netip.Addr    // yiaddr; invalid for a proxy offer
	PiBoot  bool          // option 43 carries the "Raspberry Pi Boot" menu
	Latency time.Duration // since the first DISCOVER
}

// DHCPResult is the outcome of the DHCP exchange.
type DHCPResult struct {
	Discovers int // DISCOVERs sent (1 when the first was answered in time)
	Offers    []Offer
	// BootOfferLatency is first DISCOVER → first offer with the Pi boot
	// menu: the station's DHCP response time.
	BootOfferLatency time.Duration
	// AckLatency is first DISCOVER → ACK of the address.
	AckLatency    time.Duration
	Address       netip.Addr // the leased address
	AddressServer netip.Addr // who leased it
	BootServer    netip.Addr // option 54 of the boot offer
	TFTPServer    netip.Addr // option 66 of the boot offer, else its option 54
}

// parameterRequestList is option 55 of the Pi 4/5 bootloader (rpi-eeprom
// issue 69): subnet mask, router, vendor-specific, vendor class, TFTP
// server, bootfile name, and the PXE-reserved 128-135.
var parameterRequestList = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionVendorSpecificInformation,
	dhcpv4.OptionClassIdentifier, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName,
	dhcpv4.GenericOptionCode(128), dhcpv4.GenericOptionCode(129), dhcpv4.GenericOptionCode(130),
	dhcpv4.GenericOptionCode(131), dhcpv4.GenericOptionCode(132), dhcpv4.GenericOptionCode(133),
	dhcpv4.GenericOptionCode(134), dhcpv4.GenericOptionCode(135),
}

// clientOptions are the options both DISCOVER and REQUEST carry: 55, 93
// (client architecture 0, "x86 BIOS", which the Pi sends), 94 (UNDI 2.1)
// and 97.
func clientOptions(guid []byte) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(parameterRequestList...)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid),
	}
}

// BuildDiscover returns the DHCPDISCOVER the bootloader of p sends.
func BuildDiscover(p Pi, xid uint32) (*dhcpv4.DHCPv4, error) {
	guid, err := p.guid()
	if err != nil {
		return nil, err
	}
	mods := append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xidOf(xid)),
		dhcpv4.WithHwAddr(p.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(piVendorClass)),
	}, clientOptions(guid)...)
	return dhcpv4.New(mods...)
}

// BuildRequest returns the DHCPREQUEST accepting offered from server; like
// the bootloader's it has no option 60 (rpi-eeprom issue 82).
func BuildRequest(p Pi, xid uint32, offered, server netip.Addr) (*dhcpv4.DHCPv4, error) {
	guid, err := p.guid()
	if err != nil {
		return nil, err
	}
	mods := append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xidOf(xid)),
		dhcpv4.WithHwAddr(p.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(offered.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(server.AsSlice()))),
	}, clientOptions(guid)...)
	return dhcpv4.New(mods...)
}

func xidOf(x uint32) dhcpv4.TransactionID {
	return dhcpv4.TransactionID{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// dhcp runs DISCOVER → offers → REQUEST → ACK for p.
func (f *Fleet) dhcp(ctx context.Context, p Pi) (DHCPResult, error) {
	var res DHCPResult
	ctx, cancel := context.WithTimeout(ctx, f.cfg.DHCPTimeout)
	defer cancel()
	xid, w := f.register(p.MAC)
	defer f.unregister(xid)

	discover, err := BuildDiscover(p, xid)
	if err != nil {
		return res, err
	}
	start := time.Now()
	send := func(m *dhcpv4.DHCPv4) error {
		m.NumSeconds = uint16(time.Since(start) / time.Second)
		return f.send.send(p.MAC, m.ToBytes())
	}
	if err := send(discover); err != nil {
		return res, err
	}
	res.Discovers = 1
	retry := time.NewTicker(f.cfg.DiscoverRetry)
	defer retry.Stop()

	// The bootloader goes on once it holds an address and the boot menu,
	// whether one server offered both or two did.
	var boot, addr *dhcpv4.DHCPv4
	for boot == nil || addr == nil {
		select {
		case r := <-w.ch:
			if r.msg.MessageType() != dhcpv4.MessageTypeOffer {
				continue
			}
			o := Offer{Server: addrOf(r.msg.ServerIdentifier()), Address: addrOf(r.msg.YourIPAddr),
				PiBoot: hasPiBoot(r.msg), Latency: r.at.Sub(start)}
			res.Offers = append(res.Offers, o)
			if o.PiBoot && boot == nil {
				boot, res.BootOfferLatency = r.msg, o.Latency
			}
			if o.Address.IsValid() && o.Server.IsValid() && addr == nil {
				addr = r.msg
			}
		case <-retry.C:
			if err := send(discover); err != nil {
				return res, err
			}
			res.Discovers++
		case <-ctx.Done():
			switch {
			case boot == nil && addr == nil:
				return res, fmt.Errorf("pisim: %s sent %d DISCOVERs and got no usable offer (%d offers without the Pi boot menu or an address): %w", p, res.Discovers, len(res.Offers), ctx.Err())
			case boot == nil:
				return res, fmt.Errorf("pisim: %s got an address offer but none with option 43 \"Raspberry Pi Boot\": is the netboot station answering this Pi? %w", p, ctx.Err())
			default:
				return res, fmt.Errorf("pisim: %s got the boot offer from %v but no address offer: a proxyDHCP station needs the network's DHCP server (or run the station in full mode): %w", p, addrOf(boot.ServerIdentifier()), ctx.Err())
			}
		}
	}
	res.BootServer = addrOf(boot.ServerIdentifier())
	res.TFTPServer = res.BootServer
	if t, err := netip.ParseAddr(boot.TFTPServerName()); err == nil && t.Is4() {
		res.TFTPServer = t
	}
	res.AddressServer, res.Address = addrOf(addr.ServerIdentifier()), addrOf(addr.YourIPAddr)

	request, err := BuildRequest(p, xid, res.Address, res.AddressServer)
	if err != nil {
		return res, err
	}
	if err := send(request); err != nil {
		return res, err
	}
	for {
		select {
		case r := <-w.ch:
			switch r.msg.MessageType() {
			case dhcpv4.MessageTypeAck:
				if addrOf(r.msg.ServerIdentifier()) != res.AddressServer {
					continue
				}
				res.AckLatency = r.at.Sub(start)
				if a := addrOf(r.msg.YourIPAddr); a.IsValid() {
					res.Address = a
				}
				return res, nil
			case dhcpv4.MessageTypeNak:
				if addrOf(r.msg.ServerIdentifier()) == res.AddressServer {
					return res, fmt.Errorf("pisim: %s: %v refused the REQUEST for %v (NAK: %s)", p, res.AddressServer, res.Address, r.msg.Message())
				}
			}
		case <-retry.C:
			if err := send(request); err != nil {
				return res, err
			}
		case <-ctx.Done():
			return res, fmt.Errorf("pisim: %s: no ACK from %v for %v: %w", p, res.AddressServer, res.Address, ctx.Err())
		}
	}
}

// Discover sends an arbitrary DHCPDISCOVER (its xid is replaced) from the
// fleet's interface and returns every offer addressed to its client
// hardware address within wait: for checking what other clients, such as
// a PC's PXE ROM, are offered on the same network.
func (f *Fleet) Discover(ctx context.Context, m *dhcpv4.DHCPv4, wait time.Duration) ([]Offer, error) {
	if len(m.ClientHWAddr) != 6 {
		return nil, fmt.Errorf("pisim: DISCOVER chaddr %v is not an Ethernet address", m.ClientHWAddr)
	}
	xid, w := f.register(m.ClientHWAddr)
	defer f.unregister(xid)
	m.TransactionID = xidOf(xid)
	start := time.Now()
	if err := f.send.send(m.ClientHWAddr, m.ToBytes()); err != nil {
		return nil, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var offers []Offer
	for {
		select {
		case r := <-w.ch:
			if r.msg.MessageType() == dhcpv4.MessageTypeOffer {
				offers = append(offers, Offer{Server: addrOf(r.msg.ServerIdentifier()), Address: addrOf(r.msg.YourIPAddr),
					PiBoot: hasPiBoot(r.msg), Latency: r.at.Sub(start)})
			}
		case <-timer.C:
			return offers, nil
		case <-ctx.Done():
			return offers, ctx.Err()
		}
	}
}
