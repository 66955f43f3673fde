//go:build libsqlite3

package web_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/stream"
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

// startNode runs a real control node (dqlite store, gateway, API, stream,
// dashboard) in-process on loopback, in --insecure mode (plain HTTP).
func startNode(ctx context.Context, t *testing.T) *node.Node {
	t.Helper()
	cfg := node.Defaults()
	cfg.Discovery = false // no mDNS multicast on the host's interfaces
	dir := t.TempDir()
	cfg.DataDir, cfg.Listen, cfg.DBAddress, cfg.Insecure = filepath.Join(dir, "data"), freeAddr(t), freeAddr(t), true
	cfg.HeartbeatInterval, cfg.OfflineGrace = time.Second, time.Second
	n, err := node.Start(ctx, cfg, node.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), FlushInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("start control: %v", err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	return n
}

func newToken(ctx context.Context, t *testing.T, n *node.Node, name string, role auth.Role) string {
	t.Helper()
	id, secret, token := auth.NewToken()
	if err := n.Store().CreateToken(ctx, store.TokenData{ID: id, Name: name, Role: role, Hash: auth.HashSecret(secret)}, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	return token
}

// robot is a minimal agent on /v1/agent: hello, then heartbeats and
// telemetry when told; acknowledgements and commands are read and dropped.
type robot struct {
	id   string
	conn *websocket.Conn
	mu   sync.Mutex
	seq  uint64
}

// connectRobot says hello as an agent on a system built as image version
// imageVersion ("" for a system made without provision image build).
func connectRobot(ctx context.Context, t *testing.T, n *node.Node, id string, typ protocol.RobotType, osVersion, imageVersion string) *robot {
	t.Helper()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL(), "http")+"/v1/agent", nil)
	if err != nil {
		t.Fatalf("robot %s: dial /v1/agent: %v", id, err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	go func() {
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				return
			}
		}
	}()
	r := &robot{id: id, conn: conn}
	var image *protocol.ImageInfo
	if imageVersion != "" {
		image = &protocol.ImageInfo{Version: imageVersion, Profile: string(typ), Created: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC), Seed: "5b1e0a"}
	}
	r.send(ctx, t, protocol.TypeHello, protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "0.9.1", Stream: "s-" + id,
		RobotType: typ, OSVersion: osVersion, Hardware: protocol.Hardware{Serial: "sn-" + id, Model: "Raspberry Pi 5 Model B Rev 1.0"}, Image: image})
	return r
}

func (r *robot) send(ctx context.Context, t *testing.T, typ protocol.Type, payload any) {
	t.Helper()
	if err := r.trySend(ctx, typ, payload); err != nil {
		t.Fatalf("robot %s: send %s: %v", r.id, typ, err)
	}
}

func (r *robot) trySend(ctx context.Context, typ protocol.Type, payload any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	env, err := protocol.New(typ, r.id, r.seq, time.Now(), payload)
	if err != nil {
		return err
	}
	b, err := json.Marshal(env)
	if err != nil {
		return err
	}
	return r.conn.Write(ctx, websocket.MessageText, b)
}

func (r *robot) telemetry(ctx context.Context, t *testing.T, cpu float64, temp float64) {
	t.Helper()
	r.send(ctx, t, protocol.TypeTelemetry, protocol.Telemetry{UptimeSeconds: 100, Resources: protocol.Resources{
		CPUPercent: cpu, MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 4 << 30, DiskUsedBytes: 12 << 30, DiskTotalBytes: 32 << 30, TemperatureC: &temp}})
}

