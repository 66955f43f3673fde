package ota_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// fixture is built once per test binary: two images of the same build seed
// (so the same partition GUIDs, as the images of one fleet must have for
// a release of one to boot on a disk of the other) whose root filesystems
// differ, and releases of the second.
type fixture struct {
	dir        string
	img1, img2 string
	plan       *layout.Plan
	key        ed25519.PrivateKey // trusted
	otherKey   ed25519.PrivateKey // not trusted
	signed     string             // release dir of image 2, version "2", signed by key
	unsigned   string
	wrongKey   string
	digest     string // manifest digest of signed
	buildTime  time.Duration
	createTime time.Duration
}

var (
	fxOnce sync.Once
	fx     *fixture
	fxErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fx != nil {
		os.RemoveAll(fx.dir)
	}
	os.Exit(code)
}

func randomBytes(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// getFixture builds the images and releases on first use.
func getFixture(t testing.TB) *fixture {
	t.Helper()
	fxOnce.Do(func() { fx, fxErr = buildFixture() })
	if fxErr != nil {
		t.Fatal(fxErr)
	}
	return fx
}

func buildFixture() (*fixture, error) {
	dir, err := os.MkdirTemp("", "updater-test-")
	if err != nil {
		return nil, err
	}
	f := &fixture{dir: dir}
	start := time.Now()
	// Version 1: 4 MiB of data that stays; version 2 adds 1.5 MiB and
	// changes a small file (about what a package upgrade does).
	keep := randomBytes(1, 4<<20)
	v1 := map[string][]byte{"etc/hostname": []byte("robot\n"), "usr/share/lekiwi/data.bin": keep}
	v2 := map[string][]byte{"etc/hostname": []byte("robot\n"), "usr/share/lekiwi/data.bin": keep,
		"usr/share/lekiwi/new.bin": randomBytes(2, 3<<19), "etc/lekiwi/release": []byte("2\n")}
	if f.img1, f.plan, err = buildImage(dir, "v1", v1); err != nil {
		return nil, err
	}
	var plan2 *layout.Plan
	if f.img2, plan2, err = buildImage(dir, "v2", v2); err != nil {
		return nil, err
	}
	for i := range f.plan.Partitions {
		if f.plan.Partitions[i] != plan2.Partitions[i] {
			return nil, fmt.Errorf("the two test images differ in partition %d: %+v vs %+v", i+1, f.plan.Partitions[i], plan2.Partitions[i])
		}
	}
	f.buildTime = time.Since(start)
	start = time.Now()
	if _, f.key, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	if _, f.otherKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	ctx := context.Background()
	meta := release.Meta{Version: "2", Profile: "lekiwi", MinAgentVersion: "1.0"}
	f.unsigned = filepath.Join(dir, "rel-unsigned")
	if _, err := release.Create(ctx, f.img2, f.unsigned, meta, release.CreateOptions{}); err != nil {
		return nil, err
	}
	f.signed, f.wrongKey = filepath.Join(dir, "rel-signed"), filepath.Join(dir, "rel-wrongkey")
	for _, c := range []struct {
		dir string
		key ed25519.PrivateKey
	}{{f.signed, f.key}, {f.wrongKey, f.otherKey}} {
		if err := copyDir(f.unsigned, c.dir); err != nil {
			return nil, err
		}
		d, err := release.SignDir(c.dir, c.key)
		if err != nil {
			return nil, err
		}
		if c.dir == f.signed {
			f.digest = d
		}
	}
	f.createTime = time.Since(start)
	return f, nil
}

// fixtureBuilt is the test images' build time (SOURCE_DATE_EPOCH, Unix
// seconds). Both share it, so image 1 (the robot's) and the release of
// image 2 have the same security version: an update, not a downgrade.
const fixtureBuilt int64 = 1715000000

// buildImage builds a small lekiwi image with files in its root; every
// build input that feeds the seed is the same for all calls.
func buildImage(dir, name string, files map[string][]byte) (string, *layout.Plan, error) {
	img, err := imagetest.Make(dir, imagetest.Options{Name: name, Root: files, Description: "updater test", Epoch: time.Unix(fixtureBuilt, 0),
		Sizes: layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}})
	return img.Path, img.Plan, err
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o644)
	})
}

