package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
)

// Witness is a dqlite voter with no gateway and no API: the third vote a
// pair of control nodes needs for a quorum. It is small enough to run on
// the netboot station.
type Witness struct {
	store *store.Store
	log   *slog.Logger
}

// StartWitness joins the cluster as a member. Only DataDir, DBAddress, DBNetworkLatency,
// Join, CADir/CAPassphraseFile (or Insecure) and NodeID of cfg are used.
func StartWitness(ctx context.Context, cfg Config, o Options) (*Witness, error) {
	if len(cfg.Join) == 0 {
		return nil, errors.New("a witness joins an existing cluster: give --join with a control node's db address")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid witness configuration: %w", err)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "witness-" + cfg.DBAddress
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.NodeID, "role", "witness")
	so := cfg.storeOptions(log, o.RolesAdjustment)
	if !cfg.Insecure {
		ca, err := loadCA(cfg)
		if err != nil {
			return nil, err
		}
		if so.ListenTLS, so.DialTLS, err = peerTLS(ca, cfg.NodeID, cfg.DBAddress); err != nil {
			return nil, err
		}
	}
	st, err := store.Open(ctx, so)
	if err != nil {
		return nil, err
	}
	log.Info("witness joined", "db", cfg.DBAddress, "join", cfg.Join)
	return &Witness{store: st, log: log}, nil
}

// Store is the witness's store handle (tests inspect membership).
func (w *Witness) Store() *store.Store { return w.store }

// Close hands leadership over if held and stops the member.
func (w *Witness) Close() error { return w.store.Close() }

// loadCA reads the fleet CA named by cfg.
func loadCA(cfg Config) (*pki.CA, error) {
	var pass []byte
	if cfg.CAPassphraseFile != "" {
		b, err := os.ReadFile(cfg.CAPassphraseFile)
		if err != nil {
			return nil, fmt.Errorf("read CA passphrase: %w", err)
		}
		pass = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	return pki.Load(cfg.CADir, pass)
}
