package daemon

// The live fleet view's parts that run beside the runtime:
// teleoperation detection, the watch of the profile's systemd units and the
// mDNS advertisement. Each is optional (config.Live) and none can stop the
// agent: a part that cannot start is logged and retried with backoff, or
// left off when retrying cannot help (a profile without teleop ports).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/agent/backoff"
	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/mdns"
	"github.com/lekiwi/heartbeat/agent/services"
	"github.com/lekiwi/heartbeat/agent/teleop"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// emitter queues an event durably; *agent.Agent implements it (Emit works
// while disconnected: events wait in the queue).
type emitter interface {
	Emit(ctx context.Context, ev protocol.Event) error
}

// retryPolicy spaces out attempts to start a part that failed (no system
// bus yet, no network address yet at boot): quick at first, then at most
// every five minutes so a robot without systemd logs little.
func retryPolicy() backoff.Policy { return backoff.Policy{Base: time.Second, Cap: 5 * time.Minute} }

// loadProfile finds the profile whose teleop ports and units the agent
// watches: cfg.Profile, else the running image's (image, nil when the
// system has no image.json), else the embedded profile named like the
// robot type.
func loadProfile(cfg config.Config, image *layout.ImageInfo) (*profiles.Profile, error) {
	name, from := cfg.Profile, "profile setting"
	if name == "" && image != nil {
		name, from = image.Profile, cfg.UpdateImageInfo
	}
	if name == "" {
		name, from = string(cfg.RobotType), "robot type"
	}
	p, err := profiles.Load(name)
	if err != nil {
		return nil, fmt.Errorf("load robot profile %q (from the %s): %w (set profile to one of %v)", name, from, err, profiles.Names())
	}
	return p, nil
}

// emitLogged queues ev, logging a failure: a lost teleop or service event
// must not stop the watch that produced it.
func emitLogged(ctx context.Context, em emitter, ev protocol.Event, log *slog.Logger) {
	if err := em.Emit(ctx, ev); err != nil && ctx.Err() == nil {
		log.Error("event not queued", "kind", ev.Kind, "err", err)
	}
}

// teleopEvent is the transition's event with the traffic rates added.
func teleopEvent(tr teleop.Transition) protocol.Event {
	ev := tr.Event()
	s := tr.Session
	if s.RxBytesPerSec <= 0 && s.TxBytesPerSec <= 0 {
		return ev // not measured (-1) or nothing sent
	}
	var d protocol.TeleopData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return ev
	}
	d.RxBytesPerSec, d.TxBytesPerSec = max(s.RxBytesPerSec, 0), max(s.TxBytesPerSec, 0)
	if b, err := json.Marshal(d); err == nil {
		ev.Data = b
	}
	return ev
}

// runTeleop detects teleoperation on the profile's ports until ctx ends.
// A failed poll is logged when its error differs from the last one, so a
// persistently unreadable table logs once.
func runTeleop(ctx context.Context, tcfg teleop.Config, interval time.Duration, em emitter, log *slog.Logger) {
	if len(tcfg.Ports) == 0 {
		log.Info("teleoperation detection off: the profile names no teleop ports")
		return
	}
	d, err := teleop.New(tcfg)
	if err != nil {
		log.Error("teleoperation detection off", "err", err)
		return
	}
	defer d.Close()
	log.Info("teleoperation detection on", "ports", tcfg.Ports, "interval", interval)
	lastErr := ""
	_ = d.Run(ctx, interval, func(tr teleop.Transition) {
		lastErr = ""
		ev := teleopEvent(tr)
		log.Info(ev.Message, "kind", ev.Kind)
		emitLogged(ctx, em, ev, log)
	}, func(err error) {
		if msg := err.Error(); msg != lastErr {
			lastErr = msg
			log.Warn("teleoperation poll failed; retrying every interval", "err", err)
		}
	})
}

// systemdConn is a connection to systemd the watch can close; *services.DBus.
type systemdConn interface {
	services.Systemd
	Close() error
}

// dialSystemd connects to the real systemd.
func dialSystemd(ctx context.Context) (systemdConn, error) { return services.DialSystem(ctx) }

