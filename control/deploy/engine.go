package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/leader"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// Options configure an Engine.
type Options struct {
	// Now is the engine's clock (tests move a fake one); default time.Now.
	Now func() time.Time
	// Interval between steps in Run; default 1 s.
	Interval time.Duration
	// IsLeader reports whether this node should run the engine; default:
	// this store's node is the dqlite leader (so exactly one node steps,
	// and it moves with failovers).
	IsLeader func(context.Context) (bool, error)
	Logger   *slog.Logger
	// Actor names the engine in the events it writes; default "control/deploy".
	Actor string
}

// Engine advances deployments. Everything it decides is an event applied
// to the deployment tables in the same transaction, and everything it
// decides from is read back from those tables, so a new leader's engine
// continues exactly where the old one stopped: a robot whose update was
// recorded as sent is never sent again, one not yet recorded is sent once.
type Engine struct {
	st *store.Store
	o  Options
	// cursor is the log sequence up to which robots' reports were read;
	// derived from the tables whenever the engine (re)starts leading.
	cursor      int64
	cursorValid bool
}

// New makes an engine over st.
func New(st *store.Store, o Options) *Engine {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Actor == "" {
		o.Actor = "control/deploy"
	}
	if o.IsLeader == nil {
		o.IsLeader = st.IsLeader
	}
	return &Engine{st: st, o: o}
}

// stepTimeout bounds one round of Run: the leadership check, the sync on
// taking the lead and the step together.
const stepTimeout = 30 * time.Second

// Run steps the engine every Interval while this node leads, until ctx
// ends.
func (e *Engine) Run(ctx context.Context) error {
	synced := false
	r := leader.Runner{
		Interval: e.o.Interval,
		// The check shares the round's bound rather than having its own:
		// Options.IsLeader may be any function, not only a cluster query.
		RoundTimeout: stepTimeout,
		CheckFailed: func(err error) {
			e.o.Logger.Warn("deployment engine idle: cluster leader unknown", "err", err)
		},
		JobFailed: func(err error) {
			if ctx.Err() == nil {
				e.o.Logger.Warn("deployment engine step failed; the next step retries from the recorded state", "err", err)
			}
		},
	}
	return r.Run(ctx, e.o.IsLeader, func(ctx context.Context, gained bool) error {
		if gained {
			// Another node may have led meanwhile: re-derive everything.
			e.cursorValid, synced = false, false
		}
		if !synced {
			// On taking the lead: the tables must agree with the log
			// before anything is decided from them (after a restore they
			// are rebuilt here, in steps that survive the timeout).
			rep, err := Sync(ctx, e.st)
			if err != nil {
				e.o.Logger.Warn("deployment tables do not agree with the event log yet; retrying", "err", err, "replayed", rep.Replayed)
				return nil
			}
			if !rep.Before.Current() {
				e.o.Logger.Info("deployment tables rebuilt from the event log", "before", rep.Before.String(), "reset", rep.Reset, "replayed", rep.Replayed)
			}
			synced = true
		}
		return e.Step(ctx)
	})
}

// Step does one round: record robots' reports and timeouts, then decide
// each active deployment's next moves. It is safe to call from several
// nodes at once (only one of two conflicting decisions commits), but only
// the leader is meant to.
func (e *Engine) Step(ctx context.Context) error {
	err := e.step(ctx)
	if errors.Is(err, ErrConflict) {
		// Someone else moved first: re-derive everything next time.
		e.cursorValid = false
		e.o.Logger.Info("deployment changed under the engine; re-reading", "err", err)
		return nil
	}
	if err != nil {
		e.cursorValid = false
	}
	return err
}

