package testbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/netboot/station"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/factory"
	"github.com/lekiwi/heartbeat/testbench/lab"
)

const factoryFixtures = "../agent/factory/testdata"

// ids is first..last.
func idRange(first, last int) []int {
	var out []int
	for i := first; i <= last; i++ {
		out = append(out, i)
	}
	return out
}

// floorBoard is one board of a test and what it should become.
type floorBoard struct {
	*factory.Board
	profile string // "" for a board the station must hold
	sys     *factory.InstalledSystem
	stop    func() error
}

func (b *floorBoard) robotID() string { return protocol.FactoryRobotID(b.profile, b.ShortSerial()) }

// newFloorBoard makes board i: a LeKiwi (one bus answering 1–9), an XLE
// (buses answering 1–8 and 1–9, plus a leader arm answering 1–6 that does
// not count) or, for kind "unknown", a LeKiwi whose bus answers only 1–8.
func newFloorBoard(dir string, i int, kind string, log io.Writer) *floorBoard {
	fb := &factory.Board{Serial: fmt.Sprintf("10000000fac7%04x", i), Dir: filepath.Join(dir, fmt.Sprintf("board%02d", i)), Log: log}
	b := &floorBoard{Board: fb, profile: kind}
	switch kind {
	case "lekiwi":
		fb.Fixture, fb.Buses = filepath.Join(factoryFixtures, "lekiwi-pi5"), map[string][]int{"ttyACM0": idRange(1, 9)}
	case "xle":
		fb.Fixture = filepath.Join(factoryFixtures, "xle-pi5")
		fb.Buses = map[string][]int{"ttyACM0": idRange(1, 8), "ttyACM1": idRange(1, 9), "ttyUSB0": idRange(1, 6)}
	default:
		b.profile = ""
		fb.Fixture, fb.Buses = filepath.Join(factoryFixtures, "lekiwi-pi5"), map[string][]int{"ttyACM0": idRange(1, 8)}
	}
	return b
}

// factoryLab is control, the images and a station, on loopback.
type factoryLab struct {
	t        *testing.T
	dir      string
	ctlOpts  lab.ControlOptions
	ctl      *node.Node
	station  *station.Station
	stopSt   func()
	diskSize int64
	log      io.Writer
}

