package updatecmd_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/agent/ota/updatecmd"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/protocol"
)

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// fixture: image 1 (the robot's disk) and signed releases of image 2.
type fixture struct {
	img1             string
	plan             *layout.Plan
	key              ed25519.PrivateKey
	signed, wrongKey string
}

func buildImage(t testing.TB, dir, name string, files map[string][]byte) (string, *layout.Plan) {
	t.Helper()
	img := imagetest.Build(t, dir, imagetest.Options{Name: name, Root: files, Description: "updates test",
		Sizes: layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}})
	return img.Path, img.Plan
}

func newFixture(t *testing.T) *fixture {
	dir := t.TempDir()
	f := &fixture{}
	f.img1, f.plan = buildImage(t, dir, "v1", map[string][]byte{"etc/hostname": []byte("robot\n")})
	img2, _ := buildImage(t, dir, "v2", map[string][]byte{"etc/hostname": []byte("robot\n"), "etc/lekiwi/release": []byte("2\n")})
	var err error
	_, f.key, err = ed25519.GenerateKey(rand.Reader)
	must(t, "key", err)
	_, other, err := ed25519.GenerateKey(rand.Reader)
	must(t, "key", err)
	f.signed, f.wrongKey = filepath.Join(dir, "rel-signed"), filepath.Join(dir, "rel-wrongkey")
	for _, c := range []struct {
		dir string
		key ed25519.PrivateKey
	}{{f.signed, f.key}, {f.wrongKey, other}} {
		_, err := release.Create(context.Background(), img2, c.dir, release.Meta{Version: "2", Profile: "lekiwi", MinAgentVersion: "1.0"}, release.CreateOptions{})
		must(t, "create release", err)
		_, err = release.SignDir(c.dir, c.key)
		must(t, "sign release", err)
	}
	return f
}

// control is a fake control node: hello answered, every queued message
// acknowledged and kept in order of arrival (deduplicated by sequence),
// commands sent on the live connection.
type control struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	conn   *websocket.Conn
	seen   map[uint64]bool
	stored []protocol.Envelope
}

func newControl(t *testing.T) *control {
	c := &control{t: t, seen: map[uint64]bool{}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.handle))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *control) url() string { return "ws" + c.srv.URL[len("http"):] }

func (c *control) send(ctx context.Context, conn *websocket.Conn, typ protocol.Type, robot string, payload any) {
	env, err := protocol.New(typ, robot, 1, time.Now(), payload)
	if err == nil {
		var b []byte
		if b, err = protocol.Encode(env); err == nil {
			_ = conn.Write(ctx, websocket.MessageText, b)
		}
	}
}

func (c *control) handle(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(protocol.MaxFrameBytes)
	ctx := r.Context()
	_, data, err := conn.Read(ctx)
	if err != nil {
		return
	}
	hello, err := protocol.Decode(data)
	if err != nil || hello.Type != protocol.TypeHello {
		return
	}
	c.send(ctx, conn, protocol.TypeHello, hello.RobotID, protocol.HelloReply{Version: protocol.Version, NodeID: "fake", HeartbeatIntervalMS: 3_600_000})
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return
		}
		env, err := protocol.Decode(data)
		if err != nil {
			continue
		}
		if env.Type == protocol.TypeEvent || env.Type == protocol.TypeResponse {
			c.mu.Lock()
			if !c.seen[env.Sequence] {
				c.seen[env.Sequence] = true
				c.stored = append(c.stored, env)
			}
			c.mu.Unlock()
		}
		c.send(ctx, conn, protocol.TypeAck, hello.RobotID, protocol.Ack{Sequences: []uint64{env.Sequence}})
	}
}

func (c *control) command(t *testing.T, cmd protocol.Command) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn != nil {
			c.send(context.Background(), conn, protocol.TypeCommand, "lekiwi-7", cmd)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent never connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// updateStates and responses are what control stored, in order.
func (c *control) updateStates() []protocol.UpdateState {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []protocol.UpdateState
	for _, env := range c.stored {
		if env.Type != protocol.TypeEvent {
			continue
		}
		ev, err := protocol.DecodePayload[protocol.Event](env)
		var s protocol.UpdateState
		if err == nil && ev.Kind == protocol.EventUpdate && json.Unmarshal(ev.Data, &s) == nil {
			out = append(out, s)
		}
	}
	return out
}

func (c *control) responses(id string) []protocol.Response {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []protocol.Response
	for _, env := range c.stored {
		if env.Type != protocol.TypeResponse {
			continue
		}
		if r, err := protocol.DecodePayload[protocol.Response](env); err == nil && r.CommandID == id {
			out = append(out, r)
		}
	}
	return out
}

func states(ss []protocol.UpdateState) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.State)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type collector struct{}