// heartbeats sends a heartbeat every 500 ms with a growing uptime until ctx
// ends, so the robot stays online and the dashboard has something live.
func (r *robot) heartbeats(ctx context.Context) {
	start := time.Now()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := r.trySend(ctx, protocol.TypeHeartbeat, protocol.Heartbeat{UptimeSeconds: 3600 + time.Since(start).Seconds()}); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func apiCall(ctx context.Context, t *testing.T, n *node.Node, token, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, n.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	if resp.StatusCode >= 300 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// chromium finds the browser or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found (apt-get install chromium): the dashboard browser test needs a headless browser")
	return ""
}

// TestDashboardInChromium drives the dashboard in headless Chromium against
// a real control node with simulated robots: login, fleet table, live
// updates without reload (a new robot, heartbeats, telemetry, a robot going
// offline), robot detail plots, a deployment paused from its button, the
// operator's read-only view, and no script error or CSP violation on the
// way. It saves screenshots (t.TempDir(), and LEKIWI_SCREENSHOT_DIR when
// set).
func TestDashboardInChromium(t *testing.T) {
	browserPath := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := startNode(ctx, t)
	engineer := newToken(ctx, t, n, "erin", auth.RoleEngineer)
	operator := newToken(ctx, t, n, "oscar", auth.RoleOperator)

	robotsCtx, stopRobots := context.WithCancel(ctx)
	defer stopRobots()
	robots := map[string]*robot{}
	for i, spec := range []struct {
		id  string
		typ protocol.RobotType
	}{{"lekiwi-1", protocol.RobotLeKiwi}, {"lekiwi-2", protocol.RobotLeKiwi}, {"xle-1", protocol.RobotXLE}} {
		r := connectRobot(robotsCtx, t, n, spec.id, spec.typ, "Debian GNU/Linux 12 (bookworm)", "2026.6.0")
		r.telemetry(robotsCtx, t, float64(10+20*i), 48+float64(i))
		robots[spec.id] = r
		go r.heartbeats(robotsCtx)
	}
	// The driver of lekiwi-1 shows up in the teleoperation column.
	robots["lekiwi-1"].send(robotsCtx, t, protocol.TypeEvent, protocol.Event{Kind: protocol.EventTeleopStarted,
		Message: "teleoperation from 10.0.0.9", Data: json.RawMessage(`{"operator":"10.0.0.9"}`)})

	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var list struct {
			Robots []struct {
				ID string `json:"id"`
			} `json:"robots"`
		}
		if apiCall(ctx, t, n, engineer, "GET", "/v1/robots", nil, &list) == 200 && len(list.Robots) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("robots not registered within 10 s: %v", list.Robots)
		}
	}

	// A deployment outside its maintenance window: created, running, and
	// nothing sent yet, so only the dashboard changes its state.
	hour := time.Now().UTC().Hour()
	var dep struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	spec := map[string]any{
		"name": "spring-release", "version": "2026.7.1",
		"release":            "registry.local/lekiwi/os@sha256:" + strings.Repeat("ab", 32),
		"target":             map[string]any{"robot_ids": []string{"lekiwi-1", "lekiwi-2"}},
		"maintenance_window": map[string]int{"start_hour": (hour + 2) % 24, "end_hour": (hour + 3) % 24},
	}
	if code := apiCall(ctx, t, n, engineer, "POST", "/v1/deployments", spec, &dep); code != http.StatusCreated || dep.State != "running" {
		t.Fatalf("create deployment: status %d, state %q", code, dep.State)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browserPath), chromedp.NoSandbox, chromedp.WindowSize(1440, 900),
		chromedp.Flag("disable-gpu", true), chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()

	// Every console error of the page is logged; exceptions and CSP
	// violations fail the test.
	var consoleMu sync.Mutex
	var problems []string
	watchConsole := func(tab context.Context, who string) {
		msgs := chromedp.Console(tab)
		go func() {
			for m, err := range msgs {
				if err != nil {
					return
				}
				t.Logf("browser console (%s): %s", who, m)
				if m.IsException() || strings.Contains(m.Text, "Content Security Policy") || m.Source == "security" {
					consoleMu.Lock()
					problems = append(problems, m.String())
					consoleMu.Unlock()
				}
			}
		}()
	}
	watchConsole(tab, "engineer")

	step := func(name string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(tab, timeout)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			shot(t, tab, "failed-"+strings.ReplaceAll(name, " ", "-"))
			t.Fatalf("%s: %v", name, err)
		}
	}
	wait := func(js string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second))
	}
	eval := func(js string, out any) {
		t.Helper()
		v, err := chromedp.Run(tab, chromedp.Evaluate[json.RawMessage](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		if err := json.Unmarshal(v, out); err != nil {
			t.Fatalf("evaluate %s: %v (%s)", js, err, v)
		}
	}

	// The browser starts here (the first action of the tab).
	step("open the login page", 20*time.Second,
		chromedp.Navigate(n.URL()+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")))
	step("a wrong token is refused", 10*time.Second,
		chromedp.SendKeys(chromedp.CSS("#token"), "lkw_nosuch_token"),
		chromedp.Click(chromedp.CSS("#login-button")),
		wait(`document.querySelector('#login-error').textContent.includes('Login failed')`))
	step("log in as an engineer", 15*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.querySelector('#token').value = ''`),
		chromedp.SendKeys(chromedp.CSS("#token"), engineer),
		chromedp.Click(chromedp.CSS("#login-button")),
		wait(`document.querySelectorAll('#fleet tbody tr').length === 3`),
		wait(`document.querySelector('#live').dataset.state === 'open'`))

	var who string
	eval(`document.querySelector('#whoami').textContent`, &who)
	if !strings.Contains(who, "erin") || !strings.Contains(who, "engineer") {
		t.Errorf("whoami shows %q, want erin · engineer", who)
	}
	var row map[string]string
	eval(`Object.fromEntries([...document.querySelectorAll('#fleet tr[data-robot="xle-1"] td')].map(td => [td.dataset.col, td.textContent]))`, &row)
	for col, want := range map[string]string{"id": "xle-1", "online": "online", "type": "xle", "model": "Raspberry Pi 5 Model B Rev 1.0",
		"image": "2026.6.0", "os": "Debian GNU/Linux 12 (bookworm)", "agent": "0.9.1", "teleop": "idle", "cpu": "50%", "memory": "25%", "disk": "38%", "temp": "50.0 °C"} {
		if row[col] != want {
			t.Errorf("fleet row xle-1 column %s = %q, want %q (row %v)", col, row[col], want, row)
		}
	}
	step("teleoperation shows", 10*time.Second,
		wait(`document.querySelector('#fleet tr[data-robot="lekiwi-1"] td[data-col="teleop"]').textContent === 'driven · 10.0.0.9'`))

	// Live updates, no reload: a marker on window survives only if the page
	// is never reloaded.
	step("mark the page", 5*time.Second, chromedp.Evaluate[chromedp.Void](`window.__noReload = true`))
	var up0 float64
	eval(`Number(document.querySelector('#fleet tr[data-robot="lekiwi-1"] td[data-col="uptime"]').dataset.value)`, &up0)
	step("heartbeats move the uptime", 10*time.Second,
		wait(fmt.Sprintf(`Number(document.querySelector('#fleet tr[data-robot="lekiwi-1"] td[data-col="uptime"]').dataset.value) > %f`, up0+1)))
	newcomer := connectRobot(robotsCtx, t, n, "lekiwi-9", protocol.RobotLeKiwi, "Debian GNU/Linux 12 (bookworm)", "")
	go newcomer.heartbeats(robotsCtx)
	step("a robot that connects appears", 10*time.Second,
		wait(`document.querySelector('#fleet tr[data-robot="lekiwi-9"] td[data-col="online"]')?.textContent === 'online'`),
		wait(`document.querySelector('#fleet tr[data-robot="lekiwi-9"] td[data-col="image"]').textContent === '—'`))
	robots["xle-1"].telemetry(robotsCtx, t, 87, 81.5)
	step("telemetry updates CPU and temperature", 10*time.Second,
		wait(`document.querySelector('#fleet tr[data-robot="xle-1"] td[data-col="cpu"]').textContent === '87%'`),
		wait(`document.querySelector('#fleet tr[data-robot="xle-1"] td[data-col="temp"]').textContent === '81.5 °C'`))
	robots["lekiwi-2"].conn.Close(websocket.StatusNormalClosure, "powering off")
	step("a robot that leaves goes offline", 15*time.Second,
		wait(`document.querySelector('#fleet tr[data-robot="lekiwi-2"]').dataset.state === 'offline'`),
		wait(`window.__noReload === true`))
	step("fleet summary", 5*time.Second,
		wait(`document.querySelector('#count-online .n').textContent === '3 / 4'`),
		wait(`document.querySelector('#count-driven .n').textContent === '1'`),
		wait(`document.querySelector('#fleet tr[data-robot="lekiwi-9"] td[data-col="cpu"]').textContent === '—'`))
	shot(t, tab, "dashboard")

	step("robot detail with plots", 10*time.Second,
		chromedp.Click(chromedp.CSS(`#fleet a[href="/robots/xle-1"]`)),
		wait(`location.pathname === '/robots/xle-1' && document.querySelector('#robot-title').textContent === 'xle-1'`),
		wait(`document.querySelectorAll('#robot-plots [data-plot="CPU"] polyline').length === 1`),
		wait(`document.querySelector('#robot-plots [data-plot="Temperature"]').textContent.includes('last 81.5')`),
		wait(`document.querySelectorAll('#robot-events tbody tr').length > 0`),
		wait(`(() => { const dd = [...document.querySelectorAll('#robot-props dt')].find(dt => dt.textContent === 'Image')?.nextElementSibling;
			return dd?.textContent === '2026.6.0' && dd.querySelector('span').title.startsWith('profile xle, built ') })()`),
		wait(`[...document.querySelectorAll('#robot-props dt')].find(dt => dt.textContent === 'Image profile')?.nextElementSibling.textContent === 'xle'`),
		wait(`window.__noReload === true`))
	shot(t, tab, "robot")

	step("events feed", 10*time.Second,
		chromedp.Click(chromedp.CSS(`nav a[data-nav="events"]`)),
		wait(`[...document.querySelectorAll('#feed tbody tr')].some(tr => tr.textContent.includes('RobotDisconnected') && tr.textContent.includes('lekiwi-2'))`),
		wait(`document.querySelectorAll('#history tbody tr').length > 0`))

	sel := fmt.Sprintf(`#deployments tr[data-deployment=%q]`, dep.ID)
	step("deployments list", 10*time.Second,
		chromedp.Click(chromedp.CSS(`nav a[data-nav="deployments"]`)),
		wait(fmt.Sprintf(`document.querySelector('%s')?.dataset.state === 'running'`, sel)),
		wait(fmt.Sprintf(`document.querySelector('%s progress').max === 2`, sel)))
	step("pause from the dashboard", 10*time.Second,
		chromedp.Click(chromedp.CSS(sel+` button[data-action="pause"]`)),
		wait(fmt.Sprintf(`document.querySelector('%s')?.dataset.state === 'paused'`, sel)),
		wait(fmt.Sprintf(`!document.querySelector('%s button[data-action="resume"]').disabled`, sel)))
	var got struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
	}
	if code := apiCall(ctx, t, n, engineer, "GET", "/v1/deployments/"+dep.ID, nil, &got); code != 200 || got.State != "paused" {
		t.Fatalf("after the pause button: API says state %q (status %d), want paused", got.State, code)
	}
	if !strings.Contains(got.Reason, "erin") {
		t.Errorf("pause reason %q does not name the user", got.Reason)
	}
	shot(t, tab, "deployments")

	// An operator, in a tab of its own (sessionStorage is per tab), sees
	// deployments without any control.
	opTab, cancelOp := chromedp.NewContext(tab)
	defer cancelOp()
	watchConsole(opTab, "operator")
	octx, cancelO := context.WithTimeout(opTab, 15*time.Second)
	defer cancelO()
	if err := chromedp.Do(octx,
		chromedp.Navigate(n.URL()+"/deployments"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), operator),
		chromedp.Click(chromedp.CSS("#login-button")),
		wait(fmt.Sprintf(`location.pathname === '/deployments' && document.querySelector('%s')?.dataset.state === 'paused'`, sel)),
		wait(`document.querySelector('#read-only') !== null && document.querySelectorAll('#deployments button').length === 0`),
	); err != nil {
		shot(t, opTab, "failed-operator")
		t.Fatalf("operator view: %v", err)
	}

	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
}

// shot saves a full-page PNG to the test's temp dir and, when
// LEKIWI_SCREENSHOT_DIR is set, there too.
func shot(t *testing.T, tab context.Context, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot %s is not a PNG", name)
		return
	}
	dirs := []string{t.TempDir()}
	if d := os.Getenv("LEKIWI_SCREENSHOT_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Errorf("save screenshot: %v", err)
			continue
		}
		t.Logf("screenshot %s (%d bytes)", p, len(png))
	}
}

