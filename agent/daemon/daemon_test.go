package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// control is a minimal control node: answers hello, acknowledges
// everything, reports each frame's type.
func control(t *testing.T) (url string, frames <-chan protocol.Envelope) {
	ch := make(chan protocol.Envelope, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			_, data, err := c.Read(r.Context())
			if err != nil {
				return
			}
			env, err := protocol.Decode(data)
			if err != nil {
				t.Errorf("agent sent an invalid frame: %v", err)
				return
			}
			ch <- env
			var reply protocol.Envelope
			if env.Type == protocol.TypeHello {
				reply, _ = protocol.New(protocol.TypeHello, env.RobotID, 1, time.Now(), protocol.HelloReply{Version: 1, NodeID: "n1", HeartbeatIntervalMS: 50})
			} else {
				reply, _ = protocol.New(protocol.TypeAck, env.RobotID, 1, time.Now(), protocol.Ack{Sequences: []uint64{env.Sequence}})
			}
			b, _ := protocol.Encode(reply)
			if err := c.Write(r.Context(), websocket.MessageText, b); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, ch
}

func notifySocket(t *testing.T) <-chan string {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "n"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "n"))
	ch := make(chan string, 1000)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func testConfig(t *testing.T, server string) config.Config {
	root := t.TempDir()
	for name, content := range map[string]string{
		"proc/stat":                "cpu  100 0 100 800 0 0 0 0\n",
		"proc/meminfo":             "MemTotal: 8000000 kB\nMemAvailable: 6000000 kB\n",
		"proc/uptime":              "42.5 80.0\n",
		"proc/sys/kernel/hostname": "lekiwi-9\n",
		"etc/os-release":           "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := config.Default()
	c.RobotID, c.RobotType, c.Servers = "lekiwi-9", protocol.RobotLeKiwi, []string{server}
	c.StateDir = filepath.Join(root, "state")
	c.Roots = config.Roots{Proc: filepath.Join(root, "proc"), Sys: filepath.Join(root, "sys"), Etc: filepath.Join(root, "etc")}
	c.DiskPath = root
	c.TelemetrySampleInterval = 10 * time.Millisecond
	c.Insecure = strings.HasPrefix(server, "ws://") || strings.HasPrefix(server, "http://")
	// The live watchers are turned on by the tests that check them: mDNS
	// would multicast on the host's interfaces, the service watch would
	// talk to the host's systemd.
	c.TeleopEnabled, c.ServicesEnabled, c.MDNSEnabled = false, false, false
	c.UpdateImageInfo = filepath.Join(root, "image.json")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRunNotifiesAndConnects runs the daemon as systemd would: READY=1 once
// the state is open, WATCHDOG=1 pings, hello with the version, telemetry
// from the configured roots, heartbeats, STOPPING=1 on shutdown.
func TestRunNotifiesAndConnects(t *testing.T) {
	notes := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	url, frames := control(t)
	cfg := testConfig(t, url)
	cfg.Hardware = config.Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "c04170"}
	// image.json as provision image build writes it.
	os.WriteFile(cfg.UpdateImageInfo, []byte(`{
  "version": "2026.11.2",
  "profile": "lekiwi",
  "base": "2025-10-01-raspios-bookworm-arm64-lite.img.xz",
  "base_arch": "arm64",
  "created": 1762075800,
  "agent_sha256": "9f0c",
  "seed": "5b1e0a"
}
`), 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, "9.9.9", nil) }()

	waitNote := func(want string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case n := <-notes:
				if n == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %s notification", want)
			}
		}
	}
	waitNote("READY=1")
	if _, err := os.Stat(filepath.Join(cfg.StateDir, queue.FileName)); err != nil {
		t.Fatalf("READY=1 before the queue exists: %v", err)
	}
	seen := map[protocol.Type]protocol.Envelope{}
	deadline := time.After(5 * time.Second)
	for seen[protocol.TypeHeartbeat].Type == "" || seen[protocol.TypeTelemetry].Type == "" {
		select {
		case env := <-frames:
			if _, ok := seen[env.Type]; !ok {
				seen[env.Type] = env
			}
		case <-deadline:
			t.Fatalf("saw only %v", seen)
		}
	}
	hello, _ := protocol.DecodePayload[protocol.Hello](seen[protocol.TypeHello])
	if hello.AgentVersion != "9.9.9" || hello.OSVersion != "Debian GNU/Linux 12 (bookworm)" {
		t.Fatalf("hello %+v", hello)
	}
	if want := (protocol.Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "c04170", MemoryMB: 4096, Manufacturer: "Sony UK"}); hello.Hardware != want {
		t.Fatalf("hello hardware %+v, want %+v (the revision code decoded)", hello.Hardware, want)
	}
	wantImage := protocol.ImageInfo{Version: "2026.11.2", Profile: "lekiwi", Created: time.Unix(1762075800, 0).UTC(), Seed: "5b1e0a"}
	if hello.Image == nil || *hello.Image != wantImage {
		t.Fatalf("hello image %+v, want %+v", hello.Image, wantImage)
	}
	tel, _ := protocol.DecodePayload[protocol.Telemetry](seen[protocol.TypeTelemetry])
	if tel.Network.Hostname != "lekiwi-9" || tel.UptimeSeconds != 42.5 || tel.Resources.DiskTotalBytes == 0 {
		t.Fatalf("telemetry %+v: want values from the configured roots", tel)
	}
	waitNote("WATCHDOG=1")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	waitNote("STOPPING=1")
}

func TestRunFailsOnUnusableStateDir(t *testing.T) {
	cfg := testConfig(t, "ws://127.0.0.1:1")
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	cfg.StateDir = filepath.Join(file, "state") // under a regular file
	err := Run(context.Background(), cfg, "dev", nil)
	if err == nil || !strings.Contains(err.Error(), "open agent state") {
		t.Fatalf("Run = %v, want an error opening the state", err)
	}
}

// A system without image.json is not an image we built: no image in hello,
// a debug line and no warning. A corrupt one is a warning, and no image.
func TestRunningImage(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"version":"1.2.0","profile":"xle","created":1,"seed":"aa","future":true}`), 0o644)
	corrupt := filepath.Join(dir, "corrupt.json")
	os.WriteFile(corrupt, []byte(`{"version":"1.2.0",`), 0o644)
	noProfile := filepath.Join(dir, "noprofile.json")
	os.WriteFile(noProfile, []byte(`{"version":"1.2.0"}`), 0o644)
	for _, tc := range []struct {
		name, path  string
		wantVersion string
		wantLevel   slog.Level
		wantLog     string
	}{
		{"image", good, "1.2.0", slog.LevelDebug, ""},
		{"missing", filepath.Join(dir, "missing.json"), "", slog.LevelDebug, "not a system made by provision image build"},
		{"corrupt", corrupt, "", slog.LevelWarn, "corrupt.json: image metadata is not JSON"},
		{"no profile", noProfile, "", slog.LevelWarn, "names no profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf strings.Builder
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			img := runningImage(tc.path, log)
			if got := imageVersion(img); got != tc.wantVersion {
				t.Fatalf("image version %q, want %q", got, tc.wantVersion)
			}
			out := buf.String()
			if tc.wantLog == "" {
				if out != "" {
					t.Fatalf("logged %q for a good image.json", out)
				}
				return
			}
			if !strings.Contains(out, "level="+tc.wantLevel.String()) || !strings.Contains(out, tc.wantLog) || strings.Count(out, "\n") != 1 {
				t.Fatalf("log %q, want one %s line containing %q", out, tc.wantLevel, tc.wantLog)
			}
		})
	}
}
