package vmlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/internal/netns"
)

// NIC is the VM's Ethernet port: a virtio-net-pci device on a tap that the
// lab creates in namespace Netns and attaches to Bridge there. QEMU runs in
// that namespace too.
type NIC struct {
	// MAC is the port's address; use a Raspberry Pi OUI (d8:3a:dd for a
	// Pi 5, dc:a6:32 or e4:5f:01 for a Pi 4) so that DHCP servers and the
	// station take the VM for a Pi.
	MAC net.HardwareAddr
	// Netns is the path of the network namespace holding Bridge (e.g.
	// Net.Netns()); "" is the test process's own.
	Netns string
	// Bridge is the bridge the tap is attached to.
	Bridge string
}

// Net is a network namespace of the lab's own holding one bridge that VMs
// plug into: an isolated LAN for a test.
type Net struct {
	Name   string // ip netns name
	Bridge string
}

// NewNet creates the namespace (named with a random suffix) and its
// bridge. Close deletes both, and every tap left in it.
func NewNet(ctx context.Context) (*Net, error) {
	if err := NetAvailable(); err != nil {
		return nil, err
	}
	id := randomHex(3)
	n := &Net{Name: "vmlab-" + id, Bridge: "br0"}
	if err := ipCmd(ctx, "", "netns", "add", n.Name); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		// A fixed address, or the bridge takes its lowest port's MAC
		// and changes it as VM taps come and go (see netlab).
		{"link", "add", n.Bridge, "address", "02:76:6d:" + id[0:2] + ":" + id[2:4] + ":" + id[4:6], "type", "bridge"},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ipCmd(ctx, n.Netns(), args...); err != nil {
			return nil, errors.Join(err, n.Close())
		}
	}
	return n, nil
}

// Netns is the namespace's path.
func (n *Net) Netns() string { return netns.Path(n.Name) }

// NIC is a port on this Net's bridge with address mac.
func (n *Net) NIC(mac net.HardwareAddr) *NIC {
	return &NIC{MAC: mac, Netns: n.Netns(), Bridge: n.Bridge}
}

// Close deletes the namespace; its bridge and taps go with it.
func (n *Net) Close() error {
	if _, err := os.Stat(n.Netns()); err != nil {
		return nil
	}
	return ipCmd(context.Background(), "", "netns", "del", n.Name)
}

// NetAvailable returns why taps and namespaces cannot be made here, or nil.
func NetAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("vmlab: network namespaces and taps need root (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("vmlab: needs ip (apt-get install iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("vmlab: taps need /dev/net/tun: %w", err)
	}
	return nil
}

// ipCmd runs ip(8) inside the namespace at nsPath ("" for this process's):
// the child starts on a thread switched into it, so it needs no name.
func ipCmd(ctx context.Context, nsPath string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out []byte
	err := netns.Run(nsPath, func() error {
		var err error
		out, err = exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		return err
	})
	if err != nil {
		where := "this namespace"
		if nsPath != "" {
			where = nsPath
		}
		return fmt.Errorf("vmlab: ip %s (in %s): %w: %s", strings.Join(args, " "), where, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addTap creates a persistent tap in the NIC's namespace, attached to its
// bridge and up, so the VM's first frame already reaches the bridge.
func addTap(ctx context.Context, nic *NIC) (string, error) {
	if err := NetAvailable(); err != nil {
		return "", err
	}
	tap := "lkvm" + randomHex(4)
	if err := ipCmd(ctx, nic.Netns, "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
		return "", err
	}
	for _, args := range [][]string{
		{"link", "set", tap, "master", nic.Bridge},
		{"link", "set", tap, "up"},
	} {
		if err := ipCmd(ctx, nic.Netns, args...); err != nil {
			return "", errors.Join(err, delTap(nic, tap))
		}
	}
	return tap, nil
}

func delTap(nic *NIC, tap string) error {
	if nic.Netns != "" {
		if _, err := os.Stat(nic.Netns); err != nil {
			return nil // the namespace, and the tap with it, is gone
		}
	}
	return ipCmd(context.Background(), nic.Netns, "link", "del", tap)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
