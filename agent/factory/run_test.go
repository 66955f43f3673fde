package factory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/provision/flash"
)

const (
	testToken  = "board-token-1"
	testSerial = "10000000a1b2c3d4" // the lekiwi-pi5 fixture's
	testRobot  = "lekiwi-" + testSerial
)

// testImage is a small LeKiwi image built like the bench's tests build one,
// with its .bmap.
type testImage struct {
	path string
	size int64
	bmap []byte
	m    *bmap.Map
}

func buildTestImage(t *testing.T) testImage {
	t.Helper()
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{
		Root:  map[string][]byte{"etc/hostname": []byte("x\n"), "usr/share/lekiwi/data.bin": imagetest.Filler(60000)},
		Sizes: layout.Sizes{Boot: 64 << 20, Persistent: 16 << 20},
	})
	ti := testImage{path: img.Path}
	f, err := os.Open(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	ti.size = fi.Size()
	if ti.m, err = bmap.Scan(context.Background(), f, bmap.ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	var xml bytes.Buffer
	if err := ti.m.WriteXML(&xml); err != nil {
		t.Fatal(err)
	}
	ti.bmap = xml.Bytes()
	return ti
}

// fakeStation is the netboot station's factory API as the board sees it:
// it checks the token, records reports and progress, answers with plans from
// decide, and serves the image with Range support.
type fakeStation struct {
	t   *testing.T
	img testImage
	// decide answers a report (hw != nil) or a plan poll (hw == nil); n
	// counts the calls from 1.
	decide func(n int, hw *protocol.HardwareReport) protocol.StationPlan
	// dropAt, when positive, cuts the first full image download after that
	// many bytes.
	dropAt int64
	// failReports answers the first n reports with 503.
	failReports int

	mu         sync.Mutex
	calls      int
	reports    []protocol.HardwareReport
	events     []protocol.StationProgress
	imageGets  []string // the Range header of each image request
	bmapGets   int
	dropped    bool
	badAuth    int
	lastReport *protocol.HardwareReport
}

func (s *fakeStation) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+protocol.StationReportPath, func(w http.ResponseWriter, r *http.Request) {
		var hw protocol.HardwareReport
		if err := json.NewDecoder(r.Body).Decode(&hw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		if s.failReports > 0 {
			s.failReports--
			s.mu.Unlock()
			http.Error(w, "station restarting", http.StatusServiceUnavailable)
			return
		}
		s.reports = append(s.reports, hw)
		s.lastReport = &hw
		s.calls++
		p := s.decide(s.calls, &hw)
		s.mu.Unlock()
		json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("GET "+protocol.StationPlanPath, func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.calls++
		p := s.decide(s.calls, nil)
		s.mu.Unlock()
		json.NewEncoder(w).Encode(p)
	})
	mux.HandleFunc("POST "+protocol.StationProgressPath, func(w http.ResponseWriter, r *http.Request) {
		var p protocol.StationProgress
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, p)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+protocol.StationImagePath+".bmap", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.bmapGets++
		s.mu.Unlock()
		w.Write(s.img.bmap)
	})
	mux.HandleFunc("GET "+protocol.StationImagePath, func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.imageGets = append(s.imageGets, r.Header.Get("Range"))
		drop := s.dropAt > 0 && !s.dropped && r.Header.Get("Range") == ""
		if drop {
			s.dropped = true
		}
		s.mu.Unlock()
		f, err := os.Open(s.img.path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer f.Close()
		w.Header().Set("ETag", `"image-1"`)
		if drop {
			w.Header().Set("Content-Length", fmt.Sprint(s.img.size))
			w.WriteHeader(http.StatusOK)
			io.CopyN(w, f, s.dropAt)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the connection drops mid-image
		}
		http.ServeContent(w, r, "image", time.Unix(1715000000, 0), f)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			s.mu.Lock()
			s.badAuth++
			s.mu.Unlock()
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *fakeStation) installPlan() protocol.StationPlan {
	return protocol.StationPlan{
		Action: protocol.PlanInstall, Profile: "lekiwi",
		RobotID: testRobot, Hostname: "kiwi-a1b2", EnrollToken: "lke_enroll_1", CAPEM: "FLEET CA\n",
		ImageSize: s.img.size, ImageVersion: "1", Storage: "mmcblk0",
	}
}

// matchThenInstall holds what profiles.MatchEmbedded holds and installs
// what it matches, as the real station does.
func (s *fakeStation) matchThenInstall(_ int, hw *protocol.HardwareReport) protocol.StationPlan {
	if hw == nil {
		hw = s.lastReport
	}
	m, err := profiles.MatchEmbedded(observed(hw.ServoBuses))
	if err != nil {
		s.t.Error(err)
	}
	if m.Held() {
		return protocol.StationPlan{Action: protocol.PlanHold, Reason: m.Reason}
	}
	return s.installPlan()
}

func observed(bs []protocol.ServoBus) []profiles.ObservedBus {
	out := make([]profiles.ObservedBus, len(bs))
	for i, b := range bs {
		out[i] = profiles.ObservedBus{Device: b.Device, IDs: b.IDs, Garbled: b.Garbled, Error: b.Error}
	}
	return out
}

// trail is the run's reports with repeated byte progress folded:
// "install/started" once however many byte reports followed.
func (s *fakeStation) trail() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		k := e.Step + "/" + e.Status
		if e.Status == StatusStarted && len(out) > 0 && out[len(out)-1] == k {
			continue
		}
		out = append(out, k)
	}
	return out
}

