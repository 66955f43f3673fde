package ota_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/protocol"
)

// installed is a robot that ran Install and was rebooted into the trial.
func installed(t *testing.T, f *fixture) (*robot, *powercut.Device) {
	t.Helper()
	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))
	must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(context.Background(), f.args()))
	must(t, "trial boot", r.boot(bootctl.B, true))
	return r, dev
}

// TestTrialOutcomes: a trial whose health check fails and
// one that hangs until the watchdog resets it both end on the old slot,
// with the reason reported.
func TestTrialOutcomes(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()

	t.Run("health check fails", func(t *testing.T) {
		r, _ := installed(t, f)
		calls := 0
		unhealthy := func(context.Context) error { calls++; return errors.New("control unreachable with this identity") }
		out, err := r.agent(t, ota.DirSource{}, unhealthy, f.key).OnStart(ctx)
		must(t, "on start", err)
		last := r.last()
		if out.State != protocol.UpdateRolledBack || last.State != protocol.UpdateRolledBack || !out.Rebooted ||
			!strings.Contains(last.Reason, "health check failed") || !strings.Contains(last.Reason, "control unreachable") ||
			last.DeploymentID != "dep-1" || last.Version != "2" {
			t.Fatalf("outcome %+v, last report %+v", out, last)
		}
		if calls < 2 {
			t.Errorf("the health check ran %d times: it is retried until the timeout", calls)
		}
		if got := r.states(); !slices.Equal(got[len(got)-2:], []string{"trial", "rolled_back"}) {
			t.Errorf("reports %v", got)
		}
		must(t, "back on the old slot", r.boot(bootctl.A, false))
		if st := r.status(ctx); st.Default != bootctl.A || st.Booted != bootctl.A {
			t.Fatalf("status %+v", st)
		}
		out, err = r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
		if err != nil || out != (ota.Outcome{}) {
			t.Fatalf("the next start settles again: %+v %v", out, err)
		}
		t.Logf("failed trial: %s", last.Reason)
	})

	t.Run("the reason is the last check that ran to its end", func(t *testing.T) {
		r, _ := installed(t, f)
		calls := 0
		// The first attempt fails in the health command; the next one is
		// still in an earlier check when the timeout kills it.
		health := func(ctx context.Context) error {
			calls++
			if calls == 1 {
				return errors.New("health command: exit status 1")
			}
			<-ctx.Done()
			return errors.New("services active: lekiwi-agent.service is unknown")
		}
		_, err := r.agent(t, ota.DirSource{}, health, f.key).OnStart(ctx)
		must(t, "on start", err)
		if last := r.last(); last.State != protocol.UpdateRolledBack || !strings.Contains(last.Reason, "health command") {
			t.Fatalf("last report %+v: want the reason to name the health command", last)
		}
	})

	t.Run("trial hangs", func(t *testing.T) {
		r, _ := installed(t, f)
		// The trial system hangs before the agent runs: nothing kicks the
		// watchdog.
		reset, b, err := r.pi.Advance(2 * time.Minute)
		if !reset || err != nil || b.Slot != bootctl.A || b.Trial {
			t.Fatalf("watchdog: reset %v, boot %+v, %v", reset, b, err)
		}
		out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
		must(t, "on start", err)
		last := r.last()
		if out.State != protocol.UpdateRolledBack || last.State != protocol.UpdateRolledBack || last.Reason != ota.ReasonTrialLost || last.Version != "2" {
			t.Fatalf("outcome %+v, last report %+v", out, last)
		}
		if st := r.status(ctx); st.Default != bootctl.A || st.Booted != bootctl.A || st.Trial {
			t.Fatalf("status %+v", st)
		}
		t.Logf("hung trial (%s): %s", b.Reason, last.Reason)
	})

	t.Run("busy and pending trial are refused", func(t *testing.T) {
		r, _ := installed(t, f)
		err := r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, f.args())
		if !errors.Is(err, ota.ErrTrialPending) {
			t.Fatalf("install during a trial: %v", err)
		}
	})
}

