// Package systemd is the agent's side of its systemd unit: the unit file
// itself (embedded, so `lekiwi-agent systemd-unit` prints exactly what the
// binary expects) and the sd_notify readiness and watchdog protocol.
//
// Outside systemd (no NOTIFY_SOCKET) every call is a harmless no-op, so the
// same binary runs in a terminal, a container or a simulator.
package systemd

import (
	"context"
	_ "embed"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

//go:embed lekiwi-agent.service
var unit string

// UnitName is the name the unit is installed under.
const UnitName = "lekiwi-agent.service"

// Unit returns the unit file.
func Unit() string { return unit }

// Ready tells systemd the service is up (READY=1). sent is false outside
// systemd.
func Ready() (sent bool, err error) {
	sent, err = daemon.SdNotify(false, daemon.SdNotifyReady)
	if err != nil {
		return false, fmt.Errorf("notify systemd READY=1: %w", err)
	}
	return sent, nil
}

// Stopping tells systemd the service is shutting down (STOPPING=1).
func Stopping() error {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyStopping); err != nil {
		return fmt.Errorf("notify systemd STOPPING=1: %w", err)
	}
	return nil
}

// WatchdogInterval is how often to ping: half of WATCHDOG_USEC, as
// sd_watchdog_enabled(3) recommends, or 0 when systemd expects no pings.
func WatchdogInterval() (time.Duration, error) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("read WATCHDOG_USEC: %w", err)
	}
	return d / 2, nil
}

// Watchdog pings WATCHDOG=1 every WatchdogInterval until ctx ends. Before
// each ping it asks healthy (may be nil); an unhealthy agent is not pinged,
// so systemd kills and restarts it — that is the point of a watchdog. It
// returns at once, with nil, when the watchdog is not enabled.
func Watchdog(ctx context.Context, healthy func() error, log *slog.Logger) error {
	every, err := WatchdogInterval()
	if err != nil || every <= 0 {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pingWatchdog(healthy, log)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func pingWatchdog(healthy func() error, log *slog.Logger) {
	if healthy != nil {
		if err := healthy(); err != nil {
			log.Error("not pinging the systemd watchdog: agent unhealthy", "err", err)
			return
		}
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyWatchdog); err != nil {
		log.Warn("systemd watchdog ping failed", "err", err)
	}
}