func (collector) Sample(context.Context) (protocol.Telemetry, error) {
	return protocol.Telemetry{Network: protocol.Network{Hostname: "lekiwi-7"}, UptimeSeconds: 1}, nil
}

// robot is a modelled Pi (firmware, real rpi controller) whose disk and
// persistent directory outlive each agent process.
type robot struct {
	dev    *powercut.Device
	pi     *firmware.Pi
	ctl    *rpi.Controller
	dir    string
	keys   []ed25519.PublicKey
	bootID string // the firmware model's id of the running boot
}

func newRobot(t *testing.T, f *fixture) *robot {
	fh, err := os.Open(f.img1)
	must(t, "open image", err)
	t.Cleanup(func() { fh.Close() })
	dev := powercut.NewDevice(powercut.NewDisk(fh, f.plan.Size), powercut.Fault{})
	dir := t.TempDir()
	dt := filepath.Join(dir, "dt")
	pi := firmware.NewPi(dev, dev.Size(), firmware.PiOptions{DeviceTree: dt, Watchdog: time.Minute})
	bc := f.plan.Part(layout.BootConfig)
	sec, err := dev.Section(bc.Start, bc.Size)
	must(t, "bootconfig", err)
	ctl, err := rpi.New(rpi.Options{DeviceTree: dt, BootConfig: sec, Reboot: pi})
	must(t, "controller", err)
	return &robot{dev: dev, pi: pi, ctl: ctl, dir: dir, keys: []ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}}
}

func (r *robot) boot(t *testing.T, want bootctl.Slot, trial bool) {
	t.Helper()
	b, err := r.pi.Boot()
	must(t, "boot", err)
	r.bootID = b.ID
	if b.Slot != want || b.Trial != trial {
		t.Fatalf("the firmware booted %s (trial %v, %s), want %s (trial %v)", b.Slot, b.Trial, b.Reason, want, trial)
	}
}

// process is one run of the agent: runtime, handler and updater, as the
// daemon wires them.
type process struct {
	cancel context.CancelFunc
	done   chan struct{}
	q      *queue.Queue
}

func (r *robot) start(t *testing.T, c *control) *process {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	state := filepath.Join(r.dir, "state")
	q, err := queue.Open(filepath.Join(state, queue.FileName), queue.Options{})
	must(t, "queue", err)
	h, err := updatecmd.New(updatecmd.Options{StateDir: state, Logger: log})
	must(t, "handler", err)
	var a *agent.Agent
	u, err := ota.New(ota.Options{Boot: r.ctl, Disk: r.dev, DiskSize: r.dev.Size(), TrustedKeys: r.keys,
		Source: ota.DirSource{}, StateDir: state, CacheDir: filepath.Join(state, "cache"), Profile: "lekiwi",
		AgentVersion: "1.2", CurrentVersion: "1", Report: h.Report,
		Health:        ota.RobotHealth(ota.RobotHealthOptions{Connected: func() bool { return a.State() == agent.Connected }}),
		HealthTimeout: 10 * time.Second, HealthRetry: 20 * time.Millisecond, RetryDelay: time.Millisecond,
		// No timed progress reports: the tests compare the sequence of
		// states, which a slow machine would otherwise pad with repeats.
		ProgressInterval: time.Hour, BootID: func() (string, error) { return r.bootID, nil }})
	must(t, "updater", err)
	a, err = agent.New(agent.Options{RobotID: "lekiwi-7", RobotType: protocol.RobotLeKiwi, Servers: []string{c.url()},
		Queue: q, Collector: collector{}, AgentVersion: "1.2", FirstReconnectJitter: -1, Logger: log,
		Commands: map[string]agent.CommandHandler{protocol.CommandUpdate: h.Handle}})
	must(t, "agent", err)
	ctx, cancel := context.WithCancel(context.Background())
	p := &process{cancel: cancel, done: make(chan struct{}), q: q}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.Run(ctx, u, a) }()
	go func() { defer wg.Done(); _ = a.Run(ctx) }()
	go func() { wg.Wait(); close(p.done) }()
	return p
}

// stop is the process ending (the machine rebooting).
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop")
	}
	must(t, "close queue", p.q.Close())
}

