package node

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/control/admin"
)

// The profiler answers on the admin socket and nowhere on the public port.
func TestProfilerOnlyOnAdminSocket(t *testing.T) {
	n := startTestNode(t, nil)
	ctx := context.Background()
	sock := admin.New(n.AdminSocket())
	var body bytes.Buffer
	if err := sock.Stream(ctx, "/debug/pprof/goroutine?debug=1", &body); err != nil || !strings.Contains(body.String(), "goroutine profile:") {
		t.Fatalf("admin socket /debug/pprof/goroutine: %v %.200s", err, body.String())
	}
	if err := sock.Do(ctx, "GET", "/v1/robots", nil, nil); err != nil {
		t.Fatalf("admin socket API behind the profiler mux: %v", err)
	}
	resp, err := http.Get(n.URL() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("public port serves the profiler (status %d)", resp.StatusCode)
	}
}
