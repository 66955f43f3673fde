// Package node assembles one control node: the replicated store, the robot
// gateway, the REST API and metrics behind one HTTP listener. cmd/control and
// the testbench both start nodes through it.
package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/gateway"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/stream"
)

// Node is a running control node.
type Node struct {
	cfg       Config
	log       *slog.Logger
	ca        *pki.CA
	store     *store.Store
	listener  net.Listener
	gateway   *gateway.Gateway
	server    *http.Server
	admin     *http.Server
	adminPath string
	left      chan struct{}
	leftOnce  sync.Once
	// components are the node's long-running parts (gateway loops, engines,
	// servers), started by Start and stopped together.
	components errgroup.Group
	// undo holds what undoes each step of Start, run last step first by
	// Close, or by Start itself when a step fails.
	undo   undoStack
	closed sync.Once
}

// Options are start-time knobs that are not user configuration.
type Options struct {
	Logger *slog.Logger
	// FlushInterval overrides the gateway's presence flush/sweep period.
	FlushInterval time.Duration
	// RolesAdjustment overrides dqlite's role rebalancing period.
	RolesAdjustment time.Duration
	// ReadHeaderTimeout bounds how long a client may take to send its
	// request headers (slowloris); default 10 s.
	ReadHeaderTimeout time.Duration
	// MaxBatch caps events per transaction (benchmarks compare 1 with the
	// default group commit).
	MaxBatch int
	// DiscoveryGrace overrides DefaultDiscoveryGrace (tests).
	DiscoveryGrace time.Duration
}

// Start opens the store (joining the cluster if configured), starts the
// gateway and serves HTTP. It returns once the node is ready for robots.
// When a step fails, the steps before it are undone, last first.
func Start(ctx context.Context, cfg Config, o Options) (_ *Node, err error) {
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
	n := &Node{cfg: cfg, log: log.With("node", cfg.NodeID), left: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = n.undo.run(context.Background())
		}
	}()
	oidc, err := n.loadCredentials(ctx)
	if err != nil {
		return nil, err
	}
	if err := n.listen(); err != nil {
		return nil, err
	}
	if err := n.openStore(ctx, o.RolesAdjustment); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n.admitConnections(reg)
	hub := stream.NewHub(stream.Options{Logger: n.log, Registerer: reg}) // live fleet messages for dashboards (/v1/stream)
	apiServer, err := n.newServers(hub, reg, oidc, o)
	if err != nil {
		return nil, err
	}
	runCtx := n.startComponents()
	if err := n.rotateTicketKeys(runCtx); err != nil {
		return nil, err
	}
	adminLn, err := n.listenAdmin(apiServer)
	if err != nil {
		return nil, err
	}
	n.run(runCtx, n.gateway.Run)
	n.run(runCtx, hub.Run)
	n.run(runCtx, func(ctx context.Context) error {
		return stream.Tail(ctx, n.store, hub, stream.TailOptions{Logger: n.log})
	})
	n.startDeployEngine(runCtx)
	if err := n.startTelemetry(runCtx, reg); err != nil {
		return nil, err
	}
	if cfg.Discovery {
		n.startDiscovery(runCtx, o.DiscoveryGrace)
	}
	if cfg.RetentionInterval > 0 {
		n.startRetention(runCtx, reg)
	}
	n.run(runCtx, n.serveHTTP)
	n.run(runCtx, func(context.Context) error { return n.serveAdmin(adminLn) })
	n.undo.push(n.drain)
	n.log.Info("control node started", "url", n.URL(), "db", cfg.DBAddress, "data_dir", cfg.DataDir, "join", cfg.Join, "admin_socket", n.adminPath)
	return n, nil
}

// loadCredentials loads the fleet CA (none with --insecure) and, when
// configured, the OIDC issuer's keys.
func (n *Node) loadCredentials(ctx context.Context) (auth.JWTVerifier, error) {
	if !n.cfg.Insecure {
		ca, err := loadCA(n.cfg)
		if err != nil {
			return nil, err
		}
		n.ca = ca
	} else {
		n.log.Warn("running --insecure: plain HTTP, robots are not authenticated; never do this outside development")
	}
	if n.cfg.OIDC.Issuer == "" {
		return nil, nil
	}
	oidc, err := auth.NewOIDC(ctx, n.cfg.OIDC)
	if err != nil {
		return nil, err
	}
	return oidc, nil
}

