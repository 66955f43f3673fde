package ota_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/protocol"
)

// savedState reads the robot's update state file.
func (r *robot) savedState(t *testing.T) *ota.State {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.stateDir, ota.StateFile))
	must(t, "read the update state", err)
	s, err := ota.ParseState(b)
	must(t, "parse the update state", err)
	return s
}

// refusedAsDowngrade installs args and checks the refusal: ErrRefused
// naming both security versions and the way to override, no write to the
// disk, a failed report for the deployment, nothing left pending.
func refusedAsDowngrade(t *testing.T, f *fixture, r *robot, dev *powercut.Device, args protocol.UpdateArgs, release, floor int64) {
	t.Helper()
	ctx := context.Background()
	writes := len(dev.Writes())
	before := dev.Current()
	err := r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args)
	for _, want := range []string{"downgrade", fmt.Sprintf("security version %d", release), fmt.Sprintf("floor %d", floor), "allow_downgrade"} {
		if !errors.Is(err, ota.ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("install of an older release: %v; want %v naming %q", err, ota.ErrRefused, want)
		}
	}
	if w := dev.Writes(); len(w) != writes {
		t.Fatalf("the refused downgrade wrote %d times to the disk", len(w)-writes)
	}
	if eq, err := powercut.EqualRegion(dev.Current(), before, 0, before.Size()); err != nil || !eq {
		t.Fatalf("the disk changed: %v", err)
	}
	if last := r.last(); last.State != protocol.UpdateFailed || last.DeploymentID != args.DeploymentID || !strings.Contains(last.Reason, "downgrade") {
		t.Fatalf("last report %+v: want failed, naming the downgrade", last)
	}
	// Nothing is left pending: the next start has nothing to settle.
	if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out != (ota.Outcome{}) {
		t.Fatalf("next start after the refusal: %+v %v", out, err)
	}
}

// TestSecurityFloorCheck: on a robot whose image was built after the
// release, the release is refused before anything is written, unless the
// command allows the downgrade; a release as new as the image installs.
func TestSecurityFloorCheck(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		running int64 // the running image's build time
		allow   bool
		refused bool
	}{
		{"older refused", fixtureBuilt + 1000, false, true},
		{"equal accepted", fixtureBuilt, false, false},
		{"older with allow_downgrade accepted", fixtureBuilt + 1000, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
			r, err := newRobot(dev, f.plan, t.TempDir())
			must(t, "robot", err)
			must(t, "power on", r.boot(bootctl.A, false))
			r.tweak = func(o *ota.Options) { o.CurrentSecurityVersion = c.running }
			args := f.args()
			args.AllowDowngrade = c.allow
			if c.refused {
				refusedAsDowngrade(t, f, r, dev, args, fixtureBuilt, c.running)
				return
			}
			must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args))
			if last := r.last(); last.State != protocol.UpdateArmed {
				t.Fatalf("last report %+v, want armed", last)
			}
			s := r.savedState(t)
			if p := s.Pending; p == nil || p.SecurityVersion != fixtureBuilt || p.AllowDowngrade != c.allow {
				t.Fatalf("pending %+v: want the release's security version %d and allow_downgrade %v", p, fixtureBuilt, c.allow)
			}
			// The running image's build time is kept before the slot changes.
			if s.SecurityFloor != c.running {
				t.Fatalf("saved floor %d, want the running image's %d", s.SecurityFloor, c.running)
			}
		})
	}
}

// TestSecurityFloorPersists: a commit raises the saved floor, and a new
// agent (a restart, running the release, whose image is older than the
// floor) refuses what the floor forbids; a rollback command still goes back
// and leaves the floor; an allowed downgrade commits without lowering it;
// and a robot that never updated keeps its own image's build time as the
// floor after an allowed downgrade.
func TestSecurityFloorPersists(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	raised := fixtureBuilt + 500
	high := filepath.Join(t.TempDir(), "rel")
	must(t, "create", createSigned(f, high, release.Meta{Version: "2s", Profile: "lekiwi", SecurityVersion: raised}))
	highArgs := protocol.UpdateArgs{DeploymentID: "dep-sec", Release: high, Version: "2s"}

	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))
	must(t, "install the raised release", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, highArgs))
	if s := r.savedState(t); s.SecurityFloor != fixtureBuilt || s.Pending.SecurityVersion != raised {
		t.Fatalf("armed: floor %d, pending %+v", s.SecurityFloor, s.Pending)
	}
	must(t, "trial boot", r.boot(bootctl.B, true))
	if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateCommitted {
		t.Fatalf("commit: %+v %v", out, err)
	}
	if s := r.savedState(t); s.SecurityFloor != raised {
		t.Fatalf("after the commit the saved floor is %d, want the release's %d", s.SecurityFloor, raised)
	}
	must(t, "reboot", r.ctl.Reboot(ctx, false))
	must(t, "boot b", r.boot(bootctl.B, false))

	// A new agent runs image 2, built at fixtureBuilt: the saved floor holds.
	refusedAsDowngrade(t, f, r, dev, f.args(), fixtureBuilt, raised)

	t.Run("rollback command", func(t *testing.T) {
		rb := protocol.UpdateArgs{DeploymentID: "dep-rb", Rollback: true}
		must(t, "rollback", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, rb))
		must(t, "trial of a", r.boot(bootctl.A, true))
		if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateRolledBack {
			t.Fatalf("rollback trial: %+v %v", out, err)
		}
		must(t, "reboot", r.ctl.Reboot(ctx, false))
		must(t, "a is the default again", r.boot(bootctl.A, false))
		if s := r.savedState(t); s.SecurityFloor != raised {
			t.Fatalf("after the rollback the saved floor is %d, want %d", s.SecurityFloor, raised)
		}
		refusedAsDowngrade(t, f, r, dev, f.args(), fixtureBuilt, raised)
	})

	t.Run("allowed downgrade keeps the floor", func(t *testing.T) {
		args := f.args()
		args.AllowDowngrade = true
		must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args))
		must(t, "trial boot", r.boot(bootctl.B, true))
		if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateCommitted {
			t.Fatalf("commit of the allowed downgrade: %+v %v", out, err)
		}
		checkSlotMatchesRelease(t, f, dev.Current(), bootctl.B)
		if s := r.savedState(t); s.SecurityFloor != raised {
			t.Fatalf("after the allowed downgrade the saved floor is %d, want %d", s.SecurityFloor, raised)
		}
		must(t, "reboot", r.ctl.Reboot(ctx, false))
		must(t, "boot b", r.boot(bootctl.B, false))
		refusedAsDowngrade(t, f, r, dev, f.args(), fixtureBuilt, raised)
	})

	t.Run("first update is an allowed downgrade", func(t *testing.T) {
		dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
		r, err := newRobot(dev, f.plan, t.TempDir())
		must(t, "robot", err)
		must(t, "power on", r.boot(bootctl.A, false))
		newer := fixtureBuilt + 1000 // the robot was flashed with a later build
		r.tweak = func(o *ota.Options) { o.CurrentSecurityVersion = newer }
		args := f.args()
		args.AllowDowngrade = true
		must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args))
		must(t, "trial boot", r.boot(bootctl.B, true))
		r.tweak = nil // now running image 2
		if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateCommitted {
			t.Fatalf("commit: %+v %v", out, err)
		}
		must(t, "reboot", r.ctl.Reboot(ctx, false))
		must(t, "boot b", r.boot(bootctl.B, false))
		refusedAsDowngrade(t, f, r, dev, f.args(), fixtureBuilt, newer)
	})
}
