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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/gateway"
	"github.com/lekiwi/heartbeat/control/registry"
	"github.com/lekiwi/heartbeat/control/stream"
	"github.com/lekiwi/heartbeat/control/web"
	"github.com/lekiwi/heartbeat/protocol"
)

// newServers builds the robot gateway, the REST API and the HTTP server
// that carries them with the stream, the dashboard and the image registry.
// Nothing runs yet.
func (n *Node) newServers(hub *stream.Hub, reg *prometheus.Registry, oidc auth.JWTVerifier, o Options) (*api.Server, error) {
	cfg := n.cfg
	gw, err := gateway.New(n.store, gateway.Config{
		NodeID: cfg.NodeID, HeartbeatInterval: cfg.HeartbeatInterval, OfflineGrace: cfg.OfflineGrace,
		FlushInterval: o.FlushInterval, Logger: n.log, Registerer: reg, CA: n.ca, RobotCertLifetime: cfg.RobotCertLifetime, MaxBatch: o.MaxBatch,
		OnHeartbeat: func(robotID string, at time.Time, hb protocol.Heartbeat) {
			// No work for each heartbeat when nobody watches; and none on
			// this robot's reader (its ack waits) when someone does.
			if hub.Clients() > 0 {
				hub.PublishLater(func() stream.Message { return stream.HeartbeatMessage(robotID, cfg.NodeID, at, hb) })
			}
		},
	})
	if err != nil {
		return nil, err
	}
	n.gateway = gw
	authn := &auth.Authenticator{Tokens: n.store, OIDC: oidc}
	if n.ca != nil {
		// Netboot stations call the factory routes with their node certificate.
		authn.Nodes = n.ca.VerifyNode
	}
	apiServer, err := api.New(n.store, api.Options{
		Logger: n.log, Registerer: reg, Gatherer: reg, CA: n.ca,
		Auth:              authn,
		RobotCertLifetime: cfg.RobotCertLifetime, EnrollmentTTL: cfg.EnrollmentTTL,
		RateLimit: rate.Limit(cfg.RateLimit), RateBurst: int(2 * cfg.RateLimit),
		Revoked: func(id string) { gw.CloseRobot(id, "robot identity revoked") },
		Leave:   n.leave,
		Fenced:  gw.Fenced,
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/agent", gw)
	mux.Handle("GET /v1/stream", streamHandler(apiServer, hub))
	apiServer.Register(mux)
	// The web dashboard answers every path the API, agent, stream and
	// registry routes leave.
	dashboard, err := web.New()
	if err != nil {
		return nil, err
	}
	mux.Handle("/", dashboard)
	if regDir := cfg.RegistryDir; regDir != "off" {
		if regDir == "" {
			regDir = filepath.Join(cfg.DataDir, "registry")
		}
		images, err := registry.New(regDir, registry.Options{Logger: n.log})
		if err != nil {
			return nil, err
		}
		// Robots (client certificate) and any token may pull; pushing
		// needs the engineer or admin role.
		mux.Handle("/v2/", apiServer.Protect(images, auth.PermRead, auth.PermDeploy))
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	n.server = &http.Server{
		// Robots are admitted by the gateway after hello; any other
		// request is admitted on arrival.
		Handler:           admitAPIRequests(mux),
		ConnContext:       admission.ConnContext,
		ReadHeaderTimeout: o.ReadHeaderTimeout, // slowloris
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	if n.ca != nil {
		sc, err := newServingCert(n.ca, cfg.NodeID, cfg.Listen, cfg.TLSNames)
		if err != nil {
			return nil, err
		}
		n.server.TLSConfig = tlsConfig(sc, gw.VerifyConnection)
	}
	return apiServer, nil
}

// listenAdmin opens the local admin socket and builds its server.
func (n *Node) listenAdmin(apiServer *api.Server) (net.Listener, error) {
	n.adminPath = n.cfg.AdminSocket
	if n.adminPath == "" {
		n.adminPath = filepath.Join(n.cfg.DataDir, "control.sock")
	}
	ln, err := openAdminSocket(n.adminPath)
	if err != nil {
		return nil, err
	}
	n.undo.push(func(context.Context) error {
		// Already closed by the admin server's Shutdown once it served.
		_ = ln.Close()
		return nil
	})
	n.admin = &http.Server{Handler: adminHandler(apiServer.LocalHandler()), ReadHeaderTimeout: 10 * time.Second}
	return ln, nil
}

// serveHTTP serves robots, the API and the dashboard until drain shuts the
// server down. A server that fails is logged; the node stays up for Close.
func (n *Node) serveHTTP(context.Context) error {
	var err error
	if n.server.TLSConfig != nil {
		err = n.server.ServeTLS(n.listener, "", "")
	} else {
		err = n.server.Serve(n.listener)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		n.log.Error("HTTP server stopped", "err", err)
	}
	return nil
}

// serveAdmin serves the admin socket until drain shuts it down.
func (n *Node) serveAdmin(ln net.Listener) error {
	if err := n.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		n.log.Error("admin socket server stopped", "err", err)
	}
	return nil
}

// drain undoes serving, first thing on Close: robots are told to go
// elsewhere and their disconnections recorded (the store is still open),
// then HTTP drains, then the admin socket.
func (n *Node) drain(ctx context.Context) error {
	n.gateway.Shutdown(ctx)
	err := n.server.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = n.server.Close()
	}
	// Graceful: the request that asked this node to leave (over the
	// admin socket) is still writing its answer when Close starts.
	if aerr := n.admin.Shutdown(ctx); aerr != nil {
		_ = n.admin.Close()
	}
	return err
}

// streamHandler serves /v1/stream to bearer tokens with read permission.
// Robots may pull images with their client certificate, but must not watch
// the fleet: the certificate is hidden from the check, so only a token opens
// the stream.
func streamHandler(apiServer *api.Server, hub *stream.Hub) http.Handler {
	protected := apiServer.Protect(hub, auth.PermRead, auth.PermAdmin)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The web dashboard's WebSocket carries its token as a
		// subprotocol (browsers cannot set headers on one); move it into
		// the Authorization header.
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

// openAdminSocket opens the local admin socket, readable and writable by its
// owner only: whoever can open it administers the fleet.
func openAdminSocket(path string) (net.Listener, error) {
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