// disk1 is image 1 as a copy-on-write disk.
func (f *fixture) disk1(t testing.TB) *powercut.Disk {
	t.Helper()
	fh, err := os.Open(f.img1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	return powercut.NewDisk(fh, f.plan.Size)
}

// robot is a modelled Pi (firmware, watchdog) running the real rpi boot
// controller over a device, with the agent's persistent directories.
type robot struct {
	dev      *powercut.Device
	pi       *firmware.Pi
	ctl      *rpi.Controller
	stateDir string
	cacheDir string
	reports  []protocol.UpdateState
	mu       sync.Mutex
	tweak    func(*ota.Options) // applied to every agent's options
	bootID   atomic.Value       // the firmware model's Boot.ID of the running boot
}

func newRobot(dev *powercut.Device, plan *layout.Plan, dir string) (*robot, error) {
	dt := filepath.Join(dir, "dt")
	bc := plan.Part(layout.BootConfig)
	sec, err := dev.Section(bc.Start, bc.Size)
	if err != nil {
		return nil, err
	}
	pi, ctl, err := firmware.NewControlledPi(dev, dev.Size(), sec, dt)
	if err != nil {
		return nil, err
	}
	return &robot{dev: dev, pi: pi, ctl: ctl, stateDir: filepath.Join(dir, "state"), cacheDir: filepath.Join(dir, "cache")}, nil
}

// boot powers on (or resets) and checks the firmware's choice.
func (r *robot) boot(want bootctl.Slot, trial bool) error {
	b, err := r.pi.Boot()
	if err != nil {
		return err
	}
	r.bootID.Store(b.ID)
	if b.Slot != want || b.Trial != trial {
		return fmt.Errorf("the firmware booted %s (trial %v, %s), want %s (trial %v)", b.Slot, b.Trial, b.Reason, want, trial)
	}
	return nil
}

// agent is a freshly started agent's updater (a new process: nothing
// carried over but the disk and the persistent directories).
func (r *robot) agent(t testing.TB, src ota.Source, health func(context.Context) error, keys ...ed25519.PrivateKey) *ota.Updater {
	u, err := r.newAgent(src, health, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func (r *robot) newAgent(src ota.Source, health func(context.Context) error, keys ...ed25519.PrivateKey) (*ota.Updater, error) {
	var pubs []ed25519.PublicKey
	for _, k := range keys {
		pubs = append(pubs, k.Public().(ed25519.PublicKey))
	}
	o := ota.Options{
		Boot: r.ctl, Disk: r.dev, DiskSize: r.dev.Size(), TrustedKeys: pubs, Source: src,
		Store: cutStore{ota.FileStore{Path: filepath.Join(r.stateDir, ota.StateFile)}, r.dev}, CacheDir: r.cacheDir, Profile: "lekiwi", AgentVersion: "1.2", CurrentVersion: "1",
		CurrentSecurityVersion: fixtureBuilt, // image 1's image.json, as ota.OpenPi reads it
		Report: func(s protocol.UpdateState) {
			if r.dev.IsCut() {
				return // the machine is off: nothing leaves it
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			r.reports = append(r.reports, s)
		},
		Health: health, HealthTimeout: 200 * time.Millisecond, HealthRetry: 20 * time.Millisecond, RetryDelay: time.Millisecond,
		// No timed progress reports: the tests compare the sequence of
		// states, which a slow machine would otherwise pad with repeats.
		ProgressInterval: time.Hour,
		BootID: func() (string, error) {
			id, _ := r.bootID.Load().(string) // "" before the first power-on
			return id, nil
		},
	}
	if r.tweak != nil {
		r.tweak(&o)
	}
	return ota.New(o)
}

// states lists the reported states in order.
func (r *robot) states() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.reports {
		out = append(out, s.State)
	}
	return out
}

func (r *robot) last() protocol.UpdateState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reports) == 0 {
		return protocol.UpdateState{}
	}
	return r.reports[len(r.reports)-1]
}

func (r *robot) status(ctx context.Context) bootctl.Status {
	st, _ := r.ctl.Status(ctx)
	return st
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// slotMatchesRelease checks the slot's partitions hash to the signed
// release's sha256 (the partitions as the release describes them: their
// first Size bytes).
func slotMatchesRelease(f *fixture, d *powercut.Disk, slot bootctl.Slot) error {
	_, cfgBytes, err := release.ReadDir(f.signed)
	if err != nil {
		return err
	}
	cfg, err := release.ParseConfig(cfgBytes)
	if err != nil {
		return err
	}
	for _, n := range []int{slot.BootPartition(), slot.SystemPartition()} {
		p := f.plan.Part(n)
		rp, ok := cfg.Partition(p.Name)
		if !ok {
			return fmt.Errorf("release has no %s", p.Name)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(d, p.Start, rp.Size)); err != nil {
			return err
		}
		if release.Hash(h.Sum(nil)) != rp.SHA256 {
			return fmt.Errorf("%s does not hash to the release's %s", p.Name, rp.SHA256)
		}
	}
	return nil
}

// cutStore is the state file on the persistent partition of a device that
// may lose power: once the power is cut nothing more is saved.
type cutStore struct {
	ota.FileStore
	dev *powercut.Device
}

func (c cutStore) Save(b []byte) error {
	if c.dev.IsCut() {
		return fmt.Errorf("save update state: %w", powercut.ErrPowerCut)
	}
	return c.FileStore.Save(b)
}

func digestHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeLayout stores blobs and the manifest in the OCI layout dir and
// points index.json at the manifest.
func writeLayout(t testing.TB, dir string, manifest []byte, blobs map[string][]byte) {
	t.Helper()
	blobs[digestHex(manifest)] = manifest
	for d, b := range blobs {
		must(t, "blob", os.WriteFile(filepath.Join(dir, "blobs", "sha256", d), b, 0o644))
	}
	idx := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest": "sha256:" + digestHex(manifest), "size": len(manifest), "artifactType": release.ArtifactType}}}
	b, err := json.Marshal(idx)
	must(t, "index", err)
	must(t, "index", os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644))
}