// runServices watches units through connections from dial until ctx ends,
// dialling again with backoff whenever the bus connection is lost or
// cannot be made. A watch that ran a minute resets the backoff.
func runServices(ctx context.Context, units []string, dial func(context.Context) (systemdConn, error), em emitter, log *slog.Logger) {
	if len(units) == 0 {
		log.Info("service watch off: the profile names no units")
		return
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	attempt := 0
	for ctx.Err() == nil {
		started := time.Now()
		err := watchOnce(ctx, units, dial, em, log)
		if ctx.Err() != nil {
			return
		}
		var cfgErr configError
		if errors.As(err, &cfgErr) {
			log.Error("service watch off", "err", err)
			return
		}
		if time.Since(started) > time.Minute {
			attempt = 0
		}
		delay := retryPolicy().Delay(attempt, rng)
		lvl := slog.LevelWarn
		if attempt > 0 {
			lvl = slog.LevelDebug // the first failure says it; repeats would fill the journal
		}
		log.Log(ctx, lvl, "service watch stopped; reconnecting to systemd", "err", err, "attempt", attempt+1, "delay", delay.Round(time.Millisecond))
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// configError marks a failure retrying cannot fix.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func watchOnce(ctx context.Context, units []string, dial func(context.Context) (systemdConn, error), em emitter, log *slog.Logger) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	sd, err := dial(dctx)
	cancel()
	if err != nil {
		return err
	}
	defer sd.Close()
	w, err := services.New(sd, services.Config{Units: units})
	if err != nil {
		return configError{err}
	}
	log.Info("service watch on", "units", units)
	err = w.Run(ctx, func(c services.Change) {
		ev := c.Event()
		log.Info(ev.Message, "kind", ev.Kind, "unit", c.New.Unit)
		emitLogged(ctx, em, ev, log)
	})
	if err == nil && ctx.Err() == nil {
		err = errors.New("watch ended")
	}
	return err
}

// runMDNS advertises the robot until ctx ends. New fails while no
// interface has an IPv4 address (the agent may start before the network);
// it is retried with backoff.
func runMDNS(ctx context.Context, mcfg mdns.Config, log *slog.Logger) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x6d646e73))
	for attempt := 0; ctx.Err() == nil; attempt++ {
		adv, err := mdns.New(mcfg)
		if err == nil {
			log.Info("mDNS advertisement on", "service", mdns.ServiceType(mcfg.Type), "port", mcfg.Port)
			started := time.Now()
			err = adv.Run(ctx)
			if ctx.Err() != nil {
				return
			}
			if time.Since(started) > time.Minute {
				attempt = 0
			}
			if err == nil {
				err = errors.New("advertiser stopped")
			}
		}
		delay := retryPolicy().Delay(attempt, rng)
		lvl := slog.LevelWarn
		if attempt > 0 {
			lvl = slog.LevelDebug
		}
		log.Log(ctx, lvl, "mDNS advertisement not running; retrying", "err", err, "attempt", attempt+1, "delay", delay.Round(time.Millisecond))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// osVersion is the OS name the TXT record carries, from <etc>/os-release.
func osVersion(etc string) string {
	b, err := os.ReadFile(filepath.Join(etc, "os-release"))
	if err != nil {
		return ""
	}
	return collect.PrettyOSName(collect.ParseOSRelease(b))
}

// liveComponents are the parts cfg enables, each emitting through em until
// its ctx ends. None returns an error: a part that fails is logged and
// retried or left off, and the agent runs on.
func liveComponents(cfg config.Config, image *layout.ImageInfo, version string, em emitter, log *slog.Logger) []func(ctx context.Context) error {
	var parts []func(ctx context.Context) error
	var prof *profiles.Profile
	if cfg.TeleopEnabled || cfg.ServicesEnabled {
		var err error
		if prof, err = loadProfile(cfg, image); err != nil {
			log.Error("teleoperation detection and service watch off", "err", err)
		}
	}
	// teleop: established connections on the profile's teleop ports become
	// teleop.started / teleop.stopped events.
	if cfg.TeleopEnabled && prof != nil {
		tcfg := teleop.FromProfile(prof.Teleop)
		tcfg.Proc = cfg.Roots.Proc
		tlog := log.With("component", "teleop")
		parts = append(parts, func(ctx context.Context) error {
			runTeleop(ctx, tcfg, cfg.TeleopInterval, em, tlog)
			return nil
		})
	}
	// services: the profile's systemd units over D-Bus become
	// service.changed events; a lost bus is dialled again.
	if cfg.ServicesEnabled && prof != nil {
		units := services.UnitsFromProfile(prof.Services)
		svlog := log.With("component", "services")
		parts = append(parts, func(ctx context.Context) error {
			runServices(ctx, units, dialSystemd, em, svlog)
			return nil
		})
	}
	// mdns: advertise _lekiwi._tcp / _xle._tcp so control (and Avahi)
	// find robots on the network that are not connected.
	if cfg.MDNSEnabled {
		mlog := log.With("component", "mdns")
		mcfg := mdns.Config{RobotID: cfg.RobotID, Type: cfg.RobotType, AgentVersion: version,
			OSVersion: osVersion(cfg.Roots.Etc), Port: cfg.MDNSPort, Logger: mlog}
		parts = append(parts, func(ctx context.Context) error {
			runMDNS(ctx, mcfg, mlog)
			return nil
		})
	}
	return parts
}
