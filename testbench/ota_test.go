package testbench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// Over-the-air updates end to end, with real parts: a control node (CA, embedded
// registry, deployment engine), the v2 release built from a v2 image,
// signed and pushed to control's registry by an engineer, and robots
// flashed with the v1 image, each running the agent's runtime, update
// handler and updater against the firmware model of its Pi.
//
// Deployment 1 (rolling, batch 3) updates three robots: each downloads
// only the chunks its active slot lacks, writes slot B, arms the trial,
// reboots into it, passes its health check (connected to control) and
// commits; control shows the deployment completed and every robot
// committed, and the robots report the new OS version.
//
// Deployment 2 updates a robot whose health command fails
// and one whose trial boot hangs until the watchdog resets it: both end on
// slot A, and control shows each rolled back with its reason.
func TestOTAEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end OTA scenario: builds two images and runs five robots")
	}
	start := time.Now()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()

	imgs, err := robotsim.BuildOTAImages(ctx, filepath.Join(dir, "build"), 8<<20, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	n := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control")})
	engineer, err := lab.NewAPIClient(ctx, n, "engineer")
	if err != nil {
		t.Fatal(err)
	}
	ref, fullSize := pushRelease(t, ctx, n, engineer.Token, imgs.ReleaseDir)

	// Robots: three healthy ones, one whose health command fails, one
	// whose trial hangs.
	var logger *slog.Logger
	if os.Getenv("OTA_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	type robotSpec struct {
		id, health string
		hang       bool
	}
	specs := []robotSpec{{id: "lekiwi-ota-1"}, {id: "lekiwi-ota-2"}, {id: "lekiwi-ota-3"},
		{id: "lekiwi-ota-sick", health: "false"}, {id: "lekiwi-ota-hang", hang: true}}
	robots := map[string]*robotsim.OTARobot{}
	for _, s := range specs {
		r, err := robotsim.NewOTARobot(ctx, robotsim.OTARobotOptions{ID: s.id, Type: protocol.RobotLeKiwi, Dir: filepath.Join(dir, "robots", s.id), Image: imgs.V1,
			Servers: []string{n.URL()}, CA: n.CA(), KeysDir: imgs.KeysDir, HealthCommand: s.health, HangTrial: s.hang, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		robots[s.id] = r
	}
	runCtx, stopRobots := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, r := range robots {
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(runCtx, 6) }()
	}
	t.Cleanup(func() {
		stopRobots()
		wg.Wait()
		for _, r := range robots {
			r.Close()
		}
	})
	failIfRobotErrors := func() {
		t.Helper()
		for id, r := range robots {
			if errs := r.Errors(); len(errs) > 0 {
				t.Fatalf("robot %s: %v", id, errs)
			}
		}
	}
	waitFor(t, 20*time.Second, "five robots connected on v1", func() bool {
		failIfRobotErrors()
		for _, r := range robots {
			if !r.Connected() || r.Version() != imgs.V1Version {
				return false
			}
		}
		return true
	})
	ids := make([]string, 0, len(specs))
	for _, s := range specs {
		ids = append(ids, s.id)
	}
	waitConnectedInControl(t, engineer, 20*time.Second, ids...)
	t.Logf("images built in %s; robots connected at %s", built.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	create := func(ids []string, spec deploy.Spec) deploy.Deployment {
		t.Helper()
		spec.Release, spec.Version, spec.Target = ref, imgs.V2Version, deploy.Target{Profile: "lekiwi", RobotIDs: ids}
		spec.Strategy, spec.UpdateTimeoutSeconds = deploy.Rolling, 90
		var d deploy.Deployment
		if code := postJSON(t, engineer, "/v1/deployments", spec, &d); code != http.StatusCreated {
			t.Fatalf("create deployment for %v: HTTP %d", ids, code)
		}
		return d
	}
	get := func(id string) deploy.Deployment {
		t.Helper()
		var d deploy.Deployment
		if err := engineer.Get(ctx, "/v1/deployments/"+id, &d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	good := []string{"lekiwi-ota-1", "lekiwi-ota-2", "lekiwi-ota-3"}
	d1 := create(good, deploy.Spec{BatchSize: deploy.Size{Count: 3}, Health: deploy.Health{TimeoutSeconds: 30}})
	// The two failures trip the failure threshold at the end of the batch
	// (a count above the targets counts as all of them): the deployment
	// pauses for an engineer without auto-rollback, after both results.
	d2 := create([]string{"lekiwi-ota-sick", "lekiwi-ota-hang"}, deploy.Spec{BatchSize: deploy.Size{Count: 2},
		Health: deploy.Health{TimeoutSeconds: 4}, FailureThreshold: deploy.Size{Count: 3}, BatchFailureThreshold: deploy.Size{Count: 3}})

	final := func(d deploy.Deployment) bool {
		return d.State == deploy.StateCompleted || d.State == deploy.StatePaused || d.State == deploy.StateAborted ||
			d.State == deploy.StateRolledBack
	}
	waitFor(t, 90*time.Second, "both deployments finished", func() bool {
		failIfRobotErrors()
		return final(get(d1.ID)) && final(get(d2.ID))
	})
	t.Logf("deployments finished at %s", time.Since(start).Round(time.Millisecond))

	// Deployment 1: completed, every robot committed at v2 on slot B after
	// one trial boot, having downloaded a fraction of the release.
	got1 := get(d1.ID)
	if got1.State != deploy.StateCompleted || got1.Counts.Succeeded != 3 {
		t.Fatalf("deployment 1: %s (%s), counts %+v, robots %+v", got1.State, got1.Reason, got1.Counts, got1.Robots)
	}
	for _, p := range got1.Robots {
		if p.State != deploy.RobotSucceeded || p.UpdateState != protocol.UpdateCommitted || p.Sends != 1 {
			t.Errorf("deployment 1, robot %s: %+v", p.RobotID, p)
		}
	}
	for _, id := range good {
		r := robots[id]
		checkBoots(t, id, r.Boots(), []bootExpect{{bootctl.A, false}, {bootctl.B, true}})
		if r.Version() != imgs.V2Version {
			t.Errorf("robot %s runs version %q, want %s", id, r.Version(), imgs.V2Version)
		}
		// The commit is durable: a power cycle boots B by default.
		if b := powerCycle(t, r); b.Slot != bootctl.B || b.Trial {
			t.Errorf("robot %s: a power cycle after the commit boots %+v, want slot B by default", id, b)
		}
		dl := r.Downloaded()
		t.Logf("robot %s downloaded %s of a %s release (%.1f%%)", id, lab.MiB(uint64(dl)), lab.MiB(uint64(fullSize)), 100*float64(dl)/float64(fullSize))
		if dl <= 0 || dl >= fullSize/2 {
			t.Errorf("robot %s downloaded %d bytes of a %d-byte release: not a delta", id, dl, fullSize)
		}
	}
	// Control sees the new OS and image on every updated robot: the new
	// slot's image.json, read by the agent at its first start there.
	waitFor(t, 10*time.Second, "control reports v2 on the updated robots", func() bool {
		for _, id := range good {
			rb, err := n.Store().Robot(ctx, id)
			if err != nil || !strings.Contains(rb.Deployment.OSVersion, "Lekiwi OS "+imgs.V2Version) ||
				rb.Deployment.Image == nil || rb.Deployment.Image.Version != imgs.V2Version || rb.Deployment.Image.Profile != "lekiwi" {
				return false
			}
		}
		return true
	})

	// Every state change reached control's event log, in order.
	checkStates(t, ctx, n, map[string][]string{
		"lekiwi-ota-1":    {protocol.UpdateVerifying, protocol.UpdateArmed, protocol.UpdateTrial, protocol.UpdateCommitted},
		"lekiwi-ota-2":    {protocol.UpdateVerifying, protocol.UpdateArmed, protocol.UpdateTrial, protocol.UpdateCommitted},
		"lekiwi-ota-3":    {protocol.UpdateVerifying, protocol.UpdateArmed, protocol.UpdateTrial, protocol.UpdateCommitted},
		"lekiwi-ota-sick": {protocol.UpdateVerifying, protocol.UpdateArmed, protocol.UpdateTrial, protocol.UpdateRolledBack},
		"lekiwi-ota-hang": {protocol.UpdateVerifying, protocol.UpdateArmed, protocol.UpdateRolledBack},
	})

	// Deployment 2: both robots back on slot A at v1, each rolled back with
	// its reason in control.
	got2 := get(d2.ID)
	t.Logf("deployment 2: %s (%s), counts %+v", got2.State, got2.Reason, got2.Counts)
	if got2.State != deploy.StatePaused || got2.Counts.Failed != 2 || !strings.Contains(got2.Reason, "2 of 2 robots failed") {
		t.Errorf("deployment 2: %s (%s), counts %+v; want paused with 2 of 2 failed", got2.State, got2.Reason, got2.Counts)
	}
	reasons := map[string]string{}
	for _, p := range got2.Robots {
		reasons[p.RobotID] = p.Reason
		t.Logf("deployment 2, robot %s: %s / %s: %q", p.RobotID, p.State, p.UpdateState, p.Reason)
		if p.UpdateState != protocol.UpdateRolledBack || p.Sends != 1 {
			t.Errorf("deployment 2, robot %s: %+v, want update state rolled_back", p.RobotID, p)
		}
	}
	if r := reasons["lekiwi-ota-sick"]; !strings.Contains(r, "health check failed") || !strings.Contains(r, "health command") {
		t.Errorf("the failed health check's reason in control is %q; want it to name the failed check", r)
	}
	if r := reasons["lekiwi-ota-hang"]; !strings.Contains(r, ota.ReasonTrialLost) {
		t.Errorf("the hung trial's reason in control is %q, want %q", r, ota.ReasonTrialLost)
	}
	for _, id := range []string{"lekiwi-ota-sick", "lekiwi-ota-hang"} {
		r := robots[id]
		checkBoots(t, id, r.Boots(), []bootExpect{{bootctl.A, false}, {bootctl.B, true}, {bootctl.A, false}})
		if r.Version() != imgs.V1Version {
			t.Errorf("robot %s runs version %q after its rollback, want %s", id, r.Version(), imgs.V1Version)
		}
		if b := powerCycle(t, r); b.Slot != bootctl.A || b.Trial {
			t.Errorf("robot %s: a power cycle after the rollback boots %+v, want slot A", id, b)
		}
	}
	// ... and control names v1 again as their image.
	waitFor(t, 10*time.Second, "control reports v1 on the rolled back robots", func() bool {
		for _, id := range []string{"lekiwi-ota-sick", "lekiwi-ota-hang"} {
			rb, err := n.Store().Robot(ctx, id)
			if err != nil || rb.Deployment.Image == nil || rb.Deployment.Image.Version != imgs.V1Version {
				return false
			}
		}
		return true
	})
	t.Logf("scenario took %s", time.Since(start).Round(time.Millisecond))
}

// checkStates reads the robots' update events from control's log and
// checks each robot's states: downloading and writing first (they
// alternate with progress: local chunks are written while missing ones
// download), then, repeats folded, exactly after (the hung robot never
// reports trial: its trial never ran an agent).
func checkStates(t *testing.T, ctx context.Context, n *node.Node, after map[string][]string) {
	t.Helper()
	evs, err := n.Store().EventsOfTypes(ctx, 0, 100000, store.TypeRobotEvent)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, e := range evs {
		var ev protocol.Event
		var us protocol.UpdateState
		if json.Unmarshal(e.Data, &ev) != nil || ev.Kind != protocol.EventUpdate || json.Unmarshal(ev.Data, &us) != nil {
			continue
		}
		if s := got[e.RobotID]; len(s) == 0 || s[len(s)-1] != us.State {
			got[e.RobotID] = append(s, us.State)
		}
	}
	for id, w := range after {
		s := got[id]
		i := 0
		for i < len(s) && (s[i] == protocol.UpdateDownloading || s[i] == protocol.UpdateWriting) {
			i++
		}
		if !slices.Contains(s[:i], protocol.UpdateDownloading) || !slices.Contains(s[:i], protocol.UpdateWriting) || !slices.Equal(s[i:], w) {
			t.Errorf("robot %s reported %v to control, want downloading and writing, then %v", id, s, w)
		}
	}
}

type bootExpect struct {
	slot  bootctl.Slot
	trial bool
}

func checkBoots(t *testing.T, id string, got []firmware.Boot, want []bootExpect) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = got[i].Slot == want[i].slot && got[i].Trial == want[i].trial
	}
	if !ok {
		t.Errorf("robot %s booted %+v, want %+v", id, got, want)
	}
}

// powerCycle asks the firmware model what a power-on would boot now,
// without disturbing the robot's running instance.
func powerCycle(t *testing.T, r *robotsim.OTARobot) firmware.Boot {
	t.Helper()
	f, err := os.Open(r.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b, err := firmware.Select(f, st.Size(), false, firmware.Options{})
	if err != nil {
		t.Fatalf("robot %s: %v", r.ID, err)
	}
	return b
}

// pushRelease pushes the signed release to control's registry with the
// engineer's token and returns its reference by digest and its size
// (manifest, config and packs: what a robot with nothing would download).
func pushRelease(t *testing.T, ctx context.Context, n *node.Node, token, dir string) (string, int64) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: n.CA().Pool(), MinVersion: tls.VersionTLS13}
	host := strings.TrimPrefix(n.URL(), "https://")
	digest, err := release.Push(ctx, dir, host+"/lekiwi/os:2.0.0", ociart.Options{Transport: tr,
		Auth: authn.FromConfig(authn.AuthConfig{RegistryToken: token})})
	if err != nil {
		t.Fatalf("push the release to control: %v", err)
	}
	raw, _, err := release.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Config struct{ Size int64 }
		Layers []struct{ Size int64 }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	ref := fmt.Sprintf("%s/lekiwi/os@%s", host, digest)
	t.Logf("pushed %s (%s)", ref, lab.MiB(uint64(size)))
	return ref, size
}
