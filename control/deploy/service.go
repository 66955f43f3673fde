package deploy

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// ErrInvalid marks a deployment request that cannot be satisfied as asked
// (bad spec, no robot matches, robots busy in another deployment).
var ErrInvalid = errors.New("invalid deployment")

// write appends events and applies them to the deployment tables in one
// transaction, recording the newest applied deployment event (see
// rebuild.go). While the tables are being rebuilt it refuses with
// ErrRebuilding and nothing is appended.
func write(ctx context.Context, st *store.Store, events ...store.Event) error {
	_, err := st.AppendWith(ctx, events, func(ctx context.Context, tx *sql.Tx, appended []store.Event) error {
		if err := checkWritable(ctx, tx); err != nil {
			return err
		}
		var last int64
		for _, e := range appended {
			if err := apply(ctx, tx, e); err != nil {
				return err
			}
			if slices.Contains(EventTypes(), e.Type) {
				last = e.Seq
			}
		}
		if last == 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deployment_projection SET applied_seq = ? WHERE id = 1`, last); err != nil {
			return fmt.Errorf("record deployment event %d as applied: %w", last, err)
		}
		return nil
	})
	return err
}

func event(typ string, data any, actor, correlation string, now time.Time) store.Event {
	b, _ := json.Marshal(data) // our own plain structs
	return store.Event{Type: typ, Time: now.UTC(), Data: b, Actor: actor, CorrelationID: correlation}
}

// Create validates spec, selects its robots (sorted by id), plans the
// batches and records DeploymentCreated. The leader's engine starts it.
func Create(ctx context.Context, st *store.Store, spec Spec, actor string, now time.Time) (*Deployment, error) {
	spec = spec.withDefaults()
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := Migrate(ctx, st.DB()); err != nil {
		return nil, err
	}
	robots, err := selectRobots(ctx, st, spec.Target)
	if err != nil {
		return nil, err
	}
	if len(robots) == 0 {
		return nil, fmt.Errorf("%w: no robot matches the target %s", ErrInvalid, describeTarget(spec.Target))
	}
	if len(robots) > MaxTargets {
		return nil, fmt.Errorf("%w: %d robots match; at most %d per deployment (narrow the target, deploy in parts)", ErrInvalid, len(robots), MaxTargets)
	}
	busy, err := busyRobots(ctx, st, robots)
	if err != nil {
		return nil, err
	}
	if len(busy) > 0 {
		return nil, fmt.Errorf("%w: %d target robots are in active deployments (%s); wait for them or abort those", ErrInvalid, len(busy), strings.Join(busy[:min(5, len(busy))], ", "))
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := "dep-" + hex.EncodeToString(b[:])
	data := CreatedData{ID: id, Spec: spec, Robots: robots, Batches: spec.plan(len(robots))}
	if err := write(ctx, st, event(TypeCreated, data, actor, id, now)); err != nil {
		return nil, fmt.Errorf("create deployment: %w", err)
	}
	return Get(ctx, st, id)
}

// selectRobots lists the robots the target matches, sorted by id.
// Revoked robots are never targets.
func selectRobots(ctx context.Context, st *store.Store, t Target) ([]string, error) {
	if len(t.RobotIDs) > 0 {
		var out, unknown []string
		for _, id := range t.RobotIDs {
			r, err := st.Robot(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				unknown = append(unknown, id)
				continue
			}
			if err != nil {
				return nil, err
			}
			if matches(r, t) {
				out = append(out, id)
			}
		}
		if len(unknown) > 0 {
			return nil, fmt.Errorf("%w: unknown robots %s", ErrInvalid, strings.Join(unknown[:min(5, len(unknown))], ", "))
		}
		slices.Sort(out)
		return slices.Compact(out), nil
	}
	var out []string
	f := store.RobotFilter{Type: t.Profile, Limit: 1000}
	for range MaxTargets {
		page, err := st.Robots(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("select deployment targets: %w", err)
		}
		for _, r := range page {
			if matches(r, t) {
				out = append(out, r.ID)
			}
		}
		if len(page) < f.Limit || len(out) > MaxTargets {
			break
		}
		f.AfterID = page[len(page)-1].ID
	}
	return out, nil
}

func matches(r store.Robot, t Target) bool {
	if r.Revoked {
		return false
	}
	if t.Profile != "" && string(r.Type) != t.Profile {
		return false
	}
	if t.Model != "" && !strings.Contains(r.Hardware.Model, t.Model) {
		return false
	}
	return true
}

func describeTarget(t Target) string {
	b, _ := json.Marshal(t)
	return string(b)
}

// busyRobots lists robots of ids that are pending or updating in an
// active deployment: one deployment at a time per robot, or two engines'
// batches would race on its slots.
func busyRobots(ctx context.Context, st *store.Store, ids []string) ([]string, error) {
	active, err := activeIDs(ctx, st.DB())
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var busy []string
	for _, dep := range active {
		d, err := Get(ctx, st, dep)
		if err != nil {
			return nil, err
		}
		if d.State == StateAborted || d.State == StateCompleted || d.State == StateRolledBack {
			// Only its in-flight answers remain; robots are free once they come.
			for _, r := range d.Robots {
				if r.inFlight() && want[r.RobotID] {
					busy = append(busy, r.RobotID)
				}
			}
			continue
		}
		for _, r := range d.Robots {
			if want[r.RobotID] {
				busy = append(busy, r.RobotID)
			}
		}
	}
	slices.Sort(busy)
	return slices.Compact(busy), nil
}

// Pause stops new updates; robots already updating finish.
func Pause(ctx context.Context, st *store.Store, id, reason, actor string, now time.Time) (*Deployment, error) {
	return act(ctx, st, TypePaused, id, reason, actor, now)
}

// Resume continues a paused deployment. Failures so far are accepted:
// thresholds count only failures after the resume.
func Resume(ctx context.Context, st *store.Store, id, actor string, now time.Time) (*Deployment, error) {
	return act(ctx, st, TypeResumed, id, "", actor, now)
}

// Abort ends the deployment without rolling anything back; robots already
// updating finish and their results are recorded.
func Abort(ctx context.Context, st *store.Store, id, reason, actor string, now time.Time) (*Deployment, error) {
	return act(ctx, st, TypeAborted, id, reason, actor, now)
}

// Rollback ends the deployment and sends a rollback to every robot that
// committed the release in it (and every failed robot not known to be on
// its old slot), once any update in flight has finished.
func Rollback(ctx context.Context, st *store.Store, id, reason, actor string, now time.Time) (*Deployment, error) {
	return act(ctx, st, TypeRollbackStarted, id, reason, actor, now)
}

func act(ctx context.Context, st *store.Store, typ, id, reason, actor string, now time.Time) (*Deployment, error) {
	if err := checkReadable(ctx, st.DB()); err != nil {
		return nil, err
	}
	if _, err := loadDoc(ctx, st.DB(), id); err != nil {
		return nil, err
	}
	if err := write(ctx, st, event(typ, StateData{ID: id, Reason: reason}, actor, id, now)); err != nil {
		return nil, err
	}
	return Get(ctx, st, id)
}