func (s *fakeStation) find(step, status string) []protocol.StationProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []protocol.StationProgress
	for _, e := range s.events {
		if e.Step == step && e.Status == status {
			out = append(out, e)
		}
	}
	return out
}

// fileDisk is a regular file standing in for the board's disk, opened
// without truncating (what is already on it matters). corruptAt, when
// positive, flips a byte written there: a disk that stores bad data.
type fileDisk struct {
	*os.File
	corruptAt int64
}

func (d *fileDisk) Name() string { return d.File.Name() }

func (d *fileDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.corruptAt > 0 && off <= d.corruptAt && d.corruptAt < off+int64(len(p)) {
		q := bytes.Clone(p)
		q[d.corruptAt-off] ^= 0x40
		p = q
	}
	return d.File.WriteAt(p, off)
}

// harness is one board: the lekiwi-pi5 fixture, a servo bus whose answers
// the test picks per probe, a disk file under a temporary /dev.
type harness struct {
	t        *testing.T
	st       *fakeStation
	srv      *httptest.Server
	dev      string // the disk file
	probes   atomic.Int32
	reboots  atomic.Int32
	sleeps   []time.Duration
	sleepsMu sync.Mutex
	log      bytes.Buffer
	opts     RunOptions
}

func newHarness(t *testing.T, img testImage, busIDs func(probe int) []int) *harness {
	t.Helper()
	h := &harness{t: t}
	h.st = &fakeStation{t: t, img: img}
	h.st.decide = h.st.matchThenInstall
	h.srv = httptest.NewServer(h.st.handler())
	t.Cleanup(h.srv.Close)
	devRoot := t.TempDir()
	h.dev = filepath.Join(devRoot, "mmcblk0")
	if err := os.WriteFile(h.dev, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(h.dev, img.size+3<<20); err != nil { // a disk larger than the image
		t.Fatal(err)
	}
	fx := fixture("lekiwi-pi5")
	var busMu sync.Mutex
	opened := map[string]int{}
	h.opts = RunOptions{
		StationURL: h.srv.URL,
		Token:      testToken,
		Probe: Options{ProcRoot: fx.ProcRoot, SysRoot: fx.SysRoot, DevRoot: devRoot,
			OpenBus: func(dev string) (servo.Pinger, error) {
				busMu.Lock()
				opened[dev]++
				n := opened[dev]
				busMu.Unlock()
				return servo.NewBus(&servo.Sim{IDs: busIDs(n)}, dev, 3*time.Millisecond), nil
			}},
		OpenTarget: func(path string, imageSize int64) (flash.Target, int64, error) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return nil, 0, err
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return nil, 0, err
			}
			return &fileDisk{File: f}, fi.Size(), nil
		},
		Reboot: reboot.Func(func(context.Context, string) error { h.reboots.Add(1); return nil }),
		Log:    &h.log,
		Sleep: func(ctx context.Context, d time.Duration) error {
			h.sleepsMu.Lock()
			h.sleeps = append(h.sleeps, d)
			n := len(h.sleeps)
			h.sleepsMu.Unlock()
			if n > 200 {
				t.Errorf("more than 200 waits: the run loops")
				return errors.New("test: too many waits")
			}
			return ctx.Err()
		},
		ProgressEvery: time.Millisecond,
	}
	return h
}

func (h *harness) run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return Run(ctx, h.opts)
}

