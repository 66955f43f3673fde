// Package daemon wires the agent's parts into the service systemd runs:
// configuration in, queue opened from the state directory, readiness and
// watchdog notifications, the robot identity (loaded from
// <state_dir>/identity, or enrolled with the token and fleet CA first; none
// in insecure mode), collector on the configured roots, and the runtime
// over mTLS until the context ends; beside it the OTA updater and the live
// view's watchers (teleoperation, systemd units, mDNS). cmd/agent is only
// flags around Run.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/agent/ota/updatecmd"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/agent/systemd"
	"github.com/lekiwi/heartbeat/protocol"
)

// StuckAfter is how long the runtime loop may stay silent before the
// systemd watchdog is no longer pinged. The loop wakes at least every
// telemetry sample interval and blocks at most one handshake or write
// timeout (10 s each) in one call; systemd kills the agent WatchdogSec (30 s)
// after the last ping.
const StuckAfter = 25 * time.Second

// Run runs the agent described by cfg until ctx ends. version is announced
// in hello. It returns an error only when the agent cannot start.
//
// Start-up acquires the parts in order and pushes each one's release onto
// a cleanup stack: the queue, the systemd watchdog (it runs through a
// first enrollment), the updater's disk. The runtime and the components
// that queue through it (update handler, live view) then run under one
// errgroup until ctx ends. At shutdown they all stop first — update
// answers and states and live events are in the queue by then — and the
// cleanups run in reverse: the updater's disk, the watchdog, the queue.
func Run(ctx context.Context, cfg config.Config, version string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var cleanup cleanupStack
	defer cleanup.run()

	qpath := filepath.Join(cfg.StateDir, queue.FileName)
	q, err := queue.Open(qpath, queue.Options{MaxItems: cfg.QueueMaxItems, MaxBytes: cfg.QueueMaxBytes})
	if err != nil {
		return fmt.Errorf("open agent state: %w", err)
	}
	cleanup.push(func() {
		if err := q.Close(); err != nil {
			log.Error("close queue", "err", err)
		}
	})

	// Ready once the state is open, before a first enrollment that may take
	// a while (network not up yet): systemd must not kill the agent while
	// it waits, nor in the middle of trading its token.
	if _, err := systemd.Ready(); err != nil {
		log.Warn("systemd readiness notification failed", "err", err)
	}
	// The watchdog runs from before a first enrollment to the very end.
	var running atomic.Pointer[agent.Agent]
	stopWatchdog := background(ctx, func(ctx context.Context) error { return runWatchdog(ctx, &running, log) })
	cleanup.push(func() { _ = stopWatchdog() }) // runWatchdog returns only nil

	var (
		httpClient *http.Client
		renewer    agent.Renewer
	)
	if cfg.Insecure {
		log.Warn("INSECURE: the link to control is unauthenticated and unencrypted (no TLS, no robot certificate); for development only",
			"servers", cfg.Servers)
	} else {
		id, err := loadOrEnroll(ctx, cfg, log)
		if err != nil {
			if ctx.Err() != nil {
				log.Info("agent stopped before enrollment finished")
				return nil
			}
			return err
		}
		httpClient, renewer = id.HTTPClient(), id
	}

	// updates: the OTA updater answers "update" commands.
	var commands map[string]agent.CommandHandler
	var updateHandler *updatecmd.Handler
	var upd *ota.Updater
	if cfg.UpdateEnabled {
		var transport http.RoundTripper
		if httpClient != nil {
			transport = httpClient.Transport
		}
		var closeUpdater func() error
		updateHandler, upd, closeUpdater, err = setupUpdates(cfg, version, transport, &running, log)
		if err != nil {
			log.Error("over-the-air updates disabled", "err", err)
		} else {
			cleanup.push(func() { _ = closeUpdater() })
			commands = map[string]agent.CommandHandler{protocol.CommandUpdate: updateHandler.Handle}
		}
	}

	img := runningImage(cfg.UpdateImageInfo, log)
	var helloImage *protocol.ImageInfo
	if img != nil {
		helloImage = collect.Image(*img)
	}
	col := collect.New(collect.Options{
		Roots:    collect.Roots{Proc: cfg.Roots.Proc, Sys: cfg.Roots.Sys, Etc: cfg.Roots.Etc},
		DiskPath: cfg.DiskPath,
	})
	a, err := agent.New(agent.Options{
		RobotID:                 cfg.RobotID,
		RobotType:               cfg.RobotType,
		Servers:                 cfg.Servers,
		Queue:                   q,
		Collector:               col,
		Hardware:                hardware(cfg.Hardware),
		AgentVersion:            version,
		Image:                   helloImage,
		HeartbeatInterval:       cfg.HeartbeatInterval,
		TelemetrySampleInterval: cfg.TelemetrySampleInterval,
		TelemetryMinInterval:    cfg.TelemetryMinInterval,
		TelemetryMaxInterval:    cfg.TelemetryMaxInterval,
		Backoff:                 backoff.Policy{Base: cfg.BackoffBase, Cap: cfg.BackoffCap},
		FirstReconnectJitter:    firstReconnectJitter(cfg.FirstReconnectJitter),
		Logger:                  log,
		HTTPClient:              httpClient,
		Identity:                renewer,
		Commands:                commands, // updates
	})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	running.Store(a)
	log.Info("agent starting", "robot", cfg.RobotID, "type", cfg.RobotType, "version", version, "image", imageVersion(img),
		"servers", cfg.Servers, "queue", qpath, "stream", q.Stream(), "pending", q.Stats().Pending, "mtls", !cfg.Insecure)

	// The runtime until ctx ends, and beside it the components that use
	// it; Wait returns once they all stopped, so what they queued is in the
	// queue before it closes.
	g, runCtx := errgroup.WithContext(ctx)
	// updates: settle the last update and serve update commands alongside
	// the runtime (the trial's health check waits for its connection).
	if upd != nil {
		g.Go(func() error { updateHandler.Run(runCtx, upd, a); return nil })
	}
	// teleop, services, mdns: the live fleet view's parts (live.go), each
	// optional (teleop_enabled, services_enabled, mdns_enabled); they emit
	// through the runtime's durable queue.
	for _, run := range liveComponents(cfg, img, version, a, log) {
		g.Go(func() error { return run(runCtx) })
	}
	g.Go(func() error { return a.Run(runCtx) })
	err = g.Wait()
	if nerr := systemd.Stopping(); nerr != nil {
		log.Warn("systemd stopping notification failed", "err", nerr)
	}
	s := a.Stats()
	log.Info("agent stopped", "sent", s.Sent, "acked", s.Acked, "reconnects", s.Reconnects, "pending", s.Queue.Pending)
	return err
}

