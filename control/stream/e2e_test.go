//go:build libsqlite3

package stream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestStreamEndToEnd runs a real control node (dqlite store, gateway, API)
// in-process, connects a robot to /v1/agent and a dashboard to /v1/stream,
// and checks that the robot's live heartbeat and its committed teleop event
// reach the dashboard, and that the stream needs a token.
func TestStreamEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := node.Defaults()
	cfg.Discovery = false // no mDNS multicast on the host's interfaces
	dir := t.TempDir()
	cfg.DataDir, cfg.Listen, cfg.DBAddress, cfg.Insecure = filepath.Join(dir, "data"), freeAddr(t), freeAddr(t), true
	cfg.HeartbeatInterval, cfg.OfflineGrace = time.Second, time.Second
	n, err := node.Start(ctx, cfg, node.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("start control: %v", err)
	}
	defer n.Close(context.Background())
	id, secret, token := auth.NewToken()
	if err := n.Store().CreateToken(ctx, store.TokenData{ID: id, Name: "dash", Role: auth.RoleOperator, Hash: auth.HashSecret(secret)}, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	wsURL := "ws" + strings.TrimPrefix(n.URL(), "http")

	// No token: refused before the upgrade.
	if _, resp, err := websocket.Dial(ctx, wsURL+"/v1/stream", nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stream without a token: err %v, response %v; want 401", err, resp)
	}
	dash, _, err := websocket.Dial(ctx, wsURL+"/v1/stream", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("dial stream: %v", err)
	}
	defer dash.CloseNow()
	for _, req := range []string{
		`{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"]}`,
		`{"type":"subscribe","id":"teleop","topics":["teleoperation.started"],"robots":["lekiwi-e2e"]}`,
		`{"type":"subscribe","id":"bad","topics":["robot..x"]}`,
	} {
		if err := dash.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"subscribed hb", "subscribed teleop", "error bad"}
	for i := range want {
		f := readFrame(ctx, t, dash)
		if got := f["type"].(string) + " " + fmt.Sprint(f["id"]); got != want[i] {
			t.Fatalf("reply %d = %v, want %s", i, f, want[i])
		}
	}

	robot, _, err := websocket.Dial(ctx, wsURL+"/v1/agent", nil)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer robot.CloseNow()
	send := func(typ protocol.Type, seq uint64, payload any) {
		t.Helper()
		env, err := protocol.New(typ, "lekiwi-e2e", seq, time.Now(), payload)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		if err := robot.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
	}
	go func() { // drain acks
		for {
			if _, _, err := robot.Read(ctx); err != nil {
				return
			}
		}
	}()
	send(protocol.TypeHello, 1, protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "test", Stream: "s1", RobotType: protocol.RobotLeKiwi, Hardware: protocol.Hardware{Serial: "e2e"}})
	send(protocol.TypeHeartbeat, 2, protocol.Heartbeat{UptimeSeconds: 42})
	send(protocol.TypeEvent, 3, protocol.Event{Kind: protocol.EventTeleopStarted})

	var sawHB, sawTeleop bool
	for !sawHB || !sawTeleop {
		f := readFrame(ctx, t, dash)
		switch f["sub"] {
		case "hb":
			data := f["data"].(map[string]any)
			if f["topic"] != "robot.lekiwi-e2e.heartbeat" || data["uptime_seconds"] != 42.0 || data["node"] == "" {
				t.Fatalf("heartbeat frame %v", f)
			}
			sawHB = true
		case "teleop":
			if f["topic"] != "robot.lekiwi-e2e.event" || f["kind"] != protocol.EventTeleopStarted || f["seq"].(float64) <= 0 {
				t.Fatalf("teleop frame %v", f)
			}
			sawTeleop = true
		}
	}
}

func readFrame(ctx context.Context, t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, b, err := c.Read(rctx)
	if err != nil {
		t.Fatalf("read stream frame: %v", err)
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f
}
