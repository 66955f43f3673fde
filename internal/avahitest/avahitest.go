// Package avahitest runs a real avahi-daemon in a network namespace of its
// own, joined by a veth pair to a second namespace where the code under test
// runs, so that mDNS interop tests talk to the implementation every Linux
// robot and laptop runs. It needs root, ip(8), avahi-daemon, avahi-utils and
// dbus-daemon; without them the test is skipped. Everything it creates
// (namespaces, veth, daemons, files) is removed by t.Cleanup.
package avahitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/internal/netns"
)

// Env is one avahi-daemon in namespace AvahiNS and an empty peer namespace
// PeerNS, linked by a veth pair on 10.213.0.0/24.
type Env struct {
	AvahiNS, PeerNS       string
	AvahiIface, PeerIface string
	AvahiIP, PeerIP       net.IP
	busAddr               string
	dir                   string
	avahiLog              *syncBuffer
	publishers            map[string]*exec.Cmd
}

// Start sets up the namespaces, a private D-Bus system bus (avahi-browse and
// avahi-publish talk to the daemon over D-Bus) and avahi-daemon, and waits
// until the daemon reports startup complete.
func Start(t testing.TB) *Env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("avahi interop test needs root for network namespaces (CI runs it as root)")
	}
	for _, tool := range []string{"ip", "avahi-daemon", "avahi-browse", "avahi-publish-service", "dbus-daemon"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("avahi interop test needs %s (apt-get install iproute2 avahi-daemon avahi-utils dbus)", tool)
		}
	}
	suffix := randomHex(t, 3)
	e := &Env{
		AvahiNS: "lkmd" + suffix + "a", PeerNS: "lkmd" + suffix + "p",
		AvahiIface: "lkmd" + suffix + "a", PeerIface: "lkmd" + suffix + "p",
		AvahiIP: net.IPv4(10, 213, 0, 1).To4(), PeerIP: net.IPv4(10, 213, 0, 2).To4(),
		dir: t.TempDir(), publishers: make(map[string]*exec.Cmd),
	}
	e.busAddr = "unix:path=" + filepath.Join(e.dir, "bus")

	run(t, "ip", "netns", "add", e.AvahiNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.AvahiNS).Run() })
	run(t, "ip", "netns", "add", e.PeerNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.PeerNS).Run() })
	run(t, "ip", "link", "add", e.AvahiIface, "netns", e.AvahiNS, "type", "veth", "peer", "name", e.PeerIface, "netns", e.PeerNS)
	for _, side := range []struct {
		ns, iface string
		ip        net.IP
	}{{e.AvahiNS, e.AvahiIface, e.AvahiIP}, {e.PeerNS, e.PeerIface, e.PeerIP}} {
		run(t, "ip", "-n", side.ns, "addr", "add", side.ip.String()+"/24", "dev", side.iface)
		run(t, "ip", "-n", side.ns, "link", "set", side.iface, "multicast", "on", "up")
		run(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", side.ns, "route", "add", "224.0.0.0/4", "dev", side.iface)
	}

	writeFile(t, filepath.Join(e.dir, "dbus.conf"), fmt.Sprintf(dbusConfig, filepath.Join(e.dir, "bus")))
	dbus := exec.Command("dbus-daemon", "--nofork", "--nopidfile", "--config-file="+filepath.Join(e.dir, "dbus.conf"))
	startDaemon(t, dbus, "dbus-daemon")
	waitFor(t, 5*time.Second, "D-Bus socket", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, "bus"))
		return err == nil
	})

	writeFile(t, filepath.Join(e.dir, "avahi.conf"), fmt.Sprintf(avahiConfig, e.AvahiIface))
	// ip netns exec gives the daemon a private mount namespace; a tmpfs on
	// /run there holds its pid file and socket without touching the host's.
	script := "mount -t tmpfs lekiwi-avahitest /run && mkdir /run/avahi-daemon && " +
		"exec avahi-daemon -f " + filepath.Join(e.dir, "avahi.conf") + " --no-drop-root --no-chroot --no-rlimits --no-proc-title --debug"
	avahi := exec.Command("ip", "netns", "exec", e.AvahiNS, "sh", "-c", script)
	avahi.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+e.busAddr)
	e.avahiLog = &syncBuffer{}
	avahi.Stdout, avahi.Stderr = e.avahiLog, e.avahiLog
	startDaemon(t, avahi, "avahi-daemon")
	waitFor(t, 10*time.Second, "avahi-daemon startup", func() bool {
		return strings.Contains(e.avahiLog.String(), "Server startup complete")
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("avahi-daemon log:\n%s", e.avahiLog.String())
		}
	})
	return e
}

// Background runs the code under test (an advertiser's or browser's Run)
// on its own goroutine until stop is called or the test ends, and reports
// an error it returns as a test error. stop cancels ctx and waits for run
// to return; it may be called more than once, so a test can stop early to
// check what happens afterwards (a goodbye).
func Background(t testing.TB, run func(ctx context.Context) error) (ctx context.Context, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return ctx, stop
}

// AvahiLog returns what avahi-daemon logged so far (with --debug).
func (e *Env) AvahiLog() string { return e.avahiLog.String() }

// InPeer runs fn on an OS thread switched into the peer namespace. Sockets
// fn creates belong to that namespace for their whole life, whichever
// goroutine uses them later; goroutines fn starts run in the host's.
func (e *Env) InPeer(t testing.TB, fn func()) {
	t.Helper()
	if err := netns.Run(netns.Path(e.PeerNS), func() error { fn(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// Browse runs avahi-browse -rpt for serviceType ("_lekiwi._tcp") and
// returns its parsable output.
func (e *Env) Browse(ctx context.Context, serviceType string) (string, error) {
	return e.browse(ctx, "-rpt", serviceType)
}

// BrowseCache runs avahi-browse -pc: only what the daemon already has in
// its cache, as learned from announcements or earlier answers.
func (e *Env) BrowseCache(ctx context.Context, serviceType string) (string, error) {
	return e.browse(ctx, "-pc", serviceType)
}

func (e *Env) browse(ctx context.Context, flags, serviceType string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "avahi-browse", flags, serviceType)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+e.busAddr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("avahi-browse %s %s: %w: %s", flags, serviceType, err, out)
	}
	return string(out), nil
}

// Publish has the daemon publish a service with avahi-publish-service until
// the test ends.
func (e *Env) Publish(t testing.TB, name, serviceType string, port int, txt ...string) {
	t.Helper()
	args := append([]string{"-s", name, serviceType, strconv.Itoa(port)}, txt...)
	cmd := exec.Command("avahi-publish-service", args...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+e.busAddr)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	startDaemon(t, cmd, "avahi-publish-service")
	e.publishers[name] = cmd
	waitFor(t, 10*time.Second, "avahi-publish-service "+name, func() bool {
		return strings.Contains(out.String(), "Established")
	})
}

// StopPublishing ends the avahi-publish-service started for name; Avahi
// withdraws the service with goodbye packets.
func (e *Env) StopPublishing(t testing.TB, name string) {
	t.Helper()
	cmd := e.publishers[name]
	if cmd == nil {
		t.Fatalf("no publisher for %q", name)
	}
	delete(e.publishers, name)
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
}

const dbusConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

const avahiConfig = `[server]
host-name=avahitest
domain-name=local
use-ipv4=yes
use-ipv6=no
allow-interfaces=%s
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
[reflector]
[rlimits]
`

func startDaemon(t testing.TB, cmd *exec.Cmd, what string) {
	t.Helper()
	if cmd.Stdout == nil {
		buf := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = buf, buf
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil { // not already stopped and waited for
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
