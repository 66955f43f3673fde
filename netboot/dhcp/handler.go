package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/lekiwi/heartbeat/netboot/pi"
)

// offerHold is how long an offered address stays reserved for its client.
const offerHold = 30 * time.Second

func (s *Server) handle(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4, port int) {
	start := time.Now()
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		s.metrics.ignored.WithLabelValues("not_request").Inc()
		return
	}
	mt := req.MessageType()
	s.metrics.received.WithLabelValues(mt.String()).Inc()
	if len(req.ClientHWAddr) != 6 {
		s.metrics.ignored.WithLabelValues("not_ethernet").Inc()
		return
	}
	vc := req.ClassIdentifier()
	client := pi.Identify(req.ClientHWAddr, vc, req.Options.Get(dhcpv4.OptionClientMachineIdentifier))
	now := s.cfg.Now()
	s.snoop(client, now)

	boot := client.IsPi && pi.IsPXEClient(vc)
	var resp *dhcpv4.DHCPv4
	switch s.cfg.Mode {
	case ModeProxy:
		resp = s.proxyReply(req, mt, client, boot, port)
	case ModeFull:
		resp = s.fullReply(req, mt, client, boot, now)
	}
	if resp == nil {
		return
	}
	dst := replyAddr(req, peer, port)
	if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
		s.metrics.sendErrors.Inc()
		s.log.Warn("sending DHCP reply failed", "mac", client.MAC.String(), "to", dst.String(), "type", resp.MessageType().String(), "err", err)
		return
	}
	s.metrics.replies.WithLabelValues(resp.MessageType().String()).Inc()
	s.metrics.replySeconds.Observe(time.Since(start).Seconds())
	s.log.Debug("dhcp reply", "mac", client.MAC.String(), "type", resp.MessageType().String(), "pi", client.IsPi, "to", dst.String())
}

// replyAddr follows RFC 2131 §4.1: relay → giaddr:67; a client with an
// address (renewal, or a PXE request on 4011) → unicast back to where it
// came from; otherwise broadcast, since a client without an address cannot
// receive unicast without an ARP entry we cannot create from a UDP socket.
func replyAddr(req *dhcpv4.DHCPv4, peer net.Addr, port int) net.Addr {
	if gi := req.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi, Port: dhcpv4.ServerPort}
	}
	if up, ok := peer.(*net.UDPAddr); ok && up.IP != nil && !up.IP.IsUnspecified() && !up.IP.Equal(net.IPv4bcast) {
		return up
	}
	if ci := req.ClientIPAddr; ci != nil && !ci.IsUnspecified() {
		return &net.UDPAddr{IP: ci, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// proxyReply answers a Pi PXE client without assigning an address.
//
// DISCOVER on 67 → OFFER (yiaddr 0). REQUEST → ACK when it is addressed to
// us: on the PXE port (4011) always, on 67 only when its server identifier
// is ours. A REQUEST on 67 that names another server is the client
// accepting the real DHCP server's address; answering it would race that
// server's ACK.
func (s *Server) proxyReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, client pi.Client, boot bool, port int) *dhcpv4.DHCPv4 {
	if !boot {
		if client.IsPi {
			s.metrics.ignored.WithLabelValues("pi_not_pxe").Inc()
		} else {
			s.metrics.ignored.WithLabelValues("not_pi").Inc()
		}
		return nil
	}
	var reply dhcpv4.MessageType
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		if port != s.cfg.Port {
			s.metrics.ignored.WithLabelValues("discover_on_pxe_port").Inc()
			return nil
		}
		reply = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		sid := req.ServerIdentifier()
		if port == s.cfg.Port && (sid == nil || !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice()))) {
			s.metrics.ignored.WithLabelValues("request_for_other_server").Inc()
			return nil
		}
		reply = dhcpv4.MessageTypeAck
	default:
		s.metrics.ignored.WithLabelValues("message_type").Inc()
		return nil
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(reply))
	if err != nil {
		s.log.Error("building proxy reply", "mac", client.MAC.String(), "err", err)
		return nil
	}
	resp.YourIPAddr = net.IPv4zero
	s.addBootOptions(resp, req, client)
	return resp
}

