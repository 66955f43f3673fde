package ota_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/agent/reboot/reboottest"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/dbustest"
	"github.com/lekiwi/heartbeat/protocol"
)

// TestInstallSaysWhenTheRebootIsRefused: the agent service asks systemd
// for the trial reboot (reboot.Systemd, as the daemon wires it). When
// systemd refuses, Install fails with systemd's error in it, reports the
// update failed with that reason, leaves no reboot parameter behind, and
// the robot keeps booting the slot it runs.
func TestInstallSaysWhenTheRebootIsRefused(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	dir := t.TempDir()
	r, err := newRobot(dev, f.plan, dir)
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))

	bus := dbustest.PrivateBus(t)
	sd := reboottest.Serve(t, bus, reboottest.Options{StartErr: reboottest.AccessDenied})
	bc := f.plan.Part(layout.BootConfig)
	sec, err := dev.Section(bc.Start, bc.Size)
	must(t, "bootconfig", err)
	r.ctl, err = rpi.New(rpi.Options{DeviceTree: filepath.Join(dir, "dt"), BootConfig: sec, Reboot: reboot.Systemd{Address: bus}})
	must(t, "controller", err)

	err = r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, f.args())
	var derr dbus.Error
	if err == nil || !strings.Contains(err.Error(), "reboot into the trial of slot b") || !strings.Contains(err.Error(), "Access denied") || !errors.As(err, &derr) {
		t.Fatalf("Install with the reboot refused = %v; want the refusal, with systemd's D-Bus error", err)
	}
	if got, want := r.states(), []string{"downloading", "writing", "verifying", "armed", "failed"}; !slices.Equal(got, want) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	if last := r.last(); last.State != protocol.UpdateFailed || !strings.Contains(last.Reason, "systemd refused to start reboot.target") {
		t.Errorf("last report %+v, want failed naming the refused reboot", last)
	}
	want := []string{"SetRebootParameter 0 tryboot", "StartUnit reboot.target replace-irreversibly", "SetRebootParameter "}
	if calls := sd.Calls(); !slices.Equal(calls, want) || sd.Param() != "" {
		t.Errorf("D-Bus calls %q (parameter left %q), want %q and none left", calls, sd.Param(), want)
	}
	// Armed but not rebooted is harmless: a reset boots the default.
	must(t, "reset boots a", r.boot(bootctl.A, false))
}
