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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/gateway"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/registry"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/stream"
	"github.com/lekiwi/heartbeat/control/web"
	"github.com/lekiwi/heartbeat/protocol"
)

// Node is a running control node.
type Node struct {
	cfg       Config
	log       *slog.Logger
	store     *store.Store
	gateway   *gateway.Gateway
	server    *http.Server
	listener  net.Listener
	admin     *http.Server
	adminPath string
	ca        *pki.CA
	left      chan struct{}
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closed    sync.Once
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
	var ca *pki.CA
	if !cfg.Insecure {
		var err error
		if ca, err = loadCA(cfg); err != nil {
			return nil, err
		}
	} else {
		log.Warn("running --insecure: plain HTTP, robots are not authenticated; never do this outside development")
	}
	var oidcVerifier auth.JWTVerifier
	if cfg.OIDC.Issuer != "" {
		v, err := auth.NewOIDC(ctx, cfg.OIDC)
		if err != nil {
			return nil, err
		}
		oidcVerifier = v
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for HTTP: %w (is another control node running?)", cfg.Listen, err)
	}
	storeOpts := cfg.storeOptions(log, o.RolesAdjustment)
	if ca != nil {
		if storeOpts.ListenTLS, storeOpts.DialTLS, err = peerTLS(ca, cfg.NodeID, cfg.DBAddress); err != nil {
			ln.Close()
			return nil, err
		}
	}
	st, err := store.Open(ctx, storeOpts)
	if err != nil {
		ln.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Issue 10: a reconnect storm waits in the kernel's accept queue beyond
	// MaxPendingConnections handshakes and hellos in flight, for at most
	// MaxQueueWait.
	// Connections never take the descriptors the database needs.
	maxOpen := cfg.MaxConnections
	if maxOpen == 0 {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
			maxOpen = admission.ReserveFor(lim.Cur, fdReserve)
		}
	}
	ln = admission.NewListener(ln, admission.Options{MaxPending: cfg.MaxPendingConnections, MaxQueueWait: cfg.MaxQueueWait, MaxOpen: maxOpen, Registerer: reg})
	var leave func(context.Context) error
	fail := func(err error) (*Node, error) {
		st.Close()
		ln.Close()
		return nil, err
	}
	// Issue 9: live fleet messages for dashboards (/v1/stream).
	hub := stream.NewHub(stream.Options{Logger: log, Registerer: reg})
	gw, err := gateway.New(st, gateway.Config{
		NodeID: cfg.NodeID, HeartbeatInterval: cfg.HeartbeatInterval, OfflineGrace: cfg.OfflineGrace,
		FlushInterval: o.FlushInterval, Logger: log, Registerer: reg, CA: ca, RobotCertLifetime: cfg.RobotCertLifetime, MaxBatch: o.MaxBatch,
		OnHeartbeat: func(robotID string, at time.Time, hb protocol.Heartbeat) {
			// No work for each heartbeat when nobody watches; and none on
			// this robot's reader (its ack waits) when someone does.
			if hub.Clients() > 0 {
				hub.PublishLater(func() stream.Message { return stream.HeartbeatMessage(robotID, cfg.NodeID, at, hb) })
			}
		},
	})
	if err != nil {
		return fail(err)
	}
	authn := &auth.Authenticator{Tokens: st, OIDC: oidcVerifier}
	if ca != nil {
		// Netboot stations call the factory routes with their node certificate.
		authn.Nodes = ca.VerifyNode
	}
	apiServer, err := api.New(st, api.Options{
		Logger: log, Registerer: reg, Gatherer: reg, CA: ca,
		Auth:              authn,
		RobotCertLifetime: cfg.RobotCertLifetime, EnrollmentTTL: cfg.EnrollmentTTL,
		RateLimit: rate.Limit(cfg.RateLimit), RateBurst: int(2 * cfg.RateLimit),
		Revoked: func(id string) { gw.CloseRobot(id, "robot identity revoked") },
		Leave:   func(ctx context.Context) error { return leave(ctx) },
		Fenced:  gw.Fenced,
	})
	if err != nil {
		return fail(err)
	}
	leftCh := make(chan struct{})
	var leaveOnce sync.Once
	leave = func(ctx context.Context) error {
		if err := st.Leave(ctx); err != nil {
			return err
		}
		leaveOnce.Do(func() { close(leftCh) })
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/agent", gw)
	mux.Handle("GET /v1/stream", streamHandler(apiServer, hub))
	apiServer.Register(mux)
	// Issue 9: the web dashboard (control/web) answers every path the API,
	// agent, stream and registry routes leave.
	dashboard, err := web.New()
	if err != nil {
		return fail(err)
	}
	mux.Handle("/", dashboard)
	if regDir := cfg.RegistryDir; regDir != "off" {
		if regDir == "" {
			regDir = filepath.Join(cfg.DataDir, "registry")
		}
		images, err := registry.New(regDir, registry.Options{Logger: log})
		if err != nil {
			return fail(err)
		}
		// Robots (client certificate) and any token may pull; pushing
		// needs the engineer or admin role.
		mux.Handle("/v2/", apiServer.Protect(images, auth.PermRead, auth.PermDeploy))
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	server := &http.Server{
		// Robots are admitted by the gateway after hello; any other
		// request is admitted on arrival.
		Handler:           admitAPIRequests(mux),
		ConnContext:       admission.ConnContext,
		ReadHeaderTimeout: o.ReadHeaderTimeout, // slowloris
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if ca != nil {
		sc, err := newServingCert(ca, cfg.NodeID, cfg.Listen, cfg.TLSNames)
		if err != nil {
			return fail(err)
		}
		server.TLSConfig = tlsConfig(sc, gw.VerifyConnection)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	if server.TLSConfig != nil {
		if err := rotateTicketKeys(runCtx, server.TLSConfig, ca, log); err != nil {
			cancel()
			return fail(err)
		}
	}
	adminPath := cfg.AdminSocket
	if adminPath == "" {
		adminPath = filepath.Join(cfg.DataDir, "control.sock")
	}
	adminLn, err := listenAdmin(adminPath)
	if err != nil {
		cancel()
		return fail(err)
	}
	admin := &http.Server{Handler: adminHandler(apiServer.LocalHandler()), ReadHeaderTimeout: 10 * time.Second}
	n := &Node{
		cfg: cfg, log: log, store: st, gateway: gw, listener: ln, cancel: cancel, server: server,
		admin: admin, adminPath: adminPath, ca: ca, left: leftCh,
	}
	n.wg.Add(3)
	go func() { defer n.wg.Done(); _ = gw.Run(runCtx) }()
	n.wg.Add(2)
	go func() { defer n.wg.Done(); _ = hub.Run(runCtx) }()
	go func() {
		defer n.wg.Done()
		_ = stream.Tail(runCtx, st, hub, stream.TailOptions{Logger: log})
	}()
	n.startDeployEngine(runCtx) // issue 8: deployment engine, leader only (deploy.go)
	// Issue 9: telemetry history and alert rules, leader only (telemetry.go).
	if err := n.startTelemetry(runCtx, gw.Submit, reg); err != nil {
		cancel()
		adminLn.Close()
		return fail(err)
	}
	// Issue 9: robots on the network but not connected (discovery.go).
	if cfg.Discovery {
		n.startDiscovery(runCtx, gw.Submit, o.DiscoveryGrace)
	}
	if cfg.RetentionInterval > 0 {
		r := newRetention(st, gw.Submit, cfg.RetentionInterval, log.With("component", "retention"), reg)
		n.wg.Add(1)
		go func() { defer n.wg.Done(); r.loop(runCtx) }()
	}
	go func() {
		defer n.wg.Done()
		var err error
		if server.TLSConfig != nil {
			err = server.ServeTLS(ln, "", "")
		} else {
			err = server.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "err", err)
		}
	}()
	go func() {
		defer n.wg.Done()
		if err := admin.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin socket server stopped", "err", err)
		}
	}()
	log.Info("control node started", "url", n.URL(), "db", cfg.DBAddress, "data_dir", cfg.DataDir, "join", cfg.Join, "admin_socket", adminPath)
	return n, nil
}

// streamHandler serves /v1/stream to bearer tokens with read permission.
// Robots may pull images with their client certificate, but must not watch
// the fleet: the certificate is hidden from the check, so only a token opens
// the stream.
func streamHandler(apiServer *api.Server, hub *stream.Hub) http.Handler {
	protected := apiServer.Protect(hub, auth.PermRead, auth.PermAdmin)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Issue 9 (web dashboard): a browser's WebSocket carries its token
		// as a subprotocol; move it into the Authorization header.
		if r.Header.Get("Authorization") == "" {
			if token, rest, ok := stream.TokenFromSubprotocols(r.Header); ok {
				r = r.Clone(r.Context())
				r.Header.Set("Authorization", "Bearer "+token)
				r.Header.Del("Sec-WebSocket-Protocol")
				if len(rest) > 0 {
					r.Header.Set("Sec-WebSocket-Protocol", strings.Join(rest, ", "))
				}
			}
		}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			state := *r.TLS
			state.PeerCertificates, state.VerifiedChains = nil, nil
			r = r.Clone(r.Context())
			r.TLS = &state
		}
		protected.ServeHTTP(w, r)
	})
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

// listenAdmin opens the local admin socket, readable and writable by its
// owner only: whoever can open it administers the fleet.
func listenAdmin(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s is in use: is another control node running from this data directory?", path)
	}
	_ = os.Remove(path) // stale socket of a node that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return ln, nil
}

// fdReserve file descriptors are left to the database (client and raft
// connections), logs and the registry when robots fill the process's limit.
const fdReserve = 512

// admitAPIRequests admits the connection of every request but a robot's
// (control/admission): the gateway admits those once hello is recorded.
func admitAPIRequests(next http.Handler) http.Handler {
	api := admission.AdmitRequests(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/agent" {
			next.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

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
		// Graceful: the request that asked this node to leave (over the
		// admin socket) is still writing its answer when Close starts.
		if aerr := n.admin.Shutdown(ctx); aerr != nil {
			_ = n.admin.Close()
		}
		n.cancel()
		n.wg.Wait()
		err = errors.Join(serr, n.store.Close())
		n.log.Info("control node stopped")
	})
	return err
}
