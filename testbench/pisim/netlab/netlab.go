// Package netlab builds the factory LAN that simulated Pi boots run on, out
// of Linux network namespaces: the station is the process's own namespace
// holding a bridge, and two namespaces are plugged into it by veth pairs,
// one for the factory's own DHCP server and one for the simulated Pis.
// Tests and the testbench use it with testbench/pisim; it needs root,
// iproute2's ip and util-linux's unshare.
//
// The station is the process's namespace because the station's servers
// open sockets from goroutines of their own (pin/tftp opens one per
// transfer), and only a whole process can be moved into a namespace. So
// the test process first runs itself again inside a fresh namespace
// (Reexec), never touching the host's network.
//
//	station  br  10.N.0.1/24    (netboot station: proxy DHCP, TFTP)
//	factory  eth 10.N.0.254/24  (the network's DHCP server)
//	pis      eth 10.N.0.2/24    (simulated Pis; TFTP leaves from here)
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/internal/netns"
)

// Lab is one built LAN. Close deletes it.
type Lab struct {
	// Namespace names (ip netns) and the interface each side uses; Station
	// is "", the process's own namespace.
	Station, Factory, Pis       string
	StationIf, FactoryIf, PisIf string
	StationIP, FactoryIP, PisIP netip.Addr
	Prefix                      netip.Prefix

	// NetnsDir is where ip keeps named namespaces; default /run/netns.
	NetnsDir string
	// FactoryLease is how long the factory DHCP server's leases last;
	// default an hour (tests of renewal shorten it).
	FactoryLease time.Duration
}

// Available returns why a Lab cannot be built here (not root, no ip), or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to create network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("needs ip (Debian iproute2)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return errors.New("needs unshare (Debian util-linux)")
	}
	return nil
}

// New builds a Lab on 10.<subnet>.0.0/24. Names carry a random suffix, so
// labs of concurrent tests do not collide. On error, whatever was built is
// deleted.
func New(ctx context.Context, subnet uint8) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	base := netip.AddrFrom4([4]byte{10, subnet, 0, 0})
	l := &Lab{
		Station: "", Factory: "pisim-fa-" + id, Pis: "pisim-pi-" + id,
		StationIf: "br0", FactoryIf: "eth0", PisIf: "eth0",
		StationIP: netip.AddrFrom4([4]byte{10, subnet, 0, 1}),
		FactoryIP: netip.AddrFrom4([4]byte{10, subnet, 0, 254}),
		PisIP:     netip.AddrFrom4([4]byte{10, subnet, 0, 2}),
		Prefix:    netip.PrefixFrom(base, 24),
		NetnsDir:  "/run/netns",
	}
	if err := l.build(ctx, id); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