func (e *Engine) step(ctx context.Context) error {
	last, err := e.st.LastSeq(ctx)
	if err != nil {
		return err
	}
	ids, err := activeIDs(ctx, e.st.DB())
	if isNoTable(err) {
		return nil
	}
	if err != nil {
		return err
	}
	deps, err := e.load(ctx, ids)
	if err != nil {
		return err
	}
	if len(deps) == 0 {
		e.cursorValid = false
		return nil
	}
	if !e.cursorValid {
		e.cursor = last
		for _, d := range deps {
			for _, r := range d.Robots {
				if r.inFlight() || r.State == RobotFailed {
					e.cursor = min(e.cursor, r.SentSeq-1)
				}
			}
		}
		e.cursorValid = true
	}
	if err := e.collect(ctx, deps); err != nil {
		return err
	}
	if err := e.expire(ctx, ids); err != nil {
		return err
	}
	for _, id := range ids {
		// A few decisions per deployment per step (complete a batch, start
		// the next, send it), each re-read from the tables.
		for range 4 {
			d, err := Get(ctx, e.st, id)
			if err != nil {
				return err
			}
			moved, err := e.decide(ctx, d)
			if err != nil {
				return fmt.Errorf("deployment %s: %w", id, err)
			}
			if !moved {
				break
			}
		}
	}
	return nil
}

func (e *Engine) load(ctx context.Context, ids []string) ([]*Deployment, error) {
	var deps []*Deployment
	for _, id := range ids {
		d, err := Get(ctx, e.st, id)
		if err != nil {
			return nil, err
		}
		deps = append(deps, d)
	}
	return deps, nil
}

// tailPage and tailPages bound how much of the log one step reads.
const (
	tailPage  = 500
	tailPages = 20
)

// collect reads robots' update reports and command answers after the
// cursor and records what they mean for the deployments.
func (e *Engine) collect(ctx context.Context, deps []*Deployment) error {
	type entry struct {
		dep string
		r   *RobotProgress
	}
	byRobot := map[string]entry{}
	byCommand := map[string]entry{}
	for _, d := range deps {
		for i := range d.Robots {
			r := &d.Robots[i]
			if r.inFlight() || r.State == RobotFailed {
				byRobot[r.RobotID] = entry{d.ID, r}
				byCommand[r.CommandID] = entry{d.ID, r}
			}
		}
	}
	if len(byRobot) == 0 {
		return nil
	}
	now := e.o.Now()
	for range tailPages {
		page, err := e.st.EventsOfTypes(ctx, e.cursor, tailPage, store.TypeRobotEvent, store.TypeCommandResponse)
		if err != nil {
			return err
		}
		var out []store.Event
		for _, ev := range page {
			var en entry
			var rd RobotData
			switch ev.Type {
			case store.TypeRobotEvent:
				var pe protocol.Event
				var us protocol.UpdateState
				if json.Unmarshal(ev.Data, &pe) != nil || pe.Kind != protocol.EventUpdate || json.Unmarshal(pe.Data, &us) != nil {
					continue
				}
				var ok bool
				if en, ok = byRobot[ev.RobotID]; !ok || en.dep != us.DeploymentID || ev.Seq <= en.r.SentSeq {
					continue
				}
				rd = reportResult(en.r, us)
			case store.TypeCommandResponse:
				var resp protocol.Response
				if json.Unmarshal(ev.Data, &resp) != nil || resp.Status != "error" {
					continue
				}
				var ok bool
				if en, ok = byCommand[resp.CommandID]; !ok || !en.r.inFlight() || en.r.RobotID != ev.RobotID {
					continue
				}
				// The agent refused the command: nothing changed on the robot.
				rd = RobotData{Result: failedResult(en.r), UpdateState: protocol.UpdateFailed, Reason: "robot refused the command: " + resp.Message}
			}
			if rd.Result == "" && rd.UpdateState == "" {
				continue
			}
			rd.ID, rd.RobotID, rd.SourceSeq = en.dep, en.r.RobotID, ev.Seq
			typ := TypeRobotProgress
			if rd.Result != "" {
				typ = TypeRobotResult
				en.r.State = rd.Result
			}
			en.r.UpdateState = rd.UpdateState
			out = append(out, event(typ, rd, e.o.Actor, en.dep, now))
		}
		for start := 0; start < len(out); start += store.MaxAppendBatch {
			if err := write(ctx, e.st, out[start:min(len(out), start+store.MaxAppendBatch)]...); err != nil {
				return fmt.Errorf("record robots' update reports: %w", err)
			}
		}
		if len(page) > 0 {
			e.cursor = page[len(page)-1].Seq
		}
		if len(page) < tailPage {
			return nil
		}
	}
	return nil
}

