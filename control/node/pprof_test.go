package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The profiler answers on the admin socket and nowhere on the public port.
func TestProfilerOnlyOnAdminSocket(t *testing.T) {
	n := startTestNode(t, nil)
	sock := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", n.AdminSocket())
		},
	}}
	get := func(c *http.Client, url string) (int, string) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(sock, "http://admin/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Fatalf("admin socket /debug/pprof/goroutine: %d %.200s", code, body)
	}
	if code, body := get(sock, "http://admin/v1/robots"); code != http.StatusOK {
		t.Fatalf("admin socket API behind the profiler mux: %d %.200s", code, body)
	}
	if code, _ := get(http.DefaultClient, n.URL()+"/debug/pprof/goroutine?debug=1"); code == http.StatusOK {
		t.Fatalf("public port serves the profiler (status %d)", code)
	}
}
