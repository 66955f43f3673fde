package services

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/lekiwi/heartbeat/internal/dbustest"
)

func TestDecodeState(t *testing.T) {
	v := dbus.MakeVariant
	tests := []struct {
		name    string
		props   map[string]dbus.Variant
		want    UnitState
		wantErr string
	}{
		{"service", map[string]dbus.Variant{"LoadState": v("loaded"), "ActiveState": v("active"), "SubState": v("running"), "NRestarts": v(uint32(3))},
			UnitState{Unit: "u", LoadState: "loaded", ActiveState: "active", SubState: "running", Restarts: 3}, ""},
		{"timer without NRestarts", map[string]dbus.Variant{"LoadState": v("loaded"), "ActiveState": v("active"), "SubState": v("waiting")},
			UnitState{Unit: "u", LoadState: "loaded", ActiveState: "active", SubState: "waiting"}, ""},
		{"missing", map[string]dbus.Variant{"LoadState": v("loaded"), "ActiveState": v("active")}, UnitState{}, "SubState missing"},
		{"wrong type", map[string]dbus.Variant{"LoadState": v("loaded"), "ActiveState": v(int32(1)), "SubState": v("x")}, UnitState{}, "type i"},
		{"wrong restarts type", map[string]dbus.Variant{"LoadState": v("loaded"), "ActiveState": v("active"), "SubState": v("x"), "NRestarts": v("3")}, UnitState{}, "NRestarts has D-Bus type s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeState("u", tt.props)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// fakeSystemd1 plays systemd on a bus: the Manager's Subscribe and unit
// objects with the Unit and Service property interfaces, whose changes
// emit PropertiesChanged exactly as systemd does.
type fakeSystemd1 struct {
	conn       *dbus.Conn
	units      map[string]*prop.Properties
	subscribed chan struct{}
}

type manager struct{ subscribed chan struct{} }

func (m manager) Subscribe() *dbus.Error {
	select {
	case m.subscribed <- struct{}{}:
	default:
	}
	return nil
}

func newFakeSystemd1(t *testing.T, addr string, units map[string]UnitState) *fakeSystemd1 {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeSystemd1{conn: conn, units: map[string]*prop.Properties{}, subscribed: make(chan struct{}, 1)}
	if err := conn.Export(manager{f.subscribed}, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	for name, s := range units {
		path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + sddbus.PathBusEscape(name))
		props, err := prop.Export(conn, path, prop.Map{
			unitInterface: {
				"LoadState":   {Value: s.LoadState, Emit: prop.EmitTrue},
				"ActiveState": {Value: s.ActiveState, Emit: prop.EmitTrue},
				"SubState":    {Value: s.SubState, Emit: prop.EmitTrue},
			},
			serviceInterface: {
				"NRestarts": {Value: s.Restarts, Emit: prop.EmitFalse}, // systemd does not signal it either
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		f.units[name] = props
	}
	reply, err := conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.systemd1: %v %v", reply, err)
	}
	return f
}

// restart changes a unit the way a crash and automatic restart does.
func (f *fakeSystemd1) set(unit string, s UnitState) {
	p := f.units[unit]
	p.SetMust(serviceInterface, "NRestarts", s.Restarts)
	p.SetMust(unitInterface, "SubState", s.SubState)
	p.SetMust(unitInterface, "ActiveState", s.ActiveState)
}

// TestDBusAgainstPrivateBus runs the real client (go-systemd over godbus)
// through a real dbus-daemon against a stand-in for systemd: property
// decoding, Subscribe, and PropertiesChanged signals reaching the watcher.
func TestDBusAgainstPrivateBus(t *testing.T) {
	addr := dbustest.PrivateBus(t)
	sd1 := newFakeSystemd1(t, addr, map[string]UnitState{
		"lekiwi-host.service": st("lekiwi-host.service", "active", "running", 0),
		"ssh.service":         st("ssh.service", "active", "running", 0),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := DialAddress(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	got, err := client.UnitState(ctx, "lekiwi-host.service")
	if err != nil || got != st("lekiwi-host.service", "active", "running", 0) {
		t.Fatalf("UnitState: %+v, %v", got, err)
	}
	if _, err := client.UnitState(ctx, "missing.service"); err == nil {
		t.Fatal("UnitState of an unexported unit succeeded")
	}

	w, err := New(client, Config{Units: []string{"lekiwi-host.service", "ssh.service"}, MinInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan Change, 8)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(c Change) { ch <- c }) }()
	select {
	case <-sd1.subscribed:
	case <-time.After(5 * time.Second):
		t.Fatal("the client never called Manager.Subscribe")
	}
	// Give the watcher time to read the initial states before the change
	// (otherwise it could read the new state as initial and report nothing).
	time.Sleep(100 * time.Millisecond)
	sd1.set("lekiwi-host.service", st("lekiwi-host.service", "activating", "auto-restart", 1))
	var last Change
	for last.New.ActiveState != "activating" {
		last = next(t, ch)
	}
	if last.New.Restarts != 1 || last.Old.ActiveState != "active" || last.New.Unit != "lekiwi-host.service" {
		t.Fatalf("change %+v", last)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
}
