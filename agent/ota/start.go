package ota

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/protocol"
)

// Outcome is what OnStart found and did.
type Outcome struct {
	// State is the terminal update state OnStart reported (committed,
	// rolled_back, failed), or "" when no update was waiting to settle.
	State  string
	Reason string
	// Rebooted: OnStart asked for a reboot back to the default slot (on a
	// real Pi the call does not return).
	Rebooted bool
	// Resume is an install a restart interrupted before its trial was
	// armed: call Install(ctx, *Resume) to continue it; chunks already
	// downloaded are in the cache and are not fetched again.
	Resume *protocol.UpdateArgs
}

// OnStart settles what the last reboot left; the agent calls it once at
// start, before it accepts update commands (it needs the connection to
// control up for the health check and for the reports to leave).
//
//   - A trial boot (bootctl Status.PendingCommit): report trial, run the
//     health check (retried until it passes or the timeout ends); healthy:
//     Commit the running slot and report committed; not: report
//     rolled_back with the reason and Reboot(false) — the one-shot flag is
//     gone, so the default (old) slot boots.
//   - Running the old slot with an armed update recorded: in the boot that
//     asked for the trial (same boot id), the reboot never happened:
//     report failed, ReasonRebootNotMade; in a later boot the trial never
//     reached the agent (watchdog reset, power cut): report rolled_back,
//     ReasonTrialLost.
//   - An install interrupted before it was armed: Outcome.Resume.
//
// A rollback trial (Install with args.Rollback) settles the same way,
// reported as rolled_back when it commits and failed when it does not.
// If ctx ends during the health check (the agent is stopping), OnStart
// returns ctx's error and decides nothing: the next start does.
func (u *Updater) OnStart(ctx context.Context) (Outcome, error) {
	u.busy.Lock()
	defer u.busy.Unlock()
	st, err := u.o.Boot.Status(ctx)
	if err != nil {
		return Outcome{}, fmt.Errorf("boot status: %w", err)
	}
	state, loadErr := loadState(u.o.Store)
	if loadErr != nil {
		// A trial must still be settled; without the record it is settled
		// anonymously and the unreadable file is replaced.
		state = &State{}
	}
	p := state.Pending
	switch {
	case st.PendingCommit():
		if p != nil && p.Slot != st.Booted {
			p = nil // a record of some other update: this trial is not it
		}
		out, err := u.settleTrial(ctx, st, state, p)
		return out, errors.Join(err, loadErr)
	case loadErr != nil:
		return Outcome{}, loadErr
	case p == nil:
		return Outcome{}, nil
	case p.Phase == phaseInstalling:
		if st.Booted != p.From {
			return u.end(state, p, protocol.UpdateFailed, fmt.Sprintf("interrupted install of slot %s, but slot %s is running now", p.Slot, st.Booted))
		}
		return Outcome{Resume: &protocol.UpdateArgs{DeploymentID: p.DeploymentID, Release: p.Release, Version: p.Version,
			HealthTimeoutSeconds: p.HealthTimeoutSeconds, HealthRetries: p.HealthRetries, AllowDowngrade: p.AllowDowngrade}}, nil
	case st.Booted == p.Slot && st.Default == p.Slot:
		// Committed, but the record was not cleared before a restart.
		return u.endCommitted(state, p)
	case st.Booted == p.From && p.BootID != "" && p.BootID == u.bootID():
		return u.end(state, p, protocol.UpdateFailed, ReasonRebootNotMade+"; still running slot "+string(st.Booted))
	case st.Booted == p.From:
		if p.Rollback {
			return u.end(state, p, protocol.UpdateFailed, "rollback: "+ReasonTrialLost+"; still running slot "+string(st.Booted))
		}
		return u.end(state, p, protocol.UpdateRolledBack, ReasonTrialLost)
	default:
		return u.end(state, p, protocol.UpdateFailed, fmt.Sprintf("update of slot %s from slot %s: now running slot %s (default %s)", p.Slot, p.From, st.Booted, st.Default))
	}
}

// settleTrial runs the health check of a trial boot and commits or goes
// back.
func (u *Updater) settleTrial(ctx context.Context, st bootctl.Status, state *State, p *Pending) (Outcome, error) {
	if p == nil {
		p = &Pending{Slot: st.Booted, From: st.Default, Phase: phaseArmed}
	}
	base := protocol.UpdateState{DeploymentID: p.DeploymentID, Version: p.Version, Slot: string(st.Booted)}
	s := base
	s.State = protocol.UpdateTrial
	u.report(s)
	timeout := u.o.HealthTimeout
	if p.HealthTimeoutSeconds > 0 {
		timeout = time.Duration(p.HealthTimeoutSeconds) * time.Second
	}
	herr := u.healthy(ctx, timeout, p.HealthRetries)
	if herr != nil && ctx.Err() != nil {
		return Outcome{}, fmt.Errorf("trial of slot %s: health check interrupted: %w", st.Booted, ctx.Err())
	}
	if herr == nil {
		if err := u.o.Boot.Commit(ctx, st.Booted); err != nil {
			herr = fmt.Errorf("commit slot %s: %w", st.Booted, err)
		} else {
			return u.endCommitted(state, p)
		}
	}
	var out Outcome
	var err error
	if p.Rollback {
		out, err = u.end(state, p, protocol.UpdateFailed, fmt.Sprintf("rollback to %s: health check failed: %v; going back to slot %s", p.Version, herr, st.Default))
	} else {
		out, err = u.end(state, p, protocol.UpdateRolledBack, fmt.Sprintf("health check failed: %v", herr))
	}
	if err != nil {
		return out, err
	}
	out.Rebooted = true
	if err := u.o.Boot.Reboot(ctx, false); err != nil {
		return out, fmt.Errorf("reboot back to slot %s after a failed trial: %w (a watchdog reset or power cycle does the same)", st.Default, err)
	}
	return out, nil
}

