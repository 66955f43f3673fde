package collect

import (
	"fmt"
	"net"
	"net/netip"
)

// Interface is one network interface as the collector needs it.
type Interface struct {
	Name     string
	MAC      string // "" for interfaces without a hardware address
	Loopback bool
	IPs      []netip.Addr
}

// InterfaceLister lists network interfaces in the kernel's index order.
type InterfaceLister interface {
	Interfaces() ([]Interface, error)
}

// SystemInterfaces lists the host's interfaces through net.Interfaces.
type SystemInterfaces struct{}

// Interfaces implements InterfaceLister.
func (SystemInterfaces) Interfaces() ([]Interface, error) {
	nifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("net.Interfaces: %w", err)
	}
	out := make([]Interface, 0, len(nifs))
	for _, ni := range nifs {
		ifc := Interface{Name: ni.Name, MAC: ni.HardwareAddr.String(), Loopback: ni.Flags&net.FlagLoopback != 0}
		addrs, err := ni.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of interface %s: %w", ni.Name, err)
		}
		for _, a := range addrs {
			var ip net.IP
			switch v := a.(type) {
			case *net.IPNet:
				ip = v.IP
			case *net.IPAddr:
				ip = v.IP
			}
			if addr, ok := netip.AddrFromSlice(ip); ok {
				ifc.IPs = append(ifc.IPs, addr.Unmap())
			}
		}
		out = append(out, ifc)
	}
	return out, nil
}