// reportResult maps an agent's update state onto the robot's deployment
// state: a result for a final state, a progress record for a new
// intermediate one, nothing otherwise.
func reportResult(r *RobotProgress, us protocol.UpdateState) RobotData {
	reason := us.Reason
	switch r.State {
	case RobotSent:
		switch us.State {
		case protocol.UpdateCommitted:
			return RobotData{Result: RobotSucceeded, UpdateState: us.State}
		case protocol.UpdateFailed:
			return RobotData{Result: RobotFailed, UpdateState: us.State, Reason: reason}
		case protocol.UpdateRolledBack:
			return RobotData{Result: RobotFailed, UpdateState: us.State, Reason: "the robot went back to its old slot: " + reason}
		}
	case RobotRollbackSent:
		switch us.State {
		case protocol.UpdateRolledBack:
			return RobotData{Result: RobotRolledBack, UpdateState: us.State, Reason: reason}
		case protocol.UpdateFailed:
			return RobotData{Result: RobotRollbackFailed, UpdateState: us.State, Reason: reason}
		}
	case RobotFailed:
		// A robot that timed out may still commit: record the truth.
		if us.State == protocol.UpdateCommitted {
			return RobotData{Result: RobotSucceeded, UpdateState: us.State, Reason: "committed after its deadline"}
		}
		return RobotData{}
	}
	if us.State != r.UpdateState && !us.Terminal() {
		return RobotData{UpdateState: us.State}
	}
	return RobotData{}
}

func failedResult(r *RobotProgress) string {
	if r.State == RobotRollbackSent {
		return RobotRollbackFailed
	}
	return RobotFailed
}

// expire fails robots that did not report a final state by their deadline.
func (e *Engine) expire(ctx context.Context, ids []string) error {
	now := e.o.Now()
	var out []store.Event
	for _, id := range ids {
		d, err := Get(ctx, e.st, id)
		if err != nil {
			return err
		}
		for _, r := range d.Robots {
			if r.inFlight() && !r.Deadline.IsZero() && now.After(r.Deadline) {
				reason := fmt.Sprintf("timeout: no final update state within %ds (last reported %q)", d.Spec.UpdateTimeoutSeconds, r.UpdateState)
				out = append(out, event(TypeRobotResult, RobotData{ID: id, RobotID: r.RobotID, Result: failedResult(&r), UpdateState: r.UpdateState, Reason: reason}, e.o.Actor, id, now))
			}
		}
	}
	for start := 0; start < len(out); start += store.MaxAppendBatch {
		if err := write(ctx, e.st, out[start:min(len(out), start+store.MaxAppendBatch)]...); err != nil {
			return fmt.Errorf("record update timeouts: %w", err)
		}
	}
	return nil
}

// decide makes the deployment's next move, if any, and reports whether it
// wrote something.
func (e *Engine) decide(ctx context.Context, d *Deployment) (bool, error) {
	now := e.o.Now()
	switch d.State {
	case StateRunning:
		if reason := tripped(d); reason != "" {
			return true, e.trip(ctx, d, reason, now)
		}
		if moved, err := e.advanceBatches(ctx, d, now); moved || err != nil {
			return moved, err
		}
		return e.send(ctx, d, now)
	case StateRollingBack:
		return e.rollBack(ctx, d, now)
	}
	return false, nil
}

// tripped says which failure threshold the deployment crossed, if any.
func tripped(d *Deployment) string {
	total := d.Counts.Total
	if limit := d.Spec.FailureThreshold.Of(total); d.Counts.Failed-d.FailedAck >= limit {
		return fmt.Sprintf("%d of %d robots failed (failure threshold %s = %d robots)", d.Counts.Failed, total, d.Spec.FailureThreshold, limit)
	}
	for i := d.AckAfterBatch + 1; i <= d.CurrentBatch && i < len(d.Batches); i++ {
		b := d.Batches[i]
		if limit := d.Spec.BatchFailureThreshold.Of(b.Size); b.Counts.Failed >= limit {
			return fmt.Sprintf("%d of %d robots of batch %d failed (batch failure threshold %s = %d robots)", b.Counts.Failed, b.Size, i, d.Spec.BatchFailureThreshold, limit)
		}
	}
	return ""
}

