// Package dbustest starts a D-Bus message bus of the test's own (a real
// dbus-daemon with a session-bus configuration on a socket in a temporary
// directory), for tests of code that speaks to systemd, logind or other
// system services over D-Bus: the test exports stand-ins for those services
// on the private bus and points the code under test at its address. The
// bus is stopped when the test ends. Without dbus-daemon (Debian package
// dbus-daemon) the test is skipped, naming it.
package dbustest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// PrivateBus starts a dbus-daemon and returns its address
// ("unix:path=…,guid=…"). Every connection may own any name and call
// anything: the policy is a test's, not a system bus's.
func PrivateBus(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (Debian package dbus-daemon): D-Bus clients are tested against a private bus only")
	}
	dir, err := os.MkdirTemp("", "bus") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := filepath.Join(dir, "bus.conf")
	err = os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=`+filepath.Join(dir, "s")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config-file="+conf, "--nofork", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		if a == "" {
			t.Fatal("dbus-daemon printed no address")
		}
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("dbus-daemon did not start within 5 s")
		return ""
	}
}