// listen takes the HTTP port first: a second node started on the same
// configuration fails here, before it touches the database.
func (n *Node) listen() error {
	ln, err := net.Listen("tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s for HTTP: %w (is another control node running?)", n.cfg.Listen, err)
	}
	n.listener = ln
	n.undo.push(func(context.Context) error {
		// Already closed by the HTTP server's Shutdown once it served.
		_ = n.listener.Close()
		return nil
	})
	return nil
}

// openStore opens the store, joining the cluster if configured; peers
// speak TLS with node certificates unless --insecure.
func (n *Node) openStore(ctx context.Context, rolesAdjustment time.Duration) error {
	so := n.cfg.storeOptions(n.log, rolesAdjustment)
	if n.ca != nil {
		var err error
		if so.ListenTLS, so.DialTLS, err = peerTLS(n.ca, n.cfg.NodeID, n.cfg.DBAddress); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, so)
	if err != nil {
		return err
	}
	n.store = st
	n.undo.push(func(context.Context) error { return st.Close() })
	return nil
}

// admitConnections puts the HTTP listener behind admission control: a
// reconnect storm waits in the kernel's accept queue beyond
// MaxPendingConnections handshakes and hellos in flight, for at most
// MaxQueueWait, and connections never take the descriptors the database
// needs.
func (n *Node) admitConnections(reg prometheus.Registerer) {
	maxOpen := n.cfg.MaxConnections
	if maxOpen == 0 {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
			maxOpen = admission.ReserveFor(lim.Cur, fdReserve)
		}
	}
	n.listener = admission.NewListener(n.listener, admission.Options{MaxPending: n.cfg.MaxPendingConnections, MaxQueueWait: n.cfg.MaxQueueWait, MaxOpen: maxOpen, Registerer: reg})
}

// fdReserve file descriptors are left to the database (client and raft
// connections), logs and the registry when robots fill the process's limit.
const fdReserve = 512

// startComponents returns the context the node's components run in; the
// undo step it pushes cancels it and waits for every component to return.
func (n *Node) startComponents() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	n.undo.push(func(context.Context) error {
		cancel()
		return n.components.Wait()
	})
	return ctx
}

// run starts a component. A component returns once ctx ends; one that
// fails earlier stops alone (it logs why) and the node goes on without
// it, so its error only comes back from Close.
func (n *Node) run(ctx context.Context, component func(context.Context) error) {
	n.components.Go(func() error {
		if err := component(ctx); err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	})
}

// leave takes this node out of the cluster (`control leave`) and closes
// Left.
func (n *Node) leave(ctx context.Context) error {
	if err := n.store.Leave(ctx); err != nil {
		return err
	}
	n.leftOnce.Do(func() { close(n.left) })
	return nil
}

// URL is the node's base URL (https unless --insecure).
func (n *Node) URL() string {
	if n.ca != nil {
		return "https://" + n.listener.Addr().String()
	}
	return "http://" + n.listener.Addr().String()
}

// Left is closed once the node has left the cluster (`control leave`); the
// process should then Close and exit.
func (n *Node) Left() <-chan struct{} { return n.left }

// CA is the fleet CA this node uses (nil in --insecure mode).
func (n *Node) CA() *pki.CA { return n.ca }

// AdminSocket is the path of the local admin socket.
func (n *Node) AdminSocket() string { return n.adminPath }

// Store is the node's store handle.
func (n *Node) Store() *store.Store { return n.store }

// Gateway is the node's robot gateway.
func (n *Node) Gateway() *gateway.Gateway { return n.gateway }

// Config is the effective configuration.
func (n *Node) Config() Config { return n.cfg }

// Close stops the node gracefully: robots are told to go elsewhere, their
// disconnections are recorded, HTTP drains, the components stop, and the
// dqlite node leaves after handing over leadership.
func (n *Node) Close(ctx context.Context) error {
	var err error
	n.closed.Do(func() {
		err = n.undo.run(ctx)
		n.log.Info("control node stopped")
	})
	return err
}