// checkInstalled checks the disk: the image byte for byte outside the
// partitions the identity goes into, the identity inside them, and
// nothing past the image.
func (h *harness) checkInstalled() {
	t := h.t
	t.Helper()
	disk, img := openRO(t, h.dev), openRO(t, h.st.img.path)
	size := h.st.img.size
	plan, err := layout.ReadGPT(img, size)
	if err != nil {
		t.Fatal(err)
	}
	identity := map[int]bool{layout.BootA: true, layout.BootB: true, layout.Persistent: true}
	prev := int64(0)
	for n := 1; n <= len(plan.Partitions); n++ {
		p := plan.Part(n)
		if !sameBytes(t, disk, img, prev, p.Start) {
			t.Errorf("bytes %d–%d (before partition %d) differ from the image", prev, p.Start, n)
		}
		prev = p.End()
		if !identity[n] && !sameBytes(t, disk, img, p.Start, p.End()) {
			t.Errorf("partition %d (%s) differs from the image", n, p.Name)
		}
	}
	if !sameBytes(t, disk, img, prev, size) {
		t.Errorf("the image's tail %d–%d differs", prev, size)
	}
	fi, _ := disk.Stat()
	if !sameBytes(t, disk, bytes.NewReader(make([]byte, fi.Size())), size, fi.Size()) {
		t.Errorf("the disk past the image was written")
	}
	for _, n := range []int{layout.BootA, layout.BootB} {
		p := plan.Part(n)
		buf := make([]byte, p.Size)
		if _, err := disk.ReadAt(buf, p.Start); err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(buf, []byte(testRobot)) {
			t.Errorf("boot partition %d has no cloud-init seed naming %s", n, testRobot)
		}
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Logf("debugfs not installed (e2fsprogs): the persistent partition's files are not checked")
		return
	}
	p := plan.Part(layout.Persistent)
	part := filepath.Join(t.TempDir(), "persistent")
	pf, err := os.Create(part)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(pf, io.NewSectionReader(disk, p.Start, p.Size))
	pf.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", part).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of the persistent partition: %v\n%s", err, out)
	}
	for _, c := range [][2]string{
		{"cat /robot.env", "LEKIWI_AGENT_ROBOT_ID=" + testRobot + "\n"},
		{"cat /agent/identity/ca.pem", "FLEET CA"},
		{"cat /agent/enrollment-token", "lke_enroll_1"},
		{"stat /agent/enrollment-token", "Mode:  0600"},
	} {
		out, _ := exec.Command("debugfs", "-R", c[0], part).CombinedOutput()
		if !strings.Contains(string(out), c[1]) {
			t.Errorf("debugfs %s: want %q in %s", c[0], c[1], out)
		}
	}
}

func openRO(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// sameBytes compares a and b over [off, end) a MiB at a time.
func sameBytes(t *testing.T, a, b io.ReaderAt, off, end int64) bool {
	t.Helper()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for ; off < end; off += int64(len(ba)) {
		n := min(int64(len(ba)), end-off)
		if _, err := a.ReadAt(ba[:n], off); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadAt(bb[:n], off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			return false
		}
	}
	return true
}

// copyMapped writes the image's mapped blocks onto the disk, as a finished
// flash leaves it.
func copyMapped(t *testing.T, img testImage, dev string) {
	t.Helper()
	src := openRO(t, img.path)
	dst, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	bs := int64(img.m.BlockSize)
	for _, r := range img.m.Ranges {
		off, end := r.First*bs, min((r.Last+1)*bs, img.size)
		if _, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, end-off)); err != nil {
			t.Fatal(err)
		}
	}
}

func lekiwiBus(int) []int { return ids(1, 9) }

var fullRun = []string{
	"probe/started", "probe/done",
	"install/started", "install/done", "verify/started", "verify/done",
	"identity/started", "identity/done", "reboot/started",
}

func equalTrail(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("progress\n got %v\nwant %v", got, want)
	}
}