// TestStreamTokenSubprotocol: the stream accepts the browser's way of
// authenticating (token as a subprotocol), selects lekiwi.stream.v1, and
// refuses a wrong token before the upgrade.
func TestStreamTokenSubprotocol(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(ctx, t)
	token := newToken(ctx, t, n, "dash", auth.RoleOperator)
	url := "ws" + strings.TrimPrefix(n.URL(), "http") + "/v1/stream"
	offer := func(tok string) []string {
		return []string{stream.Subprotocol, stream.TokenSubprotocolPrefix + base64.RawURLEncoding.EncodeToString([]byte(tok))}
	}
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: offer(token)})
	if err != nil {
		t.Fatalf("dial with the token as a subprotocol: %v", err)
	}
	defer c.CloseNow()
	if c.Subprotocol() != stream.Subprotocol {
		t.Errorf("selected subprotocol %q, want %q", c.Subprotocol(), stream.Subprotocol)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if _, b, err := c.Read(rctx); err != nil || !strings.Contains(string(b), "pong") {
		t.Fatalf("ping: %s, %v", b, err)
	}
	_, wrong, _ := auth.NewToken()
	for name, protos := range map[string][]string{
		"unknown token":       offer(wrong),
		"no token":            {stream.Subprotocol},
		"malformed base64url": {stream.Subprotocol, stream.TokenSubprotocolPrefix + "%%"},
	} {
		_, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: protos})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: err %v, response %v; want 401", name, err, resp)
		}
	}
}

// TestNodeServesDashboard: on a real node the dashboard answers / and its
// pages, while the API, its JSON 404 and the probes keep their routes.
func TestNodeServesDashboard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(ctx, t)
	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
		body         string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", `<main id="main">`},
		{"GET", "/robots/lekiwi-1", 200, "text/html; charset=utf-8", `<main id="main">`},
		{"GET", "/deployments", 200, "text/html; charset=utf-8", `<main id="main">`},
		{"GET", "/assets/app.js", 200, "text/javascript; charset=utf-8", "connectStream"},
		{"POST", "/", 405, "text/plain; charset=utf-8", "GET and HEAD"},
		{"GET", "/nope", 404, "text/plain; charset=utf-8", "dashboard is at /"},
		{"GET", "/v1/nope", 404, "application/json", `"not_found"`},
		{"GET", "/v1/robots", 401, "application/json", `"unauthenticated"`},
		{"GET", "/healthz", 200, "application/json", `"ok"`},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, n.URL()+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != tc.contentType || !strings.Contains(string(b), tc.body) {
			t.Errorf("%s %s: %d %q %.120q; want %d %q containing %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, tc.status, tc.contentType, tc.body)
		}
	}
}
