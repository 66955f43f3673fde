package node

import (
	"net/http"
	"net/http/pprof"
)

// adminHandler serves the API of the admin socket plus Go's profiler under
// /debug/pprof/. The profiler is on the socket only (root, this host): it is
// how an operator finds what a node spends its CPU and memory on under a
// reconnect storm or a large fleet (`curl --unix-socket control.sock
// http://x/debug/pprof/profile?seconds=10 > cpu.pprof`), and it must never be
// reachable from the robots' or dashboards' port.
func adminHandler(api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