func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image")
	}
	img := buildTestImage(t)

	t.Run("waits twice, then installs", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		h.st.failReports = 1 // the station is restarting at first
		h.st.decide = func(n int, hw *protocol.HardwareReport) protocol.StationPlan {
			if n <= 2 {
				return protocol.StationPlan{Action: protocol.PlanWait, RetryAfterSeconds: 3, Reason: "control unreachable"}
			}
			return h.st.installPlan()
		}
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		h.checkInstalled()
		equalTrail(t, h.st.trail(), append([]string{"probe/started", "probe/failed", "probe/done", "identity/waiting"}, fullRun[2:]...)...)
		if h.reboots.Load() != 1 {
			t.Errorf("rebooted %d times, want once", h.reboots.Load())
		}
		// a retry of the report after the 503, then two 3 s waits
		if fmt.Sprint(h.sleeps) != "[2s 3s 3s]" {
			t.Errorf("waits %v, want [2s 3s 3s]", h.sleeps)
		}
		if f := h.st.find(StepProbe, StatusFailed); len(f) != 1 || !strings.Contains(f[0].Detail, "503") && !strings.Contains(f[0].Detail, "Service Unavailable") || !strings.Contains(f[0].Detail, "retrying in 2s") {
			t.Errorf("probe failures %+v, want the 503 and the retry", f)
		}
		if h.st.calls != 3 || len(h.st.reports) != 1 || h.st.badAuth != 0 {
			t.Errorf("plan calls %d, reports %d, bad auth %d", h.st.calls, len(h.st.reports), h.st.badAuth)
		}
		if w := h.st.find(StepIdentity, StatusWaiting); len(w) != 1 || w[0].Detail != "control unreachable" {
			t.Errorf("waiting reports %+v", w)
		}
		bytesDone := h.st.find(StepInstall, StatusStarted)
		if last := bytesDone[len(bytesDone)-1]; len(bytesDone) < 2 || last.Total != img.size || last.Done <= 0 {
			t.Errorf("install byte progress %+v", bytesDone)
		}
		if !strings.Contains(h.log.String(), "waiting: control unreachable") {
			t.Errorf("console log lacks the wait:\n%s", h.log.String())
		}
	})

	t.Run("held until a technician fixes the bus", func(t *testing.T) {
		// servo 9 does not answer on the first two probes
		h := newHarness(t, img, func(probe int) []int {
			if probe <= 2 {
				return ids(1, 8)
			}
			return ids(1, 9)
		})
		h.opts.HoldPoll = 7 * time.Second
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		h.checkInstalled()
		equalTrail(t, h.st.trail(), append(fullRun[:2:2], append([]string{"match/held"}, fullRun[2:]...)...)...)
		held := h.st.find(StepMatch, StatusHeld)
		if len(held) != 1 || !strings.Contains(held[0].Detail, "ttyACM0") {
			t.Errorf("held reports %+v, want one naming the port", held)
		}
		// report (1-8) → hold; probe (1-8, unchanged) → plan poll → hold;
		// probe (1-9) → report → install
		if len(h.st.reports) != 2 || h.st.calls != 3 {
			t.Errorf("reports %d, plan calls %d; want 2, 3", len(h.st.reports), h.st.calls)
		}
		if fmt.Sprint(h.sleeps) != "[7s 7s]" {
			t.Errorf("waits %v, want [7s 7s]", h.sleeps)
		}
		if !strings.Contains(h.log.String(), "HELD: ") || h.reboots.Load() != 1 {
			t.Errorf("reboots %d; log:\n%s", h.reboots.Load(), h.log.String())
		}
	})

	t.Run("held, then released by the station", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		h.st.decide = func(n int, hw *protocol.HardwareReport) protocol.StationPlan {
			if n <= 3 {
				return protocol.StationPlan{Action: protocol.PlanHold, Reason: "batch paused by the floor lead", RetryAfterSeconds: 2}
			}
			return h.st.installPlan()
		}
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		h.checkInstalled()
		if len(h.st.find(StepMatch, StatusHeld)) != 1 || len(h.st.reports) != 1 || fmt.Sprint(h.sleeps) != "[2s 2s 2s]" {
			t.Errorf("held %d times, %d reports, waits %v", len(h.st.find(StepMatch, StatusHeld)), len(h.st.reports), h.sleeps)
		}
	})

	t.Run("onto a loop device", func(t *testing.T) {
		// The real target: flash.OpenBlockTarget (O_DIRECT, O_EXCL) for the
		// image, a buffered descriptor for the identity.
		if os.Geteuid() != 0 {
			t.Skip("needs root for a loop device")
		}
		if _, err := exec.LookPath("losetup"); err != nil {
			t.Skip("losetup not installed (mount)")
		}
		h := newHarness(t, img, lekiwiBus)
		out, err := exec.Command("losetup", "--find", "--show", h.dev).Output()
		if err != nil {
			t.Skipf("losetup: %v (no loop devices here?)", err)
		}
		loop := strings.TrimSpace(string(out))
		detached := false
		detach := func() {
			if !detached {
				detached = true
				if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
					t.Errorf("losetup -d %s: %v %s", loop, err, out)
				}
			}
		}
		defer detach()
		// the disk the plan names is the loop device
		node := filepath.Join(h.opts.Probe.DevRoot, "mmcblk0")
		if err := os.Rename(node, node+".backing"); err != nil {
			t.Fatal(err)
		}
		h.dev = node + ".backing"
		if err := os.Symlink(loop, node); err != nil {
			t.Fatal(err)
		}
		h.opts.OpenTarget = nil
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		detach()
		h.checkInstalled()
		equalTrail(t, h.st.trail(), fullRun...)
	})

	t.Run("an image of another profile", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		h.st.decide = func(int, *protocol.HardwareReport) protocol.StationPlan {
			p := h.st.installPlan()
			p.Profile = "xle"
			return p
		}
		err := h.run()
		if err == nil || !strings.Contains(err.Error(), "served a lekiwi image for a xle robot") {
			t.Fatalf("error %v", err)
		}
		equalTrail(t, h.st.trail(), append(fullRun[:len(fullRun)-3:len(fullRun)-3], "identity/started", "identity/failed")...)
		if h.reboots.Load() != 0 || len(h.st.imageGets) != 1 || len(h.sleeps) != 0 {
			t.Errorf("reboots %d, image downloads %d, waits %v: want a permanent failure, no retry", h.reboots.Load(), len(h.st.imageGets), h.sleeps)
		}
	})

	t.Run("a dropped stream resumes", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		h.st.dropAt = img.size / 2
		h.opts.Source.RetryBackoff = time.Millisecond
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		h.checkInstalled()
		equalTrail(t, h.st.trail(), fullRun...)
		if len(h.st.imageGets) != 2 || h.st.imageGets[0] != "" || !strings.HasPrefix(h.st.imageGets[1], "bytes=") {
			t.Errorf("image requests (Range) %q, want a full one then a resume", h.st.imageGets)
		}
		if h.reboots.Load() != 1 {
			t.Errorf("rebooted %d times", h.reboots.Load())
		}
	})

	t.Run("the image is already on the disk", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		copyMapped(t, img, h.dev)
		if err := h.run(); err != nil {
			t.Fatalf("%v\n%s", err, h.log.String())
		}
		h.checkInstalled()
		equalTrail(t, h.st.trail(), "probe/started", "probe/done", "install/done", "identity/started", "identity/done", "reboot/started")
		if len(h.st.imageGets) != 0 || h.st.bmapGets != 1 {
			t.Errorf("image requests %q, block map requests %d; want none and one", h.st.imageGets, h.st.bmapGets)
		}
		if d := h.st.find(StepInstall, StatusDone); len(d) != 1 || !strings.Contains(d[0].Detail, "already on") {
			t.Errorf("install done %+v", d)
		}
	})

	t.Run("a disk that stores bad data fails verification", func(t *testing.T) {
		h := newHarness(t, img, lekiwiBus)
		var bad int64
		for _, r := range img.m.Ranges {
			if off := r.First * int64(img.m.BlockSize); off >= 2<<20 && off < img.size-(2<<20) {
				bad = off + 100
				break
			}
		}
		if bad == 0 {
			t.Fatal("no mapped range in the image's middle")
		}
		open := h.opts.OpenTarget
		h.opts.OpenTarget = func(path string, size int64) (flash.Target, int64, error) {
			tg, n, err := open(path, size)
			if err == nil {
				tg.(*fileDisk).corruptAt = bad
			}
			return tg, n, err
		}
		h.opts.Attempts = 2
		err := h.run()
		if err == nil {
			t.Fatal("run succeeded on a disk that corrupts data")
		}
		equalTrail(t, h.st.trail(),
			"probe/started", "probe/done",
			"install/started", "install/done", "verify/started", "verify/failed",
			"install/started", "install/done", "verify/started", "verify/failed")
		failed := h.st.find(StepVerify, StatusFailed)
		if len(failed) != 2 || !strings.Contains(failed[0].Detail, "retrying") || !strings.Contains(failed[1].Detail, "gave up after 2 attempts") {
			t.Fatalf("verify failures %+v", failed)
		}
		for _, f := range failed {
			if !strings.Contains(f.Detail, "differs from the source") || !strings.Contains(f.Detail, fmt.Sprint(bad-100)) {
				t.Errorf("failure %q does not name the bad range starting at %d", f.Detail, bad-100)
			}
		}
		if !strings.Contains(err.Error(), "differs") || !strings.Contains(h.log.String(), "FAILED") {
			t.Errorf("error %v; log:\n%s", err, h.log.String())
		}
		if h.reboots.Load() != 0 || len(h.st.imageGets) != 2 {
			t.Errorf("reboots %d, image downloads %d; want 0, 2", h.reboots.Load(), len(h.st.imageGets))
		}
	})
}