func (e *Engine) trip(ctx context.Context, d *Deployment, reason string, now time.Time) error {
	typ := TypePaused
	switch {
	case d.Spec.AutoRollback:
		typ, reason = TypeRollbackStarted, reason+"; rolling back"
	case d.Spec.OnFailure == OnFailureAbort:
		typ = TypeAborted
	}
	e.o.Logger.Warn("deployment failure threshold reached", "deployment", d.ID, "action", typ, "reason", reason)
	return write(ctx, e.st, event(typ, StateData{ID: d.ID, Reason: reason}, e.o.Actor, d.ID, now))
}

// advanceBatches completes the current batch when none of its robots is
// waiting to be sent or to answer (deferred ones do not hold it up: they
// follow when free), starts the next one, or completes the deployment.
func (e *Engine) advanceBatches(ctx context.Context, d *Deployment, now time.Time) (bool, error) {
	cur := d.CurrentBatch
	if cur >= 0 && d.Batches[cur].State == BatchRunning {
		c := d.Batches[cur].Counts
		if c.Pending+c.Sent > 0 {
			return false, nil
		}
		events := []store.Event{event(TypeBatchCompleted, BatchData{ID: d.ID, Batch: cur, Succeeded: c.Succeeded, Failed: c.Failed, Deferred: c.Deferred}, e.o.Actor, d.ID, now)}
		if cur == 0 && len(d.Batches) > 1 && d.Spec.pausesAfterFirst() {
			events = append(events, event(TypePaused, StateData{ID: d.ID, Reason: fmt.Sprintf("first batch (%s) done: %d succeeded, %d failed; resume to continue", d.Spec.Strategy, c.Succeeded, c.Failed)}, e.o.Actor, d.ID, now))
		}
		return true, write(ctx, e.st, events...)
	}
	if cur+1 < len(d.Batches) {
		return true, write(ctx, e.st, event(TypeBatchStarted, BatchData{ID: d.ID, Batch: cur + 1}, e.o.Actor, d.ID, now))
	}
	if c := d.Counts; c.Pending+c.Deferred+c.Sent == 0 {
		return true, write(ctx, e.st, event(TypeCompleted, StateData{ID: d.ID, Reason: fmt.Sprintf("%d succeeded, %d failed", c.Succeeded, c.Failed)}, e.o.Actor, d.ID, now))
	}
	return false, nil
}

// sendChunk is how many robots one send transaction carries: two events
// each (the queued command and the record of sending it).
const sendChunk = store.MaxAppendBatch / 2

// send starts updates for the started batches' pending and deferred
// robots, within the rate limits and the maintenance window, deferring
// robots that are teleoperated or offline.
func (e *Engine) send(ctx context.Context, d *Deployment, now time.Time) (bool, error) {
	if !d.Spec.Window.Contains(now.UTC().Hour()) {
		return false, nil
	}
	slots := len(d.Robots)
	inFlight, recent := 0, 0
	for _, r := range d.Robots {
		if r.inFlight() {
			inFlight++
		}
		if !r.SentAt.IsZero() && now.Sub(r.SentAt) < time.Minute {
			recent++
		}
	}
	if d.Spec.MaxConcurrent > 0 {
		slots = min(slots, d.Spec.MaxConcurrent-inFlight)
	}
	if d.Spec.PerMinute > 0 {
		slots = min(slots, d.Spec.PerMinute-recent)
	}
	var out []store.Event
	for _, r := range d.Robots {
		if slots <= 0 {
			break
		}
		if r.Batch > d.CurrentBatch || (r.State != RobotPending && r.State != RobotDeferred) {
			continue
		}
		if why, err := e.unavailable(ctx, r.RobotID); err != nil {
			return false, err
		} else if why != "" {
			if r.State != RobotDeferred || r.Reason != why {
				out = append(out, event(TypeRobotDeferred, RobotData{ID: d.ID, RobotID: r.RobotID, Reason: why}, e.o.Actor, d.ID, now))
			}
			continue
		}
		cmd, sent, err := e.updateCommand(d, r, false, now)
		if err != nil {
			return false, err
		}
		out = append(out, cmd, sent)
		slots--
	}
	return len(out) > 0, e.writeChunks(ctx, out)
}

