// Package node assembles one control node: the replicated store, the robot
// gateway, the REST API and metrics behind one HTTP listener. cmd/control and
// the testbench both start nodes through it.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/gateway"
	"github.com/lekiwi/heartbeat/control/store"
)

// Node is a running control node.
type Node struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	gateway  *gateway.Gateway
	server   *http.Server
	listener net.Listener
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   sync.Once
}

// Options are start-time knobs that are not user configuration.
type Options struct {
	Logger *slog.Logger
	// FlushInterval overrides the gateway's presence flush/sweep period.
	FlushInterval time.Duration
	// RolesAdjustment overrides dqlite's role rebalancing period.
	RolesAdjustment time.Duration
}

// Start opens the store (joining the cluster if configured), starts the
// gateway and serves HTTP. It returns once the node is ready for robots.
func Start(ctx context.Context, cfg Config, o Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid control configuration: %w", err)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = cfg.DBAddress
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.NodeID)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for HTTP: %w (is another control node running?)", cfg.Listen, err)
	}
	st, err := store.Open(ctx, store.Options{Dir: cfg.DataDir, Address: cfg.DBAddress, Join: cfg.Join, Logger: log, RolesAdjustment: o.RolesAdjustment})
	if err != nil {
		ln.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gw, err := gateway.New(st, gateway.Config{
		NodeID: cfg.NodeID, HeartbeatInterval: cfg.HeartbeatInterval, OfflineGrace: cfg.OfflineGrace,
		FlushInterval: o.FlushInterval, Logger: log, Registerer: reg,
	})
	if err != nil {
		st.Close()
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/agent", gw)
	api.New(st, api.Options{Logger: log, Registerer: reg, Gatherer: reg}).Register(mux)
	runCtx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, log: log, store: st, gateway: gw, listener: ln, cancel: cancel,
		server: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)},
	}
	n.wg.Add(2)
	go func() { defer n.wg.Done(); _ = gw.Run(runCtx) }()
	go func() {
		defer n.wg.Done()
		if err := n.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "err", err)
		}
	}()
	log.Info("control node started", "http", n.URL(), "db", cfg.DBAddress, "data_dir", cfg.DataDir, "join", cfg.Join)
	return n, nil
}

// URL is the node's HTTP base URL.
func (n *Node) URL() string { return "http://" + n.listener.Addr().String() }

// Store is the node's store handle.
func (n *Node) Store() *store.Store { return n.store }

// Gateway is the node's robot gateway.
func (n *Node) Gateway() *gateway.Gateway { return n.gateway }

// Config is the effective configuration.
func (n *Node) Config() Config { return n.cfg }

// Close stops the node gracefully: robots are told to go elsewhere, their
// disconnections are recorded, HTTP drains, and the dqlite node leaves after
// handing over leadership.
func (n *Node) Close(ctx context.Context) error {
	var err error
	n.closed.Do(func() {
		n.gateway.Shutdown(ctx)
		serr := n.server.Shutdown(ctx)
		if errors.Is(serr, context.DeadlineExceeded) {
			serr = n.server.Close()
		}
		n.cancel()
		n.wg.Wait()
		err = errors.Join(serr, n.store.Close())
		n.log.Info("control node stopped")
	})
	return err
}