// TestUpdateCommandToCommit: control sends an update; the agent accepts
// it, reports downloading → writing → verifying → armed as events, answers
// ok, and the firmware's next boot is the trial of slot b; the agent
// started there settles it (health: connected to control) and reports
// committed; a redelivery of the command is answered ok again, not
// installed twice.
func TestUpdateCommandToCommit(t *testing.T) {
	f := newFixture(t)
	c := newControl(t)
	r := newRobot(t, f)
	r.boot(t, bootctl.A, false)

	p := r.start(t, c)
	args, _ := json.Marshal(protocol.UpdateArgs{DeploymentID: "dep-1", Release: f.signed, Version: "2"})
	cmd := protocol.Command{ID: "dep-1-lekiwi-7-1", Name: protocol.CommandUpdate, Args: args}
	c.command(t, cmd)
	waitFor(t, "the final answer", func() bool { return len(c.responses(cmd.ID)) >= 2 })
	var got []string
	for _, resp := range c.responses(cmd.ID) {
		got = append(got, resp.Status)
	}
	if !slices.Equal(got, []string{"progress", "ok"}) {
		t.Fatalf("answers %v, want progress then ok", got)
	}
	ss := c.updateStates()
	if want := []string{"downloading", "writing", "verifying", "armed"}; !slices.Equal(states(ss), want) {
		t.Fatalf("update events %v, want %v", states(ss), want)
	}
	for _, s := range ss {
		if s.DeploymentID != "dep-1" || s.Version != "2" || s.Slot != "b" {
			t.Fatalf("update event %+v does not name deployment, version and slot", s)
		}
	}
	if st, err := r.ctl.Status(context.Background()); err != nil || st.Default != bootctl.A || st.TrialSlot != bootctl.B {
		t.Fatalf("after install: %+v %v, want default a, trial b armed", st, err)
	}
	p.stop(t)

	// The modelled reboot armed the one-shot trial.
	r.boot(t, bootctl.B, true)
	p = r.start(t, c)
	waitFor(t, "committed", func() bool {
		ss := c.updateStates()
		return len(ss) > 0 && ss[len(ss)-1].State == protocol.UpdateCommitted
	})
	if want := []string{"downloading", "writing", "verifying", "armed", "trial", "committed"}; !slices.Equal(states(c.updateStates()), want) {
		t.Fatalf("update events %v, want %v", states(c.updateStates()), want)
	}
	// Control delivers the command again (it missed the answer): the
	// same answer, nothing installed.
	c.command(t, cmd)
	waitFor(t, "the repeated answer", func() bool { return len(c.responses(cmd.ID)) >= 3 })
	if rs := c.responses(cmd.ID); rs[2].Status != "ok" {
		t.Fatalf("redelivered command answered %+v", rs[2])
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(c.updateStates()); n != 6 {
		t.Fatalf("the redelivered command started another update: %v", states(c.updateStates()))
	}
	p.stop(t)
	r.boot(t, bootctl.B, false)
	if st, err := r.ctl.Status(context.Background()); err != nil || st.Default != bootctl.B || st.Booted != bootctl.B {
		t.Fatalf("after commit: %+v %v", st, err)
	}
}

// TestUpdateCommandRefused: a release signed by a key the robot does not
// trust is refused: a failed event with the reason, an error answer, the
// disk untouched. Bad arguments are refused before anything starts.
func TestUpdateCommandRefused(t *testing.T) {
	f := newFixture(t)
	c := newControl(t)
	r := newRobot(t, f)
	r.boot(t, bootctl.A, false)
	before := len(r.dev.Writes())
	p := r.start(t, c)
	defer p.stop(t)

	c.command(t, protocol.Command{ID: "bad-args", Name: protocol.CommandUpdate, Args: json.RawMessage(`{"deployment_id":"dep-2"}`)})
	args, _ := json.Marshal(protocol.UpdateArgs{DeploymentID: "dep-2", Release: f.wrongKey, Version: "2"})
	c.command(t, protocol.Command{ID: "wrong-key", Name: protocol.CommandUpdate, Args: args})
	waitFor(t, "both answers", func() bool {
		return len(c.responses("bad-args")) == 1 && len(c.responses("wrong-key")) == 2
	})
	if rs := c.responses("bad-args"); rs[0].Status != "error" {
		t.Fatalf("update without a release answered %+v", rs[0])
	}
	rs := c.responses("wrong-key")
	if rs[0].Status != "progress" || rs[1].Status != "error" || rs[1].Message == "" {
		t.Fatalf("wrongly signed release answered %+v", rs)
	}
	ss := c.updateStates()
	if len(ss) != 1 || ss[0].State != protocol.UpdateFailed || ss[0].Reason == "" || ss[0].DeploymentID != "dep-2" {
		t.Fatalf("update events %+v, want one failed with its reason", ss)
	}
	t.Logf("refused: %s", ss[0].Reason)
	if w := r.dev.Writes(); len(w) != before {
		t.Fatalf("a refused release wrote to the disk: %+v", w[before:])
	}
}
