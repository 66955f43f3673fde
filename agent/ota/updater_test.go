package ota_test

import (
	"context"
	"crypto/ed25519"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/protocol"
)

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (f *fixture) args() protocol.UpdateArgs {
	return protocol.UpdateArgs{DeploymentID: "dep-1", Release: f.signed + "@" + f.digest, Version: "2"}
}

// fullDownload is what a robot without any local chunk would download for
// slot b.
func (f *fixture) fullDownload(t testing.TB) int64 {
	raw, cfg, err := release.ReadDir(f.signed)
	must(t, "read release", err)
	rel, err := release.Verify([]ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}, raw, cfg)
	must(t, "verify", err)
	p, err := (&release.Fetcher{Release: rel}).Plan("boot_b", "system_b")
	must(t, "plan", err)
	return p.DownloadBytes
}

// TestInstallTrialCommit: a whole update on the firmware model — delta
// download against the active slot, write, verify, arm, trial boot,
// health check, commit — and the slot b it leaves hashes to the release.
func TestInstallTrialCommit(t *testing.T) {
	f := getFixture(t)
	t.Logf("fixture: 2 images built in %s, releases created and signed in %s", f.buildTime.Round(time.Millisecond), f.createTime.Round(time.Millisecond))
	ctx := context.Background()
	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))

	start := time.Now()
	u := r.agent(t, ota.DirSource{}, nil, f.key)
	must(t, "install", u.Install(ctx, f.args()))
	installTime := time.Since(start)
	if got, want := r.states(), []string{"downloading", "writing", "verifying", "armed"}; !slices.Equal(got, want) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	var downloaded int64
	for _, s := range r.reports {
		downloaded = max(downloaded, s.Downloaded)
		if s.DeploymentID != "dep-1" || s.Version != "2" || s.Slot != "b" {
			t.Errorf("report %+v does not name deployment, version and slot", s)
		}
	}
	// The armed report says what the install cost this process.
	if armed := r.last(); armed.AgentMaxRSSBytes < 1<<20 || armed.AgentCPUSeconds <= 0 || armed.AgentCPUSeconds > installTime.Seconds()*float64(runtime.NumCPU()) {
		t.Errorf("armed report: peak RSS %d bytes, %.3f CPU s for an install of %s; want a real peak and the install's CPU time",
			armed.AgentMaxRSSBytes, armed.AgentCPUSeconds, installTime)
	}
	full := f.fullDownload(t)
	written := int64(0)
	for _, w := range dev.Writes() {
		written += int64(w.Len)
	}
	t.Logf("install: downloaded %d bytes (a robot without the active slot's chunks: %d), wrote %d bytes in %d writes, %s",
		downloaded, full, written, len(dev.Writes()), installTime.Round(time.Millisecond))
	// Version 2 adds 1.5 MiB of new (incompressible) data: the download
	// must be about that, not the 5.5 MiB the partitions hold.
	if downloaded <= 0 || downloaded > full/2 || downloaded > 2<<20 {
		t.Errorf("delta download of %d bytes, full %d: the active slot's chunks were not used", downloaded, full)
	}
	for _, w := range dev.Writes() {
		b := f.plan.Part(layout.BootB)
		s := f.plan.Part(layout.SystemB)
		if !(w.Off >= b.Start && w.Off+int64(w.Len) <= b.End()) && !(w.Off >= s.Start && w.Off+int64(w.Len) <= s.End()) {
			t.Fatalf("install wrote %d bytes at %d, outside slot b", w.Len, w.Off)
		}
	}

	// The trial boot: a fresh agent settles it.
	must(t, "trial boot", r.boot(bootctl.B, true))
	u = r.agent(t, ota.DirSource{}, func(context.Context) error { return nil }, f.key)
	out, err := u.OnStart(ctx)
	must(t, "on start", err)
	if out.State != protocol.UpdateCommitted || r.last().State != protocol.UpdateCommitted || r.last().Slot != "b" {
		t.Fatalf("outcome %+v, last report %+v", out, r.last())
	}
	must(t, "reboot", r.ctl.Reboot(ctx, false))
	must(t, "committed b boots", r.boot(bootctl.B, false))
	if st := r.status(ctx); st != (bootctl.Status{Booted: bootctl.B, Default: bootctl.B, TrialSlot: bootctl.A}) {
		t.Fatalf("status %+v", st)
	}
	// A second start has nothing to settle.
	out, err = r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx)
	if err != nil || out != (ota.Outcome{}) {
		t.Fatalf("second start: %+v %v", out, err)
	}
	checkSlotMatchesRelease(t, f, dev.Current(), bootctl.B)
}

func checkSlotMatchesRelease(t testing.TB, f *fixture, d *powercut.Disk, slot bootctl.Slot) {
	t.Helper()
	if err := slotMatchesRelease(f, d, slot); err != nil {
		t.Fatal(err)
	}
}
