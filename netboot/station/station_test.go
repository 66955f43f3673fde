package station

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/netboot/tftp/tftptest"
	"github.com/lekiwi/heartbeat/protocol"
)

// fakeControl stands in for control's factory routes: it stores events by
// (stream, seq) like the real one, hands out identities as profile-serial,
// and can be made unreachable or made to refuse a serial.
type fakeControl struct {
	mu      sync.Mutex
	down    bool
	refuse  map[string]string // serial → message
	events  map[string]protocol.FactoryEvent
	robots  int
	request int
	online  map[string]bool
}

func newFakeControl() *fakeControl {
	return &fakeControl{refuse: map[string]string{}, events: map[string]protocol.FactoryEvent{}, online: map[string]bool{}}
}

func (c *fakeControl) setDown(down bool) { c.mu.Lock(); c.down = down; c.mu.Unlock() }

func (c *fakeControl) SendEvents(_ context.Context, b protocol.FactoryEvents) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down {
		return &controlapi.Unreachable{Err: errors.New("dial tcp 10.0.0.2:8443: connection refused")}
	}
	for _, e := range b.Events {
		c.events[fmt.Sprintf("%s/%d", b.Stream, e.Seq)] = e
	}
	return nil
}

func (c *fakeControl) RequestRobot(_ context.Context, serial, profile string) (protocol.FactoryRobot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.request++
	if c.down {
		return protocol.FactoryRobot{}, &controlapi.Unreachable{Err: errors.New("dial tcp 10.0.0.2:8443: connection refused")}
	}
	if msg, ok := c.refuse[serial]; ok {
		return protocol.FactoryRobot{}, &controlapi.Refused{Status: 409, Code: "enrolled", Message: msg}
	}
	c.robots++
	return protocol.FactoryRobot{RobotID: protocol.FactoryRobotID(profile, serial), Token: fmt.Sprintf("lke_token%d", c.robots),
		ExpiresAt: time.Now().Add(time.Hour), CA: "-----BEGIN CERTIFICATE-----\nfleet\n-----END CERTIFICATE-----\n"}, nil
}

func (c *fakeControl) RobotOnline(_ context.Context, robotID string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down {
		return false, &controlapi.Unreachable{Err: errors.New("dial tcp 10.0.0.2:8443: connection refused")}
	}
	return c.online[robotID], nil
}

func (c *fakeControl) setOnline(robotID string) { c.mu.Lock(); c.online[robotID] = true; c.mu.Unlock() }

// steps returns the FactoryStep events control has for serial, in order.
func (c *fakeControl) steps(serial string) []protocol.FactoryStep {
	c.mu.Lock()
	defer c.mu.Unlock()
	var evs []protocol.FactoryEvent
	for _, e := range c.events {
		evs = append(evs, e)
	}
	sortEvents(evs)
	var out []protocol.FactoryStep
	for _, e := range evs {
		var st protocol.FactoryStep
		if e.Type == protocol.EventFactoryStep && json.Unmarshal(e.Data, &st) == nil && st.Serial == serial {
			out = append(out, st)
		}
	}
	return out
}

func (c *fakeControl) seen() []protocol.DeviceSeen {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []protocol.DeviceSeen
	for _, e := range c.events {
		var d protocol.DeviceSeen
		if e.Type == protocol.EventDeviceSeen && json.Unmarshal(e.Data, &d) == nil {
			out = append(out, d)
		}
	}
	return out
}

func sortEvents(evs []protocol.FactoryEvent) {
	for i := range evs {
		for j := i + 1; j < len(evs); j++ {
			if evs[j].Seq < evs[i].Seq {
				evs[i], evs[j] = evs[j], evs[i]
			}
		}
	}
}

func hasStep(steps []protocol.FactoryStep, step, status string) bool {
	for _, s := range steps {
		if s.Step == step && s.Status == status {
			return true
		}
	}
	return false
}

// bench is a station's files: boot directory, image, state.
type bench struct {
	boot, state, image string
	imageData          []byte
}