// TestRollbackCommand: after a committed update, a rollback command tries
// the previous slot and commits it when healthy; without a recorded
// previous version it is refused.
func TestRollbackCommand(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	r, dev := installed(t, f)
	out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
	if err != nil || out.State != protocol.UpdateCommitted {
		t.Fatalf("commit: %+v %v", out, err)
	}
	must(t, "reboot", r.ctl.Reboot(ctx, false))
	must(t, "boot b", r.boot(bootctl.B, false))

	rb := protocol.UpdateArgs{DeploymentID: "dep-1", Rollback: true}
	must(t, "rollback", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, rb))
	if last := r.last(); last.State != protocol.UpdateArmed || last.Slot != "a" || last.Version != "1" {
		t.Fatalf("rollback report %+v", last)
	}
	must(t, "trial of a", r.boot(bootctl.A, true))
	out, err = r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
	if err != nil || out.State != protocol.UpdateRolledBack || !strings.Contains(out.Reason, "on request") {
		t.Fatalf("rollback trial: %+v %v", out, err)
	}
	must(t, "reboot", r.ctl.Reboot(ctx, false))
	must(t, "a is the default again", r.boot(bootctl.A, false))
	checkSlotMatchesRelease(t, f, dev.Current(), bootctl.B)

	// A robot that never updated has nothing to roll back to.
	fresh := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r2, err := newRobot(fresh, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r2.boot(bootctl.A, false))
	if err := r2.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, rb); !errors.Is(err, ota.ErrNoRollback) {
		t.Fatalf("rollback without a previous version: %v", err)
	}
	if len(fresh.Writes()) != 0 {
		t.Fatal("a refused rollback wrote to the disk")
	}
}

// TestHealthRetries: a health check that answers "unhealthy" rolls the
// trial back after HealthRetries+1 answers, well before the timeout; one
// that says "not yet" is waited out until the timeout, however many
// retries.
func TestHealthRetries(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	for _, retries := range []int{0, 2} {
		t.Run(fmt.Sprintf("%d retries", retries), func(t *testing.T) {
			dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
			r, err := newRobot(dev, f.plan, t.TempDir())
			must(t, "robot", err)
			must(t, "power on", r.boot(bootctl.A, false))
			r.tweak = func(o *ota.Options) { o.HealthTimeout = time.Minute }
			args := f.args()
			args.HealthRetries = retries
			must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args))
			must(t, "trial boot", r.boot(bootctl.B, true))
			calls := 0
			failing := func(context.Context) error {
				calls++
				return fmt.Errorf("services active: %w: robot-app.service is failed", ota.ErrUnhealthy)
			}
			start := time.Now()
			out, err := r.agent(t, ota.DirSource{}, failing, f.key).OnStart(ctx)
			must(t, "on start", err)
			if calls != retries+1 {
				t.Errorf("the health check ran %d times with %d retries; want %d", calls, retries, retries+1)
			}
			if el := time.Since(start); el > 30*time.Second {
				t.Errorf("rolled back after %s: it waited for the timeout, not the answers", el)
			}
			last := r.last()
			if out.State != protocol.UpdateRolledBack || !out.Rebooted || !strings.Contains(last.Reason, "robot-app.service is failed") ||
				!strings.Contains(last.Reason, fmt.Sprintf("%d failed checks; the update allows %d retries", retries+1, retries)) {
				t.Fatalf("outcome %+v, last report %+v", out, last)
			}
			must(t, "back on the old slot", r.boot(bootctl.A, false))
		})
	}
	t.Run("not yet is waited out", func(t *testing.T) {
		r, _ := installed(t, f)
		calls := 0
		notYet := func(context.Context) error { calls++; return errors.New("control reachable: no session yet") }
		out, err := r.agent(t, ota.DirSource{}, notYet, f.key).OnStart(ctx)
		must(t, "on start", err)
		if out.State != protocol.UpdateRolledBack || calls < 3 || !strings.Contains(r.last().Reason, "not healthy within") {
			t.Fatalf("outcome %+v after %d checks, last report %+v; want a rollback at the timeout", out, calls, r.last())
		}
	})
}

// TestRebootNeverMade: the agent asked for the trial reboot, and starts
// again in the same boot (its request failed, or it was killed making it,
// as a seccomp filter did on a real kernel). That is an update that
// failed for its own reason — not a trial that never came up — and a new
// update can run.
func TestRebootNeverMade(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))
	must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, f.args()))
	// No power-on: the agent restarts in the boot that asked.
	out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
	must(t, "on start", err)
	last := r.last()
	if out.State != protocol.UpdateFailed || last.State != protocol.UpdateFailed || !strings.HasPrefix(last.Reason, ota.ReasonRebootNotMade) ||
		last.DeploymentID != "dep-1" {
		t.Fatalf("outcome %+v, last report %+v; want failed, %q", out, last, ota.ReasonRebootNotMade)
	}
	// Settled: the next update is not refused as pending.
	must(t, "install again", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, f.args()))
	must(t, "trial boot", r.boot(bootctl.B, true))
	if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out.State != protocol.UpdateCommitted {
		t.Fatalf("second try: %+v, %v", out, err)
	}
}