// Plans the board cannot carry out fail at once, with a reason, and
// without touching the disk or rebooting.
func TestRunRefusesBadPlans(t *testing.T) {
	img := testImage{size: 8 << 20}
	for _, tc := range []struct {
		name       string
		plan       func(p protocol.StationPlan) protocol.StationPlan
		step, want string
	}{
		{"unknown disk", func(p protocol.StationPlan) protocol.StationPlan { p.Storage = "nvme0n1"; return p }, StepInstall, "has only [mmcblk0]"},
		{"path as disk", func(p protocol.StationPlan) protocol.StationPlan { p.Storage = "../etc"; return p }, StepInstall, "not a device name"},
		{"image too large", func(p protocol.StationPlan) protocol.StationPlan { p.ImageSize = 1 << 40; return p }, StepInstall, "fit a larger sd"},
		{"no identity", func(p protocol.StationPlan) protocol.StationPlan { p.EnrollToken = ""; return p }, StepIdentity, "no robot id or enrollment token"},
		{"unknown action", func(p protocol.StationPlan) protocol.StationPlan { p.Action = "dance"; return p }, StepProbe, `asked for "dance"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, img, lekiwiBus)
			h.st.decide = func(int, *protocol.HardwareReport) protocol.StationPlan { return tc.plan(h.st.installPlan()) }
			err := h.run()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			failed := h.st.find(tc.step, StatusFailed)
			if len(failed) != 1 || !strings.Contains(failed[0].Detail, tc.want) {
				t.Errorf("failed reports %+v", failed)
			}
			if h.reboots.Load() != 0 || len(h.st.imageGets) != 0 || len(h.sleeps) != 0 {
				t.Errorf("reboots %d, image requests %d, waits %v", h.reboots.Load(), len(h.st.imageGets), h.sleeps)
			}
		})
	}
}

func TestRunDoneReboots(t *testing.T) {
	h := newHarness(t, testImage{}, lekiwiBus)
	h.st.decide = func(int, *protocol.HardwareReport) protocol.StationPlan {
		return protocol.StationPlan{Action: protocol.PlanDone}
	}
	if err := h.run(); err != nil {
		t.Fatal(err)
	}
	equalTrail(t, h.st.trail(), "probe/started", "probe/done", "reboot/started")
	if h.reboots.Load() != 1 {
		t.Errorf("rebooted %d times", h.reboots.Load())
	}
}

func TestRunWrongToken(t *testing.T) {
	h := newHarness(t, testImage{}, lekiwiBus)
	h.opts.Token = "stale"
	err := h.run()
	if err == nil || !strings.Contains(err.Error(), "power-cycle the board") {
		t.Fatalf("error %v, want the token explained", err)
	}
	if len(h.sleeps) != 0 {
		t.Errorf("retried a refused token: waits %v", h.sleeps)
	}
}

func TestRunStationFromCmdline(t *testing.T) {
	h := newHarness(t, testImage{}, lekiwiBus)
	h.st.decide = func(int, *protocol.HardwareReport) protocol.StationPlan {
		return protocol.StationPlan{Action: protocol.PlanDone}
	}
	proc := t.TempDir()
	for _, f := range []string{"cpuinfo", "meminfo", "device-tree"} {
		if err := os.Symlink(filepath.Join(mustAbs(t, h.opts.Probe.ProcRoot), f), filepath.Join(proc, f)); err != nil {
			t.Fatal(err)
		}
	}
	cmdline := fmt.Sprintf("console=serial0,115200 %s=%s %s=%s rdinit=/init\n", protocol.KernelArgStation, h.srv.URL, protocol.KernelArgToken, testToken)
	if err := os.WriteFile(filepath.Join(proc, "cmdline"), []byte(cmdline), 0o644); err != nil {
		t.Fatal(err)
	}
	h.opts.StationURL, h.opts.Token, h.opts.Probe.ProcRoot = "", "", proc
	if err := h.run(); err != nil {
		t.Fatal(err)
	}
	if h.reboots.Load() != 1 || len(h.st.reports) != 1 || h.st.reports[0].Board.Serial != testSerial {
		t.Errorf("reboots %d, reports %+v", h.reboots.Load(), h.st.reports)
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
