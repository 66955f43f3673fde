// Package updatecmd answers control's "update" commands on the robot by
// driving the OTA updater (package ota) through the agent runtime: every
// command is answered once, and every update state reaches control.
//
// A command's arguments are checked; it is accepted at once with a
// progress response, installed in the background one at a time, and
// answered ok once the trial boot is armed (just before the reboot: the
// outcome, committed or rolled back, follows as update events) or error.
// Every update state goes to control as an update Event through the
// runtime's durable queue, so states survive reconnects and reboots.
//
// At start, Run settles what the last reboot left (ota.Updater.OnStart:
// commit or roll back a trial, report a trial that never came up) and
// continues an install a restart interrupted. Until then update commands are
// refused as busy.
//
// Control delivers a command again when it has not seen the final answer
// (after a reconnect, a reboot, a control failover). The handler keeps the
// commands it accepted in CommandsFile and answers a repeated ID the way
// it answered first — never installing twice.
package updatecmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/protocol"
)

// Runtime is where answers and events go: *agent.Agent.
type Runtime interface {
	Emit(ctx context.Context, ev protocol.Event) error
	Respond(ctx context.Context, resp protocol.Response) error
}

// Installer is the updater: *ota.Updater.
type Installer interface {
	Install(ctx context.Context, args protocol.UpdateArgs) error
	OnStart(ctx context.Context) (ota.Outcome, error)
}

// Options configure a Handler.
type Options struct {
	// StateDir holds CommandsFile (on the persistent partition, next to
	// the updater's state). Required.
	StateDir string
	Logger   *slog.Logger     // default discards
	Now      func() time.Time // default time.Now
}

// Handler answers update commands; see the package comment.
type Handler struct {
	o   Options
	log *slog.Logger
	rec *records

	mu      sync.Mutex
	rt      Runtime   // set by Run
	inst    Installer // set by Run
	ctx     context.Context
	settled bool // OnStart done: installs may start
	job     *job // the install running, or nil
	wg      sync.WaitGroup
}

// job is one install in the background.
type job struct {
	id       string // command ID; "" for a resumed install whose command is unknown
	args     protocol.UpdateArgs
	answered bool
}

// New makes a handler; it reads CommandsFile (a damaged one is logged and
// replaced: it only deduplicates).
func New(o Options) (*Handler, error) {
	if o.StateDir == "" {
		return nil, errors.New("updates: StateDir is required (the persistent directory the updater's state is in)")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &Handler{o: o, log: o.Logger}
	rec, err := loadRecords(ota.FileStore{Path: filepath.Join(o.StateDir, CommandsFile)})
	if err != nil {
		h.log.Warn("update commands record unreadable; starting a new one (a command delivered again may be answered as unknown)", "err", err)
	}
	h.rec = rec
	return h, nil
}

// Report is the updater's Options.Report: every state becomes a durable
// update event. When the trial is armed, the command is answered ok before
// the updater reboots.
func (h *Handler) Report(s protocol.UpdateState) {
	h.mu.Lock()
	rt, j := h.rt, h.job
	h.mu.Unlock()
	if rt == nil {
		h.log.Error("update state before the handler runs: dropped", "state", s.State)
		return
	}
	ev, err := event(s)
	if err == nil {
		err = rt.Emit(context.Background(), ev)
	}
	if err != nil {
		h.log.Error("report update state", "state", s.State, "version", s.Version, "err", err)
	}
	h.log.Info("update", "deployment", s.DeploymentID, "version", s.Version, "state", s.State, "slot", s.Slot, "reason", s.Reason)
	if s.State == protocol.UpdateArmed && j != nil {
		h.answer(j, "ok", fmt.Sprintf("version %s installed in slot %s and verified; rebooting into its trial (the outcome follows as update events)", s.Version, s.Slot))
	}
}

func event(s protocol.UpdateState) (protocol.Event, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return protocol.Event{}, fmt.Errorf("encode update state: %w", err)
	}
	ev := protocol.Event{Kind: protocol.EventUpdate, Data: data, Message: "update " + s.State}
	switch s.State {
	case protocol.UpdateFailed, protocol.UpdateRolledBack:
		ev.Severity, ev.Message = "warning", "update "+s.State+": "+s.Reason
	}
	if len(ev.Message) > 512 {
		ev.Message = ev.Message[:509] + "..."
	}
	return ev, nil
}