// addBootOptions adds what a Pi bootloader needs: 54, 60 "PXEClient", 43
// with the boot menu, 66, siaddr, and option 97 echoed as PXE servers do.
func (s *Server) addBootOptions(resp, req *dhcpv4.DHCPv4, client pi.Client) {
	sip := net.IP(s.cfg.ServerIP.AsSlice())
	resp.ServerIPAddr = sip
	if tftp, err := netip.ParseAddr(s.cfg.TFTPServer); err == nil && tftp.Is4() {
		resp.ServerIPAddr = net.IP(tftp.AsSlice())
	}
	resp.UpdateOption(dhcpv4.OptServerIdentifier(sip))
	resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
	o43, err := pi.BuildOption43(client.BootMenu())
	if err == nil {
		resp.UpdateOption(dhcpv4.Option{Code: dhcpv4.OptionVendorSpecificInformation, Value: dhcpv4.OptionGeneric{Data: o43}})
	}
	resp.UpdateOption(dhcpv4.OptTFTPServerName(s.cfg.TFTPServer))
	if g := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); g != nil {
		resp.UpdateOption(dhcpv4.Option{Code: dhcpv4.OptionClientMachineIdentifier, Value: dhcpv4.OptionGeneric{Data: bytes.Clone(g)}})
	}
}

// fullReply runs the address pool: DISCOVER → OFFER, REQUEST → ACK or NAK,
// RELEASE/DECLINE → forget the binding's validity. Pi PXE clients also get
// the boot options.
func (s *Server) fullReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, client pi.Client, boot bool, now time.Time) *dhcpv4.DHCPv4 {
	mac := client.MAC.String()
	sip := net.IP(s.cfg.ServerIP.AsSlice())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pool.expireOffers(now)
	var (
		reply dhcpv4.MessageType
		addr  netip.Addr
	)
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		want, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		a, ok := s.pool.offer(mac, want, now, offerHold)
		if !ok {
			s.metrics.ignored.WithLabelValues("pool_exhausted").Inc()
			s.log.Warn("address pool exhausted", "mac", mac, "pool_start", s.cfg.PoolStart, "pool_end", s.cfg.PoolEnd)
			return nil
		}
		reply, addr = dhcpv4.MessageTypeOffer, a
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(sip) {
			delete(s.pool.offered, mac) // it chose another server
			s.metrics.ignored.WithLabelValues("request_for_other_server").Inc()
			return nil
		}
		ip := req.RequestedIPAddress()
		if ip == nil || ip.IsUnspecified() {
			ip = req.ClientIPAddr // renewing/rebinding
		}
		want, _ := netip.AddrFromSlice(ip.To4())
		l, ok := s.pool.bind(mac, want, now, s.cfg.LeaseTime)
		if !ok {
			reply = dhcpv4.MessageTypeNak
			break
		}
		if err := s.pool.save(); err != nil {
			// An address we cannot remember must not be handed out: a
			// restart would give it to someone else.
			s.log.Error("persisting lease failed; not acknowledging", "mac", mac, "ip", l.IP, "err", err)
			s.pool.release(mac, now)
			return nil
		}
		s.metrics.leases.Set(float64(len(s.pool.byMAC)))
		reply, addr = dhcpv4.MessageTypeAck, l.IP
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		if s.pool.release(mac, now) {
			if err := s.pool.save(); err != nil {
				s.log.Error("persisting released lease failed", "mac", mac, "err", err)
			}
		}
		return nil
	default:
		s.metrics.ignored.WithLabelValues("message_type").Inc()
		return nil
	}
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(reply), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sip))}
	if reply != dhcpv4.MessageTypeNak {
		mods = append(mods,
			dhcpv4.WithYourIP(net.IP(addr.AsSlice())),
			dhcpv4.WithNetmask(s.cfg.SubnetMask),
			dhcpv4.WithLeaseTime(uint32(s.cfg.LeaseTime/time.Second)))
		if s.cfg.Router.IsValid() {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(net.IP(s.cfg.Router.AsSlice()))))
		}
		if len(s.cfg.DNS) > 0 {
			var dns []net.IP
			for _, d := range s.cfg.DNS {
				dns = append(dns, net.IP(d.AsSlice()))
			}
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		s.log.Error("building reply", "mac", mac, "err", err)
		return nil
	}
	if boot && reply != dhcpv4.MessageTypeNak {
		s.addBootOptions(resp, req, client)
	}
	return resp
}
