package lab

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Netns is a network namespace created for a test.
type Netns struct{ Name string }

// NewNetns creates a namespace named prefix-<random> with loopback up.
func NewNetns(prefix string) (*Netns, error) {
	n := &Netns{Name: fmt.Sprintf("%s-%08x", prefix, rand.Uint32())}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", n.Name, err, out)
	}
	if out, err := exec.Command("ip", "netns", "exec", n.Name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		n.Delete()
		return nil, fmt.Errorf("bring up lo in %s: %w: %s", n.Name, err, out)
	}
	return n, nil
}

// Pids lists the processes inside the namespace.
func (n *Netns) Pids() []int {
	out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Delete kills what still runs inside the namespace (all of it started by
// the test that made it) and deletes it, iptables rules included.
func (n *Netns) Delete() error {
	for range 50 {
		pids := n.Pids()
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// Partition cuts one member's dqlite traffic inside the current network
// namespace with iptables: packets its process sends to the other
// members' db ports, and packets anyone else sends to its db port, are
// dropped. The member must run with its own Gid (owner match; all
// members share 127.0.0.1, so addresses cannot tell them apart). Its HTTPS
// port stays reachable, so clients and robots still talk to the minority.
type Partition struct {
	chain string
}

// PartitionMember installs the rules.
func PartitionMember(m *Member, others []*Member) (*Partition, error) {
	if m.Gid == 0 {
		return nil, fmt.Errorf("member %s has no group id of its own to match", m.Name)
	}
	_, port, _ := net.SplitHostPort(m.DBAddress)
	var otherPorts []string
	for _, o := range others {
		_, p, _ := net.SplitHostPort(o.DBAddress)
		otherPorts = append(otherPorts, p)
	}
	p := &Partition{chain: "LEKIWI-CHAOS"}
	gid := strconv.FormatUint(uint64(m.Gid), 10)
	for _, args := range [][]string{
		{"-N", p.chain},
		{"-A", p.chain, "-p", "tcp", "-m", "owner", "--gid-owner", gid, "-m", "multiport", "--dports", strings.Join(otherPorts, ","), "-j", "DROP"},
		{"-A", p.chain, "-p", "tcp", "--dport", port, "-m", "owner", "!", "--gid-owner", gid, "-j", "DROP"},
		{"-I", "OUTPUT", "-j", p.chain},
	} {
		if err := iptables(args...); err != nil {
			p.Heal()
			return nil, err
		}
	}
	return p, nil
}

// Heal removes the rules.
func (p *Partition) Heal() error {
	var errs []error
	for iptables("-D", "OUTPUT", "-j", p.chain) == nil {
	}
	for _, args := range [][]string{{"-F", p.chain}, {"-X", p.chain}} {
		if err := iptables(args...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
