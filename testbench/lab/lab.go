package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/pki"
)

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// FreeNodeAddrs returns a free loopback address for a control node's
// listener and another for its database.
func FreeNodeAddrs() (listen, db string, err error) {
	if listen, err = FreeAddr(); err != nil {
		return "", "", err
	}
	if db, err = FreeAddr(); err != nil {
		return "", "", err
	}
	return listen, db, nil
}

// ControlOptions describe a control node for a lab.
type ControlOptions struct {
	Dir               string // data directory (required)
	Listen, DBAddress string // empty: a free loopback port
	Join              []string
	HeartbeatInterval time.Duration // default 1 s: labs compress time
	OfflineGrace      time.Duration // default 500 ms
	FlushInterval     time.Duration // default: the gateway's
	Logger            *slog.Logger  // default: discard
	// CADir is the fleet CA; empty with Insecure false means Dir/../ca,
	// created on first use (labs run mTLS like production).
	CADir    string
	Insecure bool
	// RobotCertLifetime overrides the 90-day default (renewal tests).
	RobotCertLifetime time.Duration
	// ReadHeaderTimeout overrides the node's (slowloris tests).
	ReadHeaderTimeout time.Duration
	// MaxBatch caps events per transaction (0: the gateway's default).
	MaxBatch int
	// RateLimit overrides the API's requests per second per principal
	// (benchmarks that poll faster than a dashboard would).
	RateLimit float64
}

// LabCA loads the CA in dir, creating it on first use.
func LabCA(dir string) (*pki.CA, error) {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return pki.Load(dir, nil)
	}
	// Backdated a week so labs can make certificates that have already
	// expired.
	weekAgo := time.Now().Add(-7 * 24 * time.Hour)
	ca, err := pki.Create(pki.CreateOptions{Name: "Lekiwi lab CA", KeyType: pki.KeyECDSAP256, Now: func() time.Time { return weekAgo }})
	if err != nil {
		return nil, err
	}
	if err := ca.Save(dir, nil); err != nil {
		return nil, err
	}
	return ca, nil
}

// StartControl starts a control node on loopback.
func StartControl(ctx context.Context, o ControlOptions) (*node.Node, error) {
	var err error
	if o.Listen == "" {
		if o.Listen, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	if o.DBAddress == "" {
		if o.DBAddress, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = time.Second
	}
	if o.OfflineGrace == 0 {
		o.OfflineGrace = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg := node.Defaults()
	cfg.DataDir, cfg.Listen, cfg.DBAddress, cfg.Join = o.Dir, o.Listen, o.DBAddress, o.Join
	cfg.Discovery = false // lab nodes do not browse the host's LAN over mDNS
	cfg.HeartbeatInterval, cfg.OfflineGrace = o.HeartbeatInterval, o.OfflineGrace
	if o.RateLimit > 0 {
		cfg.RateLimit = o.RateLimit
	}
	cfg.Insecure = o.Insecure
	if o.RobotCertLifetime > 0 {
		cfg.RobotCertLifetime = o.RobotCertLifetime
	}
	if !o.Insecure {
		cfg.CADir = o.CADir
		if cfg.CADir == "" {
			cfg.CADir = filepath.Join(filepath.Dir(o.Dir), "ca")
		}
		if _, err := LabCA(cfg.CADir); err != nil {
			return nil, err
		}
	}
	return node.Start(ctx, cfg, node.Options{Logger: o.Logger, FlushInterval: o.FlushInterval, RolesAdjustment: 500 * time.Millisecond, ReadHeaderTimeout: o.ReadHeaderTimeout, MaxBatch: o.MaxBatch})
}
