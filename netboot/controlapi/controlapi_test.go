package controlapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Answers map to what the station must do: retry later (Unreachable) or
// act on a refusal; a success decodes.
func TestAnswersClassified(t *testing.T) {
	status := http.StatusCreated
	body := `{"robot_id":"lekiwi-d83add01","token":"lke_x","ca":"PEM"}`
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req protocol.FactoryRobotRequest
		if r.URL.Path != protocol.FactoryRobotsPath || json.NewDecoder(r.Body).Decode(&req) != nil || req.Serial != "d83add01" {
			http.Error(w, "bad request", 400)
			return
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	defer srv.Close()
	c, err := NewWithTLS(srv.URL, srv.Client().Transport.(*http.Transport).TLSClientConfig, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	got, err := c.RequestRobot(ctx, "d83add01", "lekiwi")
	if err != nil || got.RobotID != "lekiwi-d83add01" || got.Token != "lke_x" {
		t.Fatalf("success: %+v %v", got, err)
	}
	for _, tc := range []struct {
		status      int
		body        string
		unreachable bool
		code        string
	}{
		{503, `{"error":{"code":"unavailable","message":"fenced"}}`, true, ""},
		{429, `{"error":{"code":"rate_limited","message":"slow down"}}`, true, ""},
		{409, `{"error":{"code":"enrolled","message":"revoke it first"}}`, false, "enrolled"},
		{403, `not json`, false, ""},
	} {
		status, body = tc.status, tc.body
		_, err := c.RequestRobot(ctx, "d83add01", "lekiwi")
		if IsUnreachable(err) != tc.unreachable {
			t.Errorf("%d: unreachable = %v (%v)", tc.status, IsUnreachable(err), err)
		}
		var ref *Refused
		if !tc.unreachable && (!errors.As(err, &ref) || ref.Code != tc.code || ref.Status != tc.status) {
			t.Errorf("%d: %v, want a refusal with code %q", tc.status, err, tc.code)
		}
	}
	srv.Close()
	if _, err := c.RequestRobot(ctx, "d83add01", "lekiwi"); !IsUnreachable(err) {
		t.Fatalf("server gone: %v, want unreachable", err)
	}
	if _, err := NewWithTLS("ftp://x", &tls.Config{}, 0); err == nil {
		t.Fatal("ftp URL accepted")
	}
}