func newFactoryLab(t *testing.T) *factoryLab {
	t.Helper()
	if _, err := os.Stat(factoryFixtures); err != nil {
		t.Skipf("board fixtures not found: %v", err)
	}
	dir := t.TempDir()
	listen, _ := lab.FreeAddr()
	dbAddr, _ := lab.FreeAddr()
	l := &factoryLab{t: t, dir: dir, log: io.Discard}
	if testing.Verbose() && os.Getenv("FACTORY_LOG") != "" {
		l.log = os.Stderr
	}
	l.ctlOpts = lab.ControlOptions{Dir: filepath.Join(dir, "control"), Listen: listen, DBAddress: dbAddr}
	l.ctl = startControl(t, l.ctlOpts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// One image per profile, whose agent connects to this control.
	images := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, p := range []string{"lekiwi", "xle"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := factory.BuildImage(ctx, filepath.Join(dir, "images"), p, []string{l.ctl.URL()})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			images[p] = img
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, img := range images {
		fi, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		l.diskSize = max(l.diskSize, fi.Size()+16<<20)
	}

	// The station's node certificate, issued by the fleet CA as
	// `provision ca issue-node` does, in files.
	ca := l.ctl.CA()
	certPEM, keyPEM, err := ca.IssueNode(pki.NodeRequest{Name: "station-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "station-creds")
	files := map[string][]byte{"node.crt": certPEM, "node.key": keyPEM, "ca.crt": ca.CertPEM}
	if err := os.MkdirAll(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(creds, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	client, err := controlapi.New(controlapi.Config{URL: l.ctl.URL(), CertFile: filepath.Join(creds, "node.crt"),
		KeyFile: filepath.Join(creds, "node.key"), CAFile: filepath.Join(creds, "ca.crt"), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}

	boot := filepath.Join(dir, "boot")
	for name, content := range map[string]string{
		"vmlinuz":             strings.Repeat("provisioning kernel ", 2000),
		"initrd.img":          strings.Repeat("provisioning initramfs ", 3000),
		"bcm2712-rpi-5-b.dtb": "pi 5 device tree",
	} {
		p := filepath.Join(boot, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := station.New(station.Config{
		StateDir: filepath.Join(dir, "station"), BootDir: boot,
		Image: images["lekiwi"], ProfileImages: images,
		HTTPAddr: "127.0.0.1:0", TFTPAddr: "127.0.0.1:0", TFTPTimeout: time.Second,
		Control: client, ControlTimeout: 2 * time.Second,
		IdentityRetry: 100 * time.Millisecond, IdentityMaxBackoff: 500 * time.Millisecond,
		EventRetry: 50 * time.Millisecond, EventMaxBackoff: 500 * time.Millisecond, PlanRetryAfter: time.Second,
		Logger: slog.New(slog.NewTextHandler(l.log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(sctx) }()
	var once sync.Once
	l.station = st
	l.stopSt = func() {
		once.Do(func() {
			scancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("station: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("station did not stop within 15 s")
			}
		})
	}
	t.Cleanup(l.stopSt)
	return l
}

// provision takes a board from bare to a running agent: netboot, factory
// run, reboot, read the installed system, start the agent. The agent is
// stopped at cleanup.
func (l *factoryLab) provision(ctx context.Context, b *floorBoard) error {
	tftp := netip.MustParseAddrPort(l.station.TFTPAddr().String())
	cmdline, err := b.Netboot(ctx, tftp)
	if err != nil {
		return err
	}
	if err := b.Provision(ctx, cmdline, factory.RunOptions{DiskSize: l.diskSize}); err != nil {
		return fmt.Errorf("board %s: %w", b.Serial, err)
	}
	if b.sys, err = b.ReadInstalled(); err != nil {
		return err
	}
	b.stop = b.Boot(context.Background(), b.sys)
	l.t.Cleanup(func() {
		if err := b.stop(); err != nil {
			l.t.Errorf("board %s agent: %v", b.Serial, err)
		}
	})
	return nil
}

// provisionAll provisions boards, at most par at a time, and returns
// every board's error.
func (l *factoryLab) provisionAll(ctx context.Context, boards []*floorBoard, par int) error {
	sem := make(chan struct{}, par)
	errs := make([]error, len(boards))
	var wg sync.WaitGroup
	for i, b := range boards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = l.provision(ctx, b)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// statusOf fetches the station's /status over HTTP, as a technician's
// browser would, and returns the board with serial.
func (l *factoryLab) statusOf(serial string) (station.BoardStatus, error) {
	resp, err := http.Get("http://" + l.station.HTTPAddr().String() + station.StatusPath)
	if err != nil {
		return station.BoardStatus{}, err
	}
	defer resp.Body.Close()
	var rep station.StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return station.BoardStatus{}, err
	}
	for _, b := range rep.Boards {
		if b.Serial == serial {
			return b, nil
		}
	}
	return station.BoardStatus{}, fmt.Errorf("board %s is not in the station's /status", serial)
}

// robots lists every robot control knows, through its API.
func robotsOf(ctx context.Context, t *testing.T, c *lab.APIClient) map[string]store.Robot {
	t.Helper()
	var list api.RobotList
	if err := c.Get(ctx, "/v1/robots?limit=1000", &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]store.Robot{}
	for _, r := range list.Robots {
		out[r.ID] = r
	}
	return out
}

// factorySteps is every FactoryStep control stored, by board serial.
func factorySteps(ctx context.Context, t *testing.T, c *lab.APIClient) map[string][]protocol.FactoryStep {
	t.Helper()
	out := map[string][]protocol.FactoryStep{}
	after := int64(0)
	for range 100 {
		var page api.EventPage
		if err := c.Get(ctx, fmt.Sprintf("/v1/events?limit=1000&after=%d", after), &page); err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			var fs protocol.FactoryStep
			if e.Type == protocol.EventFactoryStep && json.Unmarshal(e.Data, &fs) == nil {
				out[fs.Serial] = append(out[fs.Serial], fs)
			}
		}
		if len(page.Events) == 0 {
			return out
		}
		after = page.Next
	}
	t.Fatal("more than 100 pages of events")
	return nil
}

func hasFactoryStep(steps []protocol.FactoryStep, step, status string) bool {
	return slices.ContainsFunc(steps, func(s protocol.FactoryStep) bool { return s.Step == step && s.Status == status })
}

// checkRobots checks that every board in want is online in control as the
// robot its profile and serial make, with a certificate of its own that
// is the one on its disk.
func checkRobots(ctx context.Context, t *testing.T, c *lab.APIClient, want []*floorBoard) {
	t.Helper()
	var robots map[string]store.Robot
	waitFor(t, 30*time.Second, fmt.Sprintf("%d robots online in control", len(want)), func() bool {
		robots = robotsOf(ctx, t, c)
		for _, b := range want {
			if r, ok := robots[b.robotID()]; !ok || r.Status.State != store.StateOnline {
				return false
			}
		}
		return true
	})
	if len(robots) != len(want) {
		t.Errorf("control has %d robots, want %d", len(robots), len(want))
	}
	serials := map[string]string{}
	tokens := map[string]string{}
	for _, b := range want {
		id := b.robotID()
		r := robots[id]
		if string(r.Type) != b.profile {
			t.Errorf("%s: type %q, want %q (its profile)", id, r.Type, b.profile)
		}
		if r.Hardware.Serial != b.Serial {
			t.Errorf("%s: hardware serial %q, want the board's %s", id, r.Hardware.Serial, b.Serial)
		}
		// The disk holds this board's own identity and the image of its
		// profile.
		if b.sys.Config.RobotID != id || b.sys.Info.Profile != b.profile {
			t.Errorf("board %s: the disk says robot %q with a %s image, want %s with a %s image", b.Serial, b.sys.Config.RobotID, b.sys.Info.Profile, id, b.profile)
		}
		if typ, err := b.sys.RobotType(); err != nil || string(typ) != b.profile {
			t.Errorf("board %s: the installed profile makes robot type %q (%v)", b.Serial, typ, err)
		}
		tok := strings.TrimSpace(string(b.sys.Files["agent/enrollment-token"]))
		if !strings.HasPrefix(tok, api.EnrollmentTokenPrefix) {
			t.Errorf("board %s: enrollment token on the disk %q", b.Serial, tok)
		} else if other, dup := tokens[tok]; dup {
			t.Errorf("boards %s and %s got the same enrollment token", other, b.Serial)
		}
		tokens[tok] = b.Serial
		id2, err := identity.Load(b.sys.IdentityDir())
		if err != nil {
			t.Errorf("board %s: no identity after enrollment: %v", b.Serial, err)
			continue
		}
		cert := id2.Certificate()
		uris := make([]string, len(cert.URIs))
		for i, u := range cert.URIs {
			uris[i] = u.String()
		}
		if cert.Subject.CommonName != id || !slices.Equal(uris, []string{protocol.RobotURI(id).String()}) {
			t.Errorf("board %s: certificate CN %q URIs %v, want %s", b.Serial, cert.Subject.CommonName, uris, id)
		}
		serial := pki.SerialHex(cert)
		if r.Certificate == nil || r.Certificate.Serial != serial {
			t.Errorf("%s: control records certificate %+v, the robot holds %s", id, r.Certificate, serial)
		}
		if other, dup := serials[serial]; dup {
			t.Errorf("robots %s and %s hold the same certificate %s", other, id, serial)
		}
		serials[serial] = id
		if _, err := os.Stat(filepath.Join(b.sys.Root, "var/lib/lekiwi/agent/enrollment-token")); !os.IsNotExist(err) {
			t.Errorf("board %s: the used enrollment token is still on the disk (%v)", b.Serial, err)
		}
	}
}

// 20 bare boards — 10 LeKiwi, 9 XLE and one whose
// servo bus answers only 8 motors — go through the station; 19 come out
// as registered robots online with their profile and a certificate of
// their own, the 20th is held with the matcher's reason, and control has
// every board's factory steps.
func TestFactoryFloor(t *testing.T) {
	start := time.Now()
	l := newFactoryLab(t)
	t.Logf("control, two images and the station ready in %s", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var good []*floorBoard
	var unknown *floorBoard
	for i := range 20 {
		kind := "lekiwi"
		switch {
		case i == 13:
			kind = "unknown"
		case i%2 == 1:
			kind = "xle"
		}
		b := newFloorBoard(l.dir, i, kind, l.log)
		if kind == "unknown" {
			unknown = b
		} else {
			good = append(good, b)
		}
	}

	// The held board waits (re-probing) for a technician until the end.
	heldCtx, stopHeld := context.WithCancel(ctx)
	heldDone := make(chan error, 1)
	go func() {
		cmdline, err := unknown.Netboot(heldCtx, netip.MustParseAddrPort(l.station.TFTPAddr().String()))
		if err != nil {
			heldDone <- err
			return
		}
		heldDone <- unknown.Provision(heldCtx, cmdline, factory.RunOptions{DiskSize: l.diskSize})
	}()

	if err := l.provisionAll(ctx, good, 5); err != nil {
		t.Fatal(err)
	}
	t.Logf("19 boards installed and rebooted after %s", time.Since(start).Round(time.Millisecond))
	admin, err := lab.NewAPIClient(ctx, l.ctl, "admin")
	if err != nil {
		t.Fatal(err)
	}
	checkRobots(ctx, t, admin, good)
	t.Logf("19 robots online after %s", time.Since(start).Round(time.Millisecond))

	// The held board: the station shows why, with the matcher's words, and
	// control has no robot for it.
	// The board reports its serial ports under its /dev (a directory here).
	busDev := filepath.Join(unknown.Dir, "board", "dev", "ttyACM0")
	wantReason, err := profiles.MatchEmbedded([]profiles.ObservedBus{{Device: busDev, IDs: idRange(1, 8)}})
	if err != nil || !wantReason.Held() || wantReason.Reason == "" {
		t.Fatalf("the matcher does not hold a bus of 8 motors: %+v %v", wantReason, err)
	}
	var held station.BoardStatus
	deadline := time.Now().Add(10 * time.Second)
	for {
		held, err = l.statusOf(unknown.ShortSerial())
		if err == nil && held.Status == station.StatusHeld {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unknown board is not held at the station: %+v %v", held, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("held board: %+v", held)
	if held.Step != station.StepMatch || held.RobotID != "" || held.Profile != "" {
		t.Errorf("held board in /status: %+v", held)
	}
	if held.Reason != wantReason.Reason {
		t.Errorf("held board's reason %q, want the matcher's %q", held.Reason, wantReason.Reason)
	}
	for _, p := range []string{"lekiwi", "xle"} {
		var r store.Robot
		if err := admin.Get(ctx, "/v1/robots/"+protocol.FactoryRobotID(p, unknown.ShortSerial()), &r); err == nil {
			t.Errorf("control has robot %s for the held board", r.ID)
		}
	}

	// The station learns from control that each robot came online, which
	// ends the board's run (online/done).
	waitFor(t, 20*time.Second, "every installed board online/done at the station", func() bool {
		for _, b := range good {
			if st, err := l.statusOf(b.ShortSerial()); err != nil || st.Step != station.StepOnline || st.Status != station.StatusDone {
				return false
			}
		}
		return true
	})
	// Control has every board's steps (the station's outbox delivered).
	waitFor(t, 10*time.Second, "the station's events delivered", func() bool { return l.station.Outbox().Pending == 0 })
	steps := factorySteps(ctx, t, admin)
	for _, b := range good {
		s := steps[b.ShortSerial()]
		// Boot steps come from the TFTP server's transfer records: the
		// last one ("initramfs sent", boot/done) may land after the board
		// already reported (the board here needs no seconds to start a
		// kernel), and the station then skips it, so only the start is
		// required.
		for _, want := range [][2]string{{"boot", "started"}, {"probe", "done"}, {"match", "done"}, {"identity", "done"},
			{"install", "done"}, {"verify", "done"}, {"online", "waiting"}, {"online", "done"}} {
			if !hasFactoryStep(s, want[0], want[1]) {
				t.Errorf("control has no %s/%s for board %s: %v", want[0], want[1], b.ShortSerial(), s)
			}
		}
		for _, e := range s {
			if e.Profile != "" && e.Profile != b.profile {
				t.Errorf("board %s (%s): a step with profile %s: %+v", b.ShortSerial(), b.profile, e.Profile, e)
			}
		}
		st, err := l.statusOf(b.ShortSerial())
		if err != nil || st.RobotID != b.robotID() || st.Profile != b.profile || st.Step != station.StepOnline {
			t.Errorf("board %s in /status: %+v %v", b.ShortSerial(), st, err)
		}
	}
	heldSteps := steps[unknown.ShortSerial()]
	if !slices.ContainsFunc(heldSteps, func(s protocol.FactoryStep) bool {
		return s.Step == "match" && s.Status == "held" && s.Detail == wantReason.Reason
	}) {
		t.Errorf("control has no match/held event with the reason for board %s: %v", unknown.ShortSerial(), heldSteps)
	}
	if hasFactoryStep(heldSteps, "identity", "done") || hasFactoryStep(heldSteps, "install", "started") {
		t.Errorf("the held board went on: %v", heldSteps)
	}
	if len(steps) != 20 {
		t.Errorf("control has factory steps for %d boards, want 20", len(steps))
	}

	stopHeld()
	if err := <-heldDone; err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("the held board's run ended with %v, want it still waiting when stopped", err)
	}
	if unknown.Rebooted() {
		t.Error("the held board rebooted")
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// While control is unreachable, boards wait at the identity step
// with a visible status, the station queues their events, and once
// control is back they finish by themselves and every queued event
// reaches control.
func TestFactoryControlOutage(t *testing.T) {
	start := time.Now()
	l := newFactoryLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var boards []*floorBoard
	for i := range 6 {
		kind := "lekiwi"
		if i%2 == 1 {
			kind = "xle"
		}
		boards = append(boards, newFloorBoard(l.dir, 100+i, kind, l.log))
	}

	closeControl(t, l.ctl)
	done := make(chan error, 1)
	go func() { done <- l.provisionAll(ctx, boards, len(boards)) }()

	waitFor(t, 20*time.Second, "every board waiting for control at the identity step", func() bool {
		for _, b := range boards {
			st, err := l.statusOf(b.ShortSerial())
			if err != nil || st.Step != station.StepIdentity || st.Status != station.StatusWaiting ||
				!strings.Contains(st.Reason, "waiting for control") || st.Profile != b.profile {
				return false
			}
		}
		return true
	})
	// They keep waiting (no board gives up, nothing is installed) while
	// control stays away, and the station keeps their events.
	time.Sleep(2 * time.Second)
	for _, b := range boards {
		if st, err := l.statusOf(b.ShortSerial()); err != nil || st.Step != station.StepIdentity || st.Status != station.StatusWaiting {
			t.Fatalf("board %s during the outage: %+v %v", b.ShortSerial(), st, err)
		}
		if b.Disk() != "" {
			t.Fatalf("board %s started installing without an identity", b.ShortSerial())
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the boards' runs ended during the outage: %v", err)
	default:
	}
	if ob := l.station.Outbox(); ob.Pending == 0 {
		t.Fatalf("the station has no events queued during the outage: %+v", ob)
	}
	t.Logf("6 boards waiting for control, %d events queued, after %s", l.station.Outbox().Pending, time.Since(start).Round(time.Millisecond))

	restart, rcancel := context.WithTimeout(ctx, time.Minute)
	ctl, err := lab.StartControl(restart, l.ctlOpts)
	rcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeControl(t, ctl) })
	l.ctl = ctl
	back := time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("6 boards installed %s after control came back", time.Since(back).Round(time.Millisecond))
	admin, err := lab.NewAPIClient(ctx, ctl, "admin")
	if err != nil {
		t.Fatal(err)
	}
	checkRobots(ctx, t, admin, boards)
	waitFor(t, 10*time.Second, "the station's queued events delivered", func() bool { return l.station.Outbox().Pending == 0 })
	steps := factorySteps(ctx, t, admin)
	for _, b := range boards {
		s := steps[b.ShortSerial()]
		waiting := slices.ContainsFunc(s, func(e protocol.FactoryStep) bool {
			return e.Step == "identity" && e.Status == "waiting" && strings.Contains(e.Detail, "waiting for control")
		})
		if !waiting || !hasFactoryStep(s, "identity", "done") || !hasFactoryStep(s, "online", "waiting") {
			t.Errorf("control's steps for board %s lack the wait for control or what followed: %v", b.ShortSerial(), s)
		}
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