func ip(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (l *Lab) build(ctx context.Context, id string) error {
	cidr := func(a netip.Addr) string { return netip.PrefixFrom(a, 24).String() }
	if !Inside() {
		return errors.New("netlab: the station lives in the process's network namespace: run the test through Reexec first")
	}
	steps := [][]string{
		{"netns", "add", l.Factory}, {"netns", "add", l.Pis},
		// A fixed address: a bridge without one takes the lowest of
		// its ports' MACs, so each QEMU tap plugged in and removed
		// changed the station's MAC under the Pis' ARP caches, and a
		// board netbooted minutes later sent its TFTP requests to a
		// MAC that had gone (seen: six unanswered tries, the entry in
		// PROBE). A real station's NIC keeps its MAC.
		{"link", "add", l.StationIf, "address", "02:6c:62:" + id[0:2] + ":" + id[2:4] + ":" + id[4:6], "type", "bridge"},
		{"link", "set", "lo", "up"},
		{"-n", l.Factory, "link", "set", "lo", "up"},
		{"-n", l.Pis, "link", "set", "lo", "up"},
	}
	for _, side := range []struct{ ns, ifname, tag string }{{l.Factory, l.FactoryIf, "f"}, {l.Pis, l.PisIf, "p"}} {
		// Created in the station namespace, the far end moved out and renamed.
		near, far := "v"+side.tag+id, "w"+side.tag+id
		steps = append(steps,
			[]string{"link", "add", near, "type", "veth", "peer", "name", far},
			[]string{"link", "set", far, "netns", side.ns},
			[]string{"-n", side.ns, "link", "set", far, "name", side.ifname},
			[]string{"link", "set", near, "master", l.StationIf},
			[]string{"link", "set", near, "up"},
			[]string{"-n", side.ns, "link", "set", side.ifname, "up"},
		)
	}
	steps = append(steps,
		[]string{"addr", "add", cidr(l.StationIP), "dev", l.StationIf},
		[]string{"link", "set", l.StationIf, "up"},
		[]string{"-n", l.Factory, "addr", "add", cidr(l.FactoryIP), "dev", l.FactoryIf},
		[]string{"-n", l.Pis, "addr", "add", cidr(l.PisIP), "dev", l.PisIf},
	)
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// Path returns the filesystem path of a namespace of this lab, for
// pisim.Config.Netns and Run; "" (the station) is the process's own.
func (l *Lab) Path(ns string) string {
	if ns == "" {
		return ""
	}
	return filepath.Join(l.NetnsDir, ns)
}

// Run runs fn on a thread inside namespace ns of this lab: sockets it
// opens live there (servers under test are started this way).
func (l *Lab) Run(ns string, fn func() error) error { return netns.Run(l.Path(ns), fn) }

// Describe reports the lab's network as the kernel holds it — each
// namespace's addresses and neighbour (ARP) entries, the bridge's ports
// and learned MACs — for the message of a test whose traffic went
// nowhere.
func (l *Lab) Describe(ctx context.Context) string {
	var s strings.Builder
	for _, c := range []struct {
		title string
		args  []string
	}{
		{"station addresses", []string{"ip", "-br", "addr"}},
		{"station neighbours", []string{"ip", "neigh"}},
		{"bridge ports", []string{"bridge", "link"}},
		{"bridge MACs", []string{"bridge", "fdb", "show", "br", l.StationIf}},
		{"pis addresses", []string{"ip", "-n", l.Pis, "-br", "addr"}},
		{"pis neighbours", []string{"ip", "-n", l.Pis, "neigh"}},
		{"factory neighbours", []string{"ip", "-n", l.Factory, "neigh"}},
	} {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := exec.CommandContext(cctx, c.args[0], c.args[1:]...).CombinedOutput()
		cancel()
		fmt.Fprintf(&s, "%s (%s):\n%s", c.title, strings.Join(c.args, " "), out)
		if err != nil {
			fmt.Fprintf(&s, "  (%v)\n", err)
		}
	}
	return s.String()
}

// Close deletes the namespaces, and with them the bridge and veths.
func (l *Lab) Close() error {
	var errs []error
	for _, ns := range []string{l.Factory, l.Pis} {
		if _, err := os.Stat(l.Path(ns)); err != nil {
			continue
		}
		if err := ip(context.Background(), "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	_ = exec.Command("ip", "link", "del", l.StationIf).Run() // gone with the process's namespace anyway
	return errors.Join(errs...)
}

// insideEnv marks a process that Reexec started in a fresh namespace.
const insideEnv = "NETLAB_INSIDE_PRIVATE_NETNS"

// Inside reports whether this process runs in the private network
// namespace Reexec made.
func Inside() bool { return os.Getenv(insideEnv) == "1" }

// Reexec runs this (test) binary again with args, inside a fresh network
// namespace (unshare --net), and returns its combined output. The child
// sees Inside() == true.
func Reexec(ctx context.Context, args ...string) ([]byte, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("netlab: finding this binary to run it again: %w", err)
	}
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--net", "--", self}, args...)...)
	cmd.Env = append(os.Environ(), insideEnv+"=1")
	return cmd.CombinedOutput()
}
