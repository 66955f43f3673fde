// Package reboottest plays systemd-logind and systemd on a D-Bus bus (a
// private one from internal/dbustest) for tests of reboot.Systemd and of
// the code that reboots through it: it records every call in order, keeps
// the reboot parameter as logind keeps /run/systemd/reboot-param, and
// answers with the D-Bus errors a test sets.
package reboottest

import (
	"slices"
	"sync"
	"testing"

	"github.com/godbus/dbus/v5"
)

// D-Bus errors the real services answer with.
var (
	// AccessDenied is systemd's answer to a caller polkit refuses.
	AccessDenied = dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Access denied"})
	// NotInContainers is logind's answer to SetRebootParameter in a
	// container.
	NotInContainers = dbus.NewError("org.freedesktop.DBus.Error.NotSupported", []any{"Reboot parameter not supported in containers, refusing."})
)

// Options shape the services.
type Options struct {
	// NoLogind leaves org.freedesktop.login1 off the bus (a system without
	// systemd-logind).
	NoLogind bool
	// ParamErr and StartErr, when set, answer SetRebootParameter and
	// StartUnit.
	ParamErr, StartErr *dbus.Error
	// Param is the reboot parameter already set (from an earlier request).
	Param string
}

// Services are the stand-ins on the bus.
type Services struct {
	mu    sync.Mutex
	o     Options
	calls []string
	param string
}

// Calls are the calls made so far, in order: "SetRebootParameter <arg>",
// "StartUnit <unit> <mode>".
func (s *Services) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Param is the reboot parameter as logind would have written it.
func (s *Services) Param() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.param
}

type login1 struct{ s *Services }

func (l login1) SetRebootParameter(arg string) *dbus.Error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	l.s.calls = append(l.s.calls, "SetRebootParameter "+arg)
	if l.s.o.ParamErr != nil {
		return l.s.o.ParamErr
	}
	l.s.param = arg
	return nil
}

type systemd1 struct{ s *Services }

func (m systemd1) StartUnit(unit, mode string) (dbus.ObjectPath, *dbus.Error) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.calls = append(m.s.calls, "StartUnit "+unit+" "+mode)
	if m.s.o.StartErr != nil {
		return "", m.s.o.StartErr
	}
	return "/org/freedesktop/systemd1/job/1234", nil
}

// Serve exports logind's and systemd's manager objects under their
// well-known names on the bus at addr, until the test ends.
func Serve(t testing.TB, addr string, o Options) *Services {
	t.Helper()
	s := &Services{o: o, param: o.Param}
	own := func(name string, path dbus.ObjectPath, iface string, obj any) {
		conn, err := dbus.Connect(addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := conn.Export(obj, path, iface); err != nil {
			t.Fatal(err)
		}
		if reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("own %s on the test bus: %v %v", name, reply, err)
		}
	}
	own("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", systemd1{s})
	if !o.NoLogind {
		own("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", login1{s})
	}
	return s
}
