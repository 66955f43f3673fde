package api

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lekiwi/heartbeat/control/auth"
)

// A fenced node (no database majority) refuses writes at once with a
// message saying what to do, and still answers reads it can.
func TestFencedNodeRefusesWritesAtOnce(t *testing.T) {
	var fenced atomic.Bool
	ta := newTestAPI(t, Options{Fenced: fenced.Load})
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, ta.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+ta.tokens[auth.RoleAdmin])
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("POST", "/v1/tokens", `{"name":"before","role":"operator"}`); code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("unfenced write: %d %s", code, body)
	}
	fenced.Store(true)
	code, body := do("POST", "/v1/tokens", `{"name":"during","role":"operator"}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot reach the cluster majority") {
		t.Fatalf("fenced write: %d %s", code, body)
	}
	if code, body := do("GET", "/v1/robots", ""); code != http.StatusOK {
		t.Fatalf("fenced read: %d %s", code, body)
	}
}
