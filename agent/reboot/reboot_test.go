package reboot

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/lekiwi/heartbeat/agent/reboot/reboottest"
	"github.com/lekiwi/heartbeat/internal/dbustest"
)

// Reboot through a stand-in for logind and systemd on a private bus: the
// calls `systemctl reboot "0 tryboot"` makes, in its order, and every
// refusal returned with the D-Bus error in it.
func TestSystemdReboot(t *testing.T) {
	addr := dbustest.PrivateBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	startReboot := "StartUnit reboot.target replace-irreversibly"

	for _, tc := range []struct {
		name      string
		arg       string
		services  reboottest.Options
		wantCalls []string
		wantParam string
		wantErr   []string // substrings; none: success
	}{
		{name: "tryboot", arg: "0 tryboot",
			wantCalls: []string{"SetRebootParameter 0 tryboot", startReboot}, wantParam: "0 tryboot"},
		{name: "plain reboot clears a parameter set before", arg: "", services: reboottest.Options{Param: "0 tryboot"},
			wantCalls: []string{"SetRebootParameter ", startReboot}},
		{name: "systemd refuses the reboot: the parameter is taken back", arg: "0 tryboot", services: reboottest.Options{StartErr: reboottest.AccessDenied},
			wantCalls: []string{"SetRebootParameter 0 tryboot", startReboot, "SetRebootParameter "},
			wantErr:   []string{"systemd refused to start reboot.target", "org.freedesktop.systemd1.Manager.StartUnit", "Access denied"}},
		{name: "logind refuses the parameter: no reboot", arg: "0 tryboot", services: reboottest.Options{ParamErr: reboottest.NotInContainers},
			wantCalls: []string{"SetRebootParameter 0 tryboot"},
			wantErr:   []string{`set the reboot parameter "0 tryboot" through systemd-logind`, "not supported in containers"}},
		{name: "no logind: no reboot", arg: "0 tryboot", services: reboottest.Options{NoLogind: true},
			wantErr: []string{"through systemd-logind (org.freedesktop.login1.Manager.SetRebootParameter)", "org.freedesktop.login1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := addr
			if tc.services.NoLogind {
				bus = dbustest.PrivateBus(t)
			}
			s := reboottest.Serve(t, bus, tc.services)
			err := Systemd{Address: bus}.Reboot(ctx, tc.arg)
			if calls := s.Calls(); !slices.Equal(calls, tc.wantCalls) {
				t.Errorf("calls %q, want %q", calls, tc.wantCalls)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Reboot(%q) = %v", tc.arg, err)
				}
				if p := s.Param(); p != tc.wantParam {
					t.Errorf("reboot parameter %q after Reboot(%q), want %q", p, tc.arg, tc.wantParam)
				}
				return
			}
			if err == nil {
				t.Fatalf("Reboot(%q) succeeded, want an error", tc.arg)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			// The D-Bus error itself reaches the caller.
			var derr dbus.Error
			if !errors.As(err, &derr) {
				t.Errorf("error %v does not carry the D-Bus error", err)
			}
			if p := s.Param(); tc.services.StartErr != nil && p != "" {
				t.Errorf("reboot parameter %q left after a refused reboot", p)
			}
		})
	}
}

func TestSystemdRebootWithoutBus(t *testing.T) {
	err := Systemd{Address: "unix:path=/nonexistent/bus"}.Reboot(context.Background(), "0 tryboot")
	if err == nil || !strings.Contains(err.Error(), "connect to D-Bus at unix:path=/nonexistent/bus") {
		t.Fatalf("Reboot without a bus = %v", err)
	}
}

// Syscall cannot be run to its end here (it would reboot the machine); a
// cancelled context stops it before anything happens.
func TestSyscallChecksTheContextFirst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (Syscall{}).Reboot(ctx, "0 tryboot"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Reboot with a cancelled context = %v", err)
	}
}