// Handle is the runtime's CommandHandler for protocol.CommandUpdate.
func (h *Handler) Handle(cmd protocol.Command) protocol.Response {
	args, err := parseArgs(cmd.Args)
	if err != nil {
		return protocol.Response{Status: "error", Message: err.Error()}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if r, ok := h.rec.get(cmd.ID); ok {
		if r.Status != statusAccepted {
			return protocol.Response{Status: r.Status, Message: r.Message}
		}
		return protocol.Response{Status: "progress", Message: "this update is under way"}
	}
	switch {
	case h.rt == nil || !h.settled:
		return protocol.Response{Status: "error", Message: fmt.Sprintf("update %s: %v: the agent is settling the last update (trial boot health check); send it again later", args.Version, ota.ErrBusy)}
	case h.job != nil:
		return protocol.Response{Status: "error", Message: fmt.Sprintf("update %s: %v (command %q, version %s)", args.Version, ota.ErrBusy, h.job.id, h.job.args.Version)}
	}
	if err := h.rec.put(record{ID: cmd.ID, Args: args, Status: statusAccepted, At: h.o.Now()}); err != nil {
		return protocol.Response{Status: "error", Message: fmt.Sprintf("update %s: %v", args.Version, err)}
	}
	h.start(&job{id: cmd.ID, args: args})
	what := "install release " + args.Release
	if args.Rollback {
		what = "roll back to the previous slot"
	}
	return protocol.Response{Status: "progress", Message: "accepted: " + what}
}

// parseArgs decodes and checks an update command's arguments.
func parseArgs(raw json.RawMessage) (protocol.UpdateArgs, error) {
	var a protocol.UpdateArgs
	if len(raw) == 0 {
		return a, errors.New("update: no arguments: give release (registry/repo@sha256:…) or rollback")
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return a, fmt.Errorf("update: arguments: %w", err)
	}
	switch {
	case !a.Rollback && a.Release == "":
		return a, errors.New("update: no release named: give release (registry/repo@sha256:…)")
	case a.HealthTimeoutSeconds < 0 || a.HealthRetries < 0:
		return a, fmt.Errorf("update: health_timeout_seconds %d and health_retries %d must not be negative", a.HealthTimeoutSeconds, a.HealthRetries)
	}
	return a, nil
}

// start runs j in the background; h.mu held.
func (h *Handler) start(j *job) {
	h.job = j
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		err := h.inst.Install(h.ctx, j.args)
		if err != nil {
			h.answer(j, "error", err.Error())
		} else {
			h.answer(j, "ok", "installed")
		}
		h.mu.Lock()
		h.job = nil
		h.mu.Unlock()
	}()
}

// answer sends j's final response once: recorded first, so a command
// delivered again gets the same answer even if this one is lost.
func (h *Handler) answer(j *job, status, msg string) {
	h.mu.Lock()
	if j.answered {
		h.mu.Unlock()
		return
	}
	j.answered = true
	rt := h.rt
	if j.id != "" {
		if err := h.rec.put(record{ID: j.id, Args: j.args, Status: status, Message: msg, At: h.o.Now()}); err != nil {
			h.log.Error("record update command answer", "command", j.id, "err", err)
		}
	}
	h.mu.Unlock()
	if j.id == "" {
		return
	}
	if len(msg) > 1024 {
		msg = msg[:1021] + "..."
	}
	if err := rt.Respond(context.Background(), protocol.Response{CommandID: j.id, Status: status, Message: msg}); err != nil {
		h.log.Error("answer update command", "command", j.id, "status", status, "err", err)
	}
}

// Run settles the last update with inst.OnStart, reports its outcome,
// continues an interrupted install, and then serves commands until ctx
// ends; it returns once the running install (cancelled with ctx) has
// answered. Call it once, concurrently with the runtime's Run (the trial's
// health check waits for the connection), and wait for it before closing
// the runtime's queue.
func (h *Handler) Run(ctx context.Context, inst Installer, rt Runtime) {
	h.mu.Lock()
	h.rt, h.inst, h.ctx = rt, inst, ctx
	h.mu.Unlock()
	out, err := inst.OnStart(ctx)
	if err != nil {
		h.log.Error("settle the last update", "err", err)
	}
	if out.State != "" || out.Resume != nil {
		h.log.Info("last update settled", "state", out.State, "reason", out.Reason, "rebooting", out.Rebooted, "resume", out.Resume != nil)
	}
	h.mu.Lock()
	// Commands accepted before the restart: the one being resumed keeps
	// its ID; the others are answered from what OnStart found.
	var resume *job
	for _, r := range h.rec.accepted() {
		if out.Resume != nil && resume == nil && r.Args.DeploymentID == out.Resume.DeploymentID && r.Args.Release == out.Resume.Release {
			resume = &job{id: r.ID, args: *out.Resume}
			continue
		}
		status, msg := "error", "the agent restarted during this update"
		switch out.State {
		case protocol.UpdateCommitted:
			status, msg = "ok", "committed"
		case protocol.UpdateRolledBack:
			if r.Args.Rollback {
				status = "ok"
			}
			msg = "rolled back: " + out.Reason
		case protocol.UpdateFailed:
			msg = "failed: " + out.Reason
		}
		j := &job{id: r.ID, args: r.Args}
		h.mu.Unlock()
		h.answer(j, status, msg)
		h.mu.Lock()
	}
	if out.Resume != nil && ctx.Err() == nil && !out.Rebooted {
		if resume == nil {
			resume = &job{args: *out.Resume}
		}
		h.log.Info("continuing the interrupted update", "release", out.Resume.Release, "version", out.Resume.Version)
		h.start(resume)
	}
	h.settled = true
	h.mu.Unlock()
	<-ctx.Done()
	h.wg.Wait()
}
