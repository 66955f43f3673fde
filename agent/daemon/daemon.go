// Package daemon wires the agent's parts into the service systemd runs:
// configuration in, queue opened from the state directory, collector on the
// configured roots, readiness and watchdog notifications, and the runtime
// until the context ends. cmd/agent is only flags around Run.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/queue"
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
func Run(ctx context.Context, cfg config.Config, version string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	qpath := filepath.Join(cfg.StateDir, queue.FileName)
	q, err := queue.Open(qpath, queue.Options{MaxItems: cfg.QueueMaxItems, MaxBytes: cfg.QueueMaxBytes})
	if err != nil {
		return fmt.Errorf("open agent state: %w", err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			log.Error("close queue", "err", err)
		}
	}()
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
		HeartbeatInterval:       cfg.HeartbeatInterval,
		TelemetrySampleInterval: cfg.TelemetrySampleInterval,
		TelemetryMinInterval:    cfg.TelemetryMinInterval,
		TelemetryMaxInterval:    cfg.TelemetryMaxInterval,
		Backoff:                 backoff.Policy{Base: cfg.BackoffBase, Cap: cfg.BackoffCap},
		FirstReconnectJitter:    firstReconnectJitter(cfg.FirstReconnectJitter),
		Logger:                  log,
	})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	log.Info("agent starting", "robot", cfg.RobotID, "type", cfg.RobotType, "version", version,
		"servers", cfg.Servers, "queue", qpath, "stream", q.Stream(), "pending", q.Stats().Pending)

	// Ready once the state is open: from here on Emit is durable.
	if _, err := systemd.Ready(); err != nil {
		log.Warn("systemd readiness notification failed", "err", err)
	}
	wctx, stopWatchdog := context.WithCancel(ctx)
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		healthy := func() error {
			if idle := time.Since(a.LastActive()); idle > StuckAfter {
				return fmt.Errorf("runtime loop silent for %v (state %s)", idle.Round(time.Second), a.State())
			}
			return nil
		}
		if err := systemd.Watchdog(wctx, healthy, log); err != nil {
			log.Warn("systemd watchdog disabled", "err", err)
		}
	}()

	err = a.Run(ctx)
	if nerr := systemd.Stopping(); nerr != nil {
		log.Warn("systemd stopping notification failed", "err", nerr)
	}
	stopWatchdog()
	<-watchdogDone
	s := a.Stats()
	log.Info("agent stopped", "sent", s.Sent, "acked", s.Acked, "reconnects", s.Reconnects, "pending", s.Queue.Pending)
	return err
}

// firstReconnectJitter maps the configuration's "0 means none" to the
// runtime's "negative means none" (where 0 means the default).
func firstReconnectJitter(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func hardware(h config.Hardware) protocol.Hardware {
	return protocol.Hardware{Serial: h.Serial, Model: h.Model, Revision: h.Revision}
}