func newBench(t testing.TB) *bench {
	t.Helper()
	dir := t.TempDir()
	b := &bench{boot: filepath.Join(dir, "boot"), state: filepath.Join(dir, "state"), image: filepath.Join(dir, "robot.img")}
	for name, content := range map[string]string{
		"vmlinuz":        strings.Repeat("kernel ", 3000), // several TFTP blocks
		"initrd.img":     "initramfs",
		"start4.elf":     "generic start4",
		"pi4/start4.elf": "pi4 start4",
	} {
		p := filepath.Join(b.boot, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.imageData = make([]byte, 1<<20+123)
	for i := range b.imageData {
		b.imageData[i] = byte(rng.UintN(256))
	}
	if err := os.WriteFile(b.image, b.imageData, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.image+".bmap", []byte("<bmap version=\"2.0\"/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// running is a station serving in the background.
type running struct {
	*Station
	stop func()
}

func (b *bench) start(t testing.TB, ctl Control, mod ...func(*Config)) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{StateDir: b.state, BootDir: b.boot, Image: b.image, ImageVersion: "2025.1",
		HTTPAddr: "127.0.0.1:0", TFTPAddr: "127.0.0.1:0", Control: ctl, TFTPTimeout: time.Second,
		IdentityRetry: 20 * time.Millisecond, IdentityMaxBackoff: 100 * time.Millisecond,
		EventRetry: 20 * time.Millisecond, EventMaxBackoff: 100 * time.Millisecond, PlanRetryAfter: time.Second,
		Registerer: reg, Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	r := &running{Station: s, stop: func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("station did not stop within 10 s")
			}
		})
	}}
	t.Cleanup(r.stop)
	return r
}

func (r *running) url(path string) string { return "http://" + r.HTTPAddr().String() + path }

// call makes one HTTP request to the station and decodes a JSON answer.
func (r *running) call(t *testing.T, method, path, token string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, r.url(path), rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

func (r *running) board(serial string) BoardStatus {
	for _, b := range r.Status().Boards {
		if b.Serial == serial {
			return b
		}
	}
	return BoardStatus{}
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var tokenArg = regexp.MustCompile(`(?m)\blekiwi\.token=([0-9a-f]+)\n?$`)

// netboot does what a Pi bootloader does with the station's files and
// returns the board token from its cmdline.txt.
func (r *running) netboot(t testing.TB, serial string) (token, config, cmdline string) {
	t.Helper()
	c := tftptest.Client{Server: netip.MustParseAddrPort(r.TFTPAddr().String()), Timeout: 2 * time.Second}
	ctx := context.Background()
	got := map[string]string{}
	for _, f := range []string{"config.txt", "start4.elf", "cmdline.txt", "vmlinuz", "initrd.img"} {
		data, res, err := c.Fetch(ctx, serial+"/"+f)
		if err != nil {
			t.Fatalf("TFTP %s/%s: %v", serial, f, err)
		}
		if res.BlockSize != 1468 {
			t.Errorf("%s: blksize %d, want 1468", f, res.BlockSize)
		}
		got[f] = string(data)
	}
	m := tokenArg.FindStringSubmatch(got["cmdline.txt"])
	if m == nil {
		t.Fatalf("cmdline.txt has no %s: %q", protocol.KernelArgToken, got["cmdline.txt"])
	}
	return m[1], got["config.txt"], got["cmdline.txt"]
}

func lekiwiReport(serial string) protocol.HardwareReport {
	return protocol.HardwareReport{
		Board: protocol.BoardInfo{Serial: "10000000" + serial, Revision: "d04170", Model: "Raspberry Pi 5 Model B Rev 1.0"},
		Storage: []protocol.StorageDevice{
			{Name: "mmcblk0", Kind: protocol.StorageSD, SizeBytes: 32 << 30, Removable: true},
			{Name: "nvme0n1", Kind: protocol.StorageNVMe, SizeBytes: 512 << 30},
		},
		ServoBuses: []protocol.ServoBus{{Device: "/dev/ttyACM0", IDs: []int{1, 2, 3, 4, 5, 6, 7, 8, 9}}},
	}
}

func xleReport(serial string) protocol.HardwareReport {
	r := lekiwiReport(serial)
	r.Storage = r.Storage[:1] // SD card only
	r.ServoBuses = []protocol.ServoBus{
		{Device: "/dev/ttyACM0", IDs: []int{1, 2, 3, 4, 5, 6, 7, 8}},
		{Device: "/dev/ttyACM1", IDs: []int{1, 2, 3, 4, 5, 6, 7, 8, 9}},
	}
	return r
}
