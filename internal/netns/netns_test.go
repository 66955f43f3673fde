package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// namespaceID is the inode of the calling thread's network namespace.
func namespaceID(t *testing.T) string {
	t.Helper()
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRun(t *testing.T) {
	errFn := errors.New("from fn")
	if err := Run("", func() error { return errFn }); err != errFn {
		t.Fatalf("Run(\"\") = %v, want fn's error", err)
	}
	if err := Run("/nonexistent/netns", func() error { t.Error("fn ran"); return nil }); err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Fatalf("missing namespace: err = %v, want one naming it", err)
	}

	if os.Geteuid() != 0 {
		t.Skip("entering a network namespace needs root (CI runs it as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) (apt-get install iproute2)")
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "lkns" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "add", "lkx0", "type", "veth", "peer", "name", "lkx1").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}

	host := namespaceID(t)
	var inside string
	var sawLink bool
	err := Run(Path(name), func() error {
		inside, _ = os.Readlink("/proc/thread-self/ns/net")
		_, err := net.InterfaceByName("lkx0")
		sawLink = err == nil
		return errFn
	})
	if err != errFn {
		t.Fatalf("Run = %v, want fn's error", err)
	}
	if inside == host || !sawLink {
		t.Errorf("fn ran in %s (host %s), saw the namespace's veth: %v", inside, host, sawLink)
	}
	if _, err := net.InterfaceByName("lkx0"); err == nil {
		t.Error("the namespace's veth is visible from the caller afterwards")
	}
}
