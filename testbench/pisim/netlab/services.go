package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// ListenPacket returns a function for netboot/dhcp's Config.ListenPacket
// that opens the server socket inside namespace ns.
func (l *Lab) ListenPacket(ns string) func(iface string, addr *net.UDPAddr) (net.PacketConn, error) {
	return func(iface string, addr *net.UDPAddr) (conn net.PacketConn, err error) {
		err = l.Run(ns, func() error {
			conn, err = server4.NewIPv4UDPConn(iface, addr)
			return err
		})
		return conn, err
	}
}

// ListenUDP opens a UDP socket on addr inside namespace ns (a TFTP
// server's, for instance).
func (l *Lab) ListenUDP(ns string, addr netip.AddrPort) (conn *net.UDPConn, err error) {
	err = l.Run(ns, func() error {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	return conn, err
}

// FactoryDomain is the DNS domain the factory DHCP server hands out.
const FactoryDomain = "factory.lan"

// FactoryPool is the address range the factory DHCP server hands out.
func (l *Lab) FactoryPool() (first, last netip.Addr) {
	b := l.Prefix.Addr().As4()
	return netip.AddrFrom4([4]byte{b[0], b[1], b[2], 10}), netip.AddrFrom4([4]byte{b[0], b[1], b[2], 250})
}

// StartFactoryDHCP runs busybox udhcpd in the factory namespace: the
// network's own DHCP server, which knows nothing of Pis and hands out
// addresses from FactoryPool, with the station as router and name server
// and FactoryDomain as the domain. dir holds its configuration and lease
// file.
// Stop it with the returned function (the namespace's deletion would too).
func (l *Lab) StartFactoryDHCP(ctx context.Context, dir string) (stop func() error, err error) {
	if _, err := exec.LookPath("busybox"); err != nil {
		return nil, errors.New("netlab: the factory DHCP server needs busybox (Debian busybox)")
	}
	first, last := l.FactoryPool()
	lease := time.Hour
	if l.FactoryLease > 0 {
		lease = l.FactoryLease
	}
	conf := filepath.Join(dir, "udhcpd.conf")
	body := strings.Join([]string{
		"start " + first.String(), "end " + last.String(), "interface " + l.FactoryIf,
		"max_leases 245", "lease_file " + filepath.Join(dir, "udhcpd.leases"),
		"pidfile " + filepath.Join(dir, "udhcpd.pid"),
		"option subnet 255.255.255.0", "option lease " + strconv.Itoa(int(lease.Seconds())),
		"option router " + l.StationIP.String(), "option dns " + l.StationIP.String(), "option domain " + FactoryDomain, "",
	}, "\n")
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, fmt.Errorf("netlab: writing udhcpd configuration: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "udhcpd.leases"), nil, 0o644); err != nil {
		return nil, fmt.Errorf("netlab: creating udhcpd lease file: %w", err)
	}
	// -a 0: no ARP probe of each address before offering it (2 s each by
	// default); the lab's pool is known to be free.
	cmd := exec.Command("ip", "netns", "exec", l.Factory, "busybox", "udhcpd", "-f", "-a", "0", conf)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netlab: starting udhcpd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// udhcpd binds port 67 right away; give it a moment and make sure it
	// did not exit on a configuration error.
	select {
	case err := <-exited:
		return nil, fmt.Errorf("netlab: udhcpd exited at once (%v): %s", err, out.String())
	case <-time.After(200 * time.Millisecond):
	case <-ctx.Done():
		cmd.Process.Kill()
		<-exited
		return nil, ctx.Err()
	}
	return func() error {
		cmd.Process.Kill()
		<-exited
		return nil
	}, nil
}
