package robotsim

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Simulated robots dial from their source address with the port left to
// connect time (IP_BIND_ADDRESS_NO_PORT): the kernel's bind-time port
// search was a quarter of a simulator's CPU in a 50,000-robot storm.
func TestSourceDialerLeavesThePortToConnect(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	src := netip.MustParseAddr("127.0.0.2")
	for range 3 {
		c, err := sourceDialer(src).Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
			t.Fatalf("dialed from %s, want %s", got, src)
		}
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if v != 1 {
			t.Fatalf("IP_BIND_ADDRESS_NO_PORT = %d, want 1", v)
		}
	}
}
