package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// A node cut off from the cluster's majority can neither store what its
// robots send nor refresh their presence, while the majority side sweeps
// them offline. Holding such sessions hides robots that could be served
// elsewhere, so the gateway fences itself: once the store has failed to
// answer for ShedAfter, every session is closed with "try again later"
// (agents then dial the next control endpoint in their list) and new
// connections are refused until the store answers again.

// watchStore probes the store every StoreProbeInterval and fences or
// unfences the gateway.
func (g *Gateway) watchStore(ctx context.Context) {
	t := time.NewTicker(g.cfg.StoreProbeInterval)
	defer t.Stop()
	var failingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, g.cfg.StoreProbeInterval*2)
		err := g.store.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err == nil {
			failingSince = time.Time{}
			if g.fenced.Swap(false) {
				g.metrics.fenced.Set(0)
				g.log.Info("database reachable again: accepting robots")
			}
			continue
		}
		if failingSince.IsZero() {
			failingSince = now
		}
		if now.Sub(failingSince) >= g.cfg.ShedAfter && !g.fenced.Swap(true) {
			g.metrics.fenced.Set(1)
			sessions := g.snapshot()
			g.log.Error("database unreachable (no majority of the cluster from here?): sending robots to other control nodes",
				"for", now.Sub(failingSince).Round(time.Millisecond), "sessions", len(sessions), "err", err)
			for _, s := range sessions {
				s.close(protocol.CloseTryAgainLater, "control node cannot reach the cluster majority; connect to another node")
			}
		}
	}
}

// refuseFenced answers a new robot connection while fenced. It reports
// whether it did.
func (g *Gateway) refuseFenced(w http.ResponseWriter) bool {
	if !g.fenced.Load() {
		return false
	}
	w.Header().Set("Retry-After", "5")
	http.Error(w, "control node cannot reach the cluster majority; connect to another node", http.StatusServiceUnavailable)
	return true
}

// Fenced reports whether the gateway is fenced (database unreachable).
func (g *Gateway) Fenced() bool { return g.fenced.Load() }