// writeChunks writes events in transactions of at most MaxAppendBatch,
// never splitting a command from its record of sending.
func (e *Engine) writeChunks(ctx context.Context, out []store.Event) error {
	for len(out) > 0 {
		n := min(len(out), store.MaxAppendBatch)
		if n < len(out) && out[n-1].Type == store.TypeCommandQueued {
			n--
		}
		if err := write(ctx, e.st, out[:n]...); err != nil {
			return err
		}
		out = out[n:]
	}
	return nil
}

// unavailable says why a robot must not be updated now ("" when it may):
// never mid-drive, and not while offline (its command would wait in the
// outbox and its deadline run out).
func (e *Engine) unavailable(ctx context.Context, id string) (string, error) {
	r, err := e.st.Robot(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "robot unknown to control", nil
	}
	if err != nil {
		return "", err
	}
	switch {
	case r.Revoked:
		return "robot identity revoked", nil
	case r.Teleoperation.Active:
		return "teleoperation in progress", nil
	case r.Status.State != store.StateOnline:
		return "robot offline", nil
	}
	return "", nil
}

// updateCommand builds the queued command and the record of sending it;
// they are written in one transaction.
func (e *Engine) updateCommand(d *Deployment, r RobotProgress, rollback bool, now time.Time) (store.Event, store.Event, error) {
	args, err := json.Marshal(protocol.UpdateArgs{
		DeploymentID: d.ID, Release: d.Spec.Release, Version: d.Spec.Version,
		HealthTimeoutSeconds: d.Spec.Health.TimeoutSeconds, HealthRetries: d.Spec.Health.Retries, Rollback: rollback,
		AllowDowngrade: d.Spec.AllowDowngrade,
	})
	if err != nil {
		return store.Event{}, store.Event{}, err
	}
	deadline := now.Add(time.Duration(d.Spec.UpdateTimeoutSeconds) * time.Second).UTC()
	// The id is derived from the deployment, the robot and the send count,
	// so the outbox's primary key refuses a second queueing of the same send.
	cmd := protocol.Command{ID: fmt.Sprintf("%s-%s-%d", d.ID, r.RobotID, r.Sends+1), Name: protocol.CommandUpdate, Args: args, Deadline: deadline}
	data, err := json.Marshal(cmd)
	if err != nil {
		return store.Event{}, store.Event{}, err
	}
	queued := store.Event{RobotID: r.RobotID, Type: store.TypeCommandQueued, Time: now.UTC(), Data: data, Actor: e.o.Actor, CorrelationID: cmd.ID}
	sent := event(TypeRobotUpdateSent, RobotData{ID: d.ID, RobotID: r.RobotID, CommandID: cmd.ID, Deadline: deadline, Rollback: rollback}, e.o.Actor, d.ID, now)
	return queued, sent, nil
}

// rollBack sends rollbacks once no update is in flight, and finishes the
// deployment when every rollback has answered.
func (e *Engine) rollBack(ctx context.Context, d *Deployment, now time.Time) (bool, error) {
	waiting := 0
	var out []store.Event
	for _, r := range d.Robots {
		if r.inFlight() {
			waiting++
			continue
		}
		if !needsRollback(r) {
			continue
		}
		waiting++
		if why, err := e.unavailable(ctx, r.RobotID); err != nil {
			return false, err
		} else if why != "" {
			continue // retried next step; never mid-drive
		}
		cmd, sent, err := e.updateCommand(d, r, true, now)
		if err != nil {
			return false, err
		}
		out = append(out, cmd, sent)
	}
	if len(out) > 0 {
		return true, e.writeChunks(ctx, out)
	}
	if waiting == 0 {
		c := d.Counts
		return true, write(ctx, e.st, event(TypeRolledBack, StateData{ID: d.ID, Reason: fmt.Sprintf("%d rolled back, %d rollbacks failed", c.RolledBack, c.RollbackFailed)}, e.o.Actor, d.ID, now))
	}
	return false, nil
}

// needsRollback: robots that committed the release, and failed ones not
// known to be back on their old slot (timed out mid-update). A robot that
// reported failed (nothing written) or rolled_back is already there.
func needsRollback(r RobotProgress) bool {
	switch r.State {
	case RobotSucceeded:
		return true
	case RobotFailed:
		return r.UpdateState != protocol.UpdateFailed && r.UpdateState != protocol.UpdateRolledBack &&
			!strings.HasPrefix(r.Reason, "robot refused")
	}
	return false
}