// healthy retries the health check until it passes, until it has failed
// (ErrUnhealthy) retries+1 times, or until timeout ends; a "not yet"
// (no session with control, a unit still starting) only waits. The
// failure reported is the last attempt that ran to its end: an attempt the
// timeout cut short fails in whatever check it had reached (a killed
// systemctl reads as every unit "unknown"), which is not why the robot is
// unhealthy.
func (u *Updater) healthy(ctx context.Context, timeout time.Duration, retries int) error {
	if u.o.Health == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var failure error
	failures := 0
	for {
		err := u.o.Health(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || failure == nil {
			failure = err
		}
		if ctx.Err() == nil && errors.Is(err, ErrUnhealthy) {
			if failures++; failures > retries {
				return fmt.Errorf("%w (%d failed checks; the update allows %d retries)", err, failures, retries)
			}
		}
		t := time.NewTimer(u.o.HealthRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("not healthy within %s: %w", timeout, failure)
		case <-t.C:
		}
	}
}

func (u *Updater) endCommitted(state *State, p *Pending) (Outcome, error) {
	rec := state.slot(p.Slot)
	rec.Complete = true
	if p.Version != "" {
		rec.Version = p.Version
	}
	if p.Rollback {
		return u.end(state, p, protocol.UpdateRolledBack, fmt.Sprintf("rolled back to version %s (slot %s) on request", p.Version, p.Slot))
	}
	// Only upwards: a downgrade committed on request keeps the floor where
	// it was, so the next ordinary update is still held to the highest
	// security version this robot ever committed, not to the old release
	// it now runs.
	state.SecurityFloor = max(state.SecurityFloor, p.SecurityVersion)
	return u.end(state, p, protocol.UpdateCommitted, "")
}

// end reports a terminal state and forgets the pending update. The report
// goes first: if the state cannot be saved, the next start reports again
// rather than never.
func (u *Updater) end(state *State, p *Pending, result, reason string) (Outcome, error) {
	u.report(protocol.UpdateState{DeploymentID: p.DeploymentID, Version: p.Version, State: result, Reason: reason, Slot: string(p.Slot)})
	state.Pending = nil
	out := Outcome{State: result, Reason: reason}
	if err := saveState(u.o.Store, state); err != nil {
		return out, err
	}
	return out, nil
}

// rollback arms a trial of the previous slot when it still holds a
// complete, known version and reboots into it; OnStart commits it when
// healthy.
func (u *Updater) rollback(ctx context.Context, args protocol.UpdateArgs) error {
	base := protocol.UpdateState{DeploymentID: args.DeploymentID, Version: args.Version}
	fail := func(err error) error { return u.failed(base, err) }
	st, plan, state, err := u.preflight(ctx)
	if err != nil {
		return fail(err)
	}
	prev := st.Booted.Other()
	rec := state.Slots[prev]
	if rec == nil || !rec.Complete || rec.Version == "" {
		return fail(fmt.Errorf("slot %s: %w (no update has been installed from it, or one started overwriting it)", prev, ErrNoRollback))
	}
	if args.Version != "" && args.Version != rec.Version {
		return fail(fmt.Errorf("rollback to %s: slot %s holds version %s: %w", args.Version, prev, rec.Version, ErrNoRollback))
	}
	if err := checkBootable(u.o.Disk, plan, prev.BootPartition(), prev.SystemPartition()); err != nil {
		return fail(fmt.Errorf("rollback to slot %s: %w", prev, err))
	}
	if err := checkExt4(u.o.Disk, plan.Part(prev.SystemPartition())); err != nil {
		return fail(fmt.Errorf("rollback to slot %s: %w", prev, err))
	}
	base.Version, base.Slot = rec.Version, string(prev)
	cur := state.slot(st.Booted)
	cur.Complete = true
	if cur.Version == "" {
		cur.Version = u.o.CurrentVersion
	}
	state.Pending = &Pending{DeploymentID: args.DeploymentID, Version: rec.Version, Slot: prev, From: st.Booted,
		Phase: phaseArmed, Rollback: true, HealthTimeoutSeconds: args.HealthTimeoutSeconds, HealthRetries: args.HealthRetries,
		Started: u.o.Now(), BootID: u.bootID()}
	// Going back is an engineer's explicit act and is not checked against
	// the floor; the floor keeps the image it leaves.
	state.SecurityFloor = u.floor(state)
	if err := saveState(u.o.Store, state); err != nil {
		return fail(err)
	}
	abandon := u.abandonWith(state, fail)
	if err := u.armAndReboot(ctx, prev, base, startCost()); err != nil {
		return abandon(err)
	}
	return nil
}

// checkExt4 checks the system partition carries an ext4 superblock.
func checkExt4(d Disk, p layout.Partition) error {
	ok, err := ext4.HasSuperblock(io.NewSectionReader(d, p.Start, p.Size))
	if err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	if !ok {
		return fmt.Errorf("%s has no ext4 superblock", p.Name)
	}
	return nil
}