// runWatchdog pings systemd's watchdog until ctx ends while the runtime
// loop is alive (see StuckAfter); before the runtime exists (enrolling)
// every step has its own timeout, so the agent counts as alive. A watchdog
// that cannot run is logged: it never stops the agent.
func runWatchdog(ctx context.Context, running *atomic.Pointer[agent.Agent], log *slog.Logger) error {
	healthy := func() error {
		a := running.Load()
		if a == nil {
			return nil
		}
		if idle := time.Since(a.LastActive()); idle > StuckAfter {
			return fmt.Errorf("runtime loop silent for %v (state %s)", idle.Round(time.Second), a.State())
		}
		return nil
	}
	if err := systemd.Watchdog(ctx, healthy, log); err != nil {
		log.Warn("systemd watchdog disabled", "err", err)
	}
	return nil
}

// firstReconnectJitter maps the configuration's "0 means none" to the
// runtime's "negative means none" (where 0 means the default).
func firstReconnectJitter(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// hardware is the board as configured and read (config.Load fills what
// was not configured), with what its revision code says.
func hardware(h config.Hardware) protocol.Hardware {
	return collect.DecodeRevision(protocol.Hardware{Serial: h.Serial, Model: h.Model, Revision: h.Revision})
}

// setupUpdates builds the update handler and the updater on the real
// Raspberry Pi parts (ota.OpenPi).
func setupUpdates(cfg config.Config, version string, transport http.RoundTripper, running *atomic.Pointer[agent.Agent], log *slog.Logger) (*updatecmd.Handler, *ota.Updater, func() error, error) {
	stateDir := cfg.UpdateStateDir
	if stateDir == "" {
		stateDir = filepath.Join(cfg.StateDir, "update")
	}
	cacheDir := cfg.UpdateCacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(stateDir, "cache")
	}
	h, err := updatecmd.New(updatecmd.Options{StateDir: stateDir, Logger: log})
	if err != nil {
		return nil, nil, nil, err
	}
	u, closeFn, err := ota.OpenPi(ota.PiOptions{KeysDir: cfg.UpdateKeysDir, StateDir: stateDir, CacheDir: cacheDir,
		Disk: cfg.UpdateDisk, ImageInfo: cfg.UpdateImageInfo, HealthCommand: cfg.UpdateHealthCommand, AgentVersion: version,
		Roots: rpi.Roots{Proc: cfg.Roots.Proc, Sys: cfg.Roots.Sys}, Transport: transport, Report: h.Report,
		// The agent is a systemd service: the reboot is systemd's to do
		// (the unit's seccomp filter has no reboot(2)).
		Reboot:    reboot.Systemd{},
		Connected: func() bool { a := running.Load(); return a != nil && a.State() == agent.Connected }})
	if err != nil {
		return nil, nil, nil, err
	}
	return h, u, closeFn, nil
}
