package realboot_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/vmlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab/piboot"
)

// The two releases of the robot image: release 1 is what the factory
// installs, release 2 differs in its agent (a newer version string) and
// its image.json. Their build times are fixed so that release 2 is the
// newer one, whatever order the files were built in.
const (
	release2Version = "realboot-2"
	agent1Version   = "1.0.0-lab"
	agent2Version   = "1.0.1-lab"
	release1Epoch   = 1767225600 // 2026-01-01
	release2Epoch   = release1Epoch + 86400
)

// pushRelease makes a release of img as an engineer does — `provision
// release create`, `sign`, `push` to control's registry with an engineer's
// token — and returns its reference by digest.
func (f *floor) pushRelease(t *testing.T, ctx context.Context, provisionBin, img, version, key, caFile string) string {
	t.Helper()
	start := time.Now()
	rel := filepath.Join(f.dir, "release-"+version)
	run(t, ctx, f.log, provisionBin, "release", "create", "--image", img, "--version", version, "--profile", "lekiwi", "--out", rel)
	run(t, ctx, f.log, provisionBin, "release", "sign", "--key", key, rel)
	tokenFile := filepath.Join(f.dir, "engineer.token")
	if _, err := os.Stat(tokenFile); err != nil {
		var created api.TokenCreated
		if err := f.control.Admin().Do(ctx, "POST", "/v1/tokens", api.TokenRequest{Name: "realboot-engineer", Role: "engineer"}, &created); err != nil {
			t.Fatal(err)
		}
		writeFile(t, tokenFile, created.Token+"\n")
	}
	host := strings.TrimPrefix(f.control.URL(), "https://")
	cmd := exec.CommandContext(ctx, provisionBin, "release", "push", "--token-file", tokenFile, "--ca-file", caFile, rel, host+"/lekiwi/os:"+version)
	cmd.Stderr = f.log
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("provision release push: %v", err)
	}
	digest := strings.TrimSpace(string(out))
	if !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("provision release push printed %q, want a digest", out)
	}
	t.Logf("release %s created, signed and pushed in %s", version, time.Since(start).Round(100*time.Millisecond))
	return host + "/lekiwi/os@" + digest
}

// trybootLine is the kernel's last word when the agent asked for the
// trial through systemd: systemd-shutdown passes logind's reboot
// parameter to reboot(2).
var trybootLine = regexp.MustCompile(`reboot: Restarting system with command '0 tryboot'`)

// agentStopped is systemd stopping the agent's unit, on a console line
// without colours (consoleText).
var agentStopped = regexp.MustCompile(`Stopped .*(lekiwi-agent|Lekiwi Heartbeat robot agent)`)

// update takes the online robot on vm from release 1 to release 2 through
// control's deployment engine, with the lab playing the firmware's
// tryboot, and checks the result as control reports it and as third-party
// tools read the disk.
func (f *floor) update(t *testing.T, ctx context.Context, b *board, vm *vmlab.VM, fw *piboot.Firmware, clock *boardClock) {
	id := b.profile + "-" + b.serial.String()
	var d deploy.Deployment
	spec := deploy.Spec{Release: f.release2, Version: release2Version, Target: deploy.Target{Profile: b.profile, RobotIDs: []string{id}},
		Strategy: deploy.Rolling, BatchSize: deploy.Size{Count: 1}, Health: deploy.Health{TimeoutSeconds: 600}, UpdateTimeoutSeconds: 3600}
	if err := f.control.Admin().Do(ctx, "POST", "/v1/deployments", spec, &d); err != nil {
		t.Fatalf("create the deployment: %v", err)
	}
	start := time.Now()

	// The agent downloads, writes slot B, arms the trial and asks systemd
	// for the reboot: services stop in order, then the kernel restarts
	// with the tryboot argument.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	_, err := vm.WaitFor(wctx, trybootLine)
	cancel()
	if err != nil {
		t.Fatalf("%s: no trial reboot: %v (deployment %s)\n%s", b.name, err, f.deploymentSummary(ctx, d.ID), tail(filepath.Join(vm.Dir, "console.log"), 40))
	}
	clock.mark("written", time.Now())
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("%s: the VM did not restart: %v", b.name, err)
	}
	lines := consoleText(vm)
	if !fw.Restarted(lines) || !fw.Tryboot() {
		t.Fatalf("%s: the console's last restart did not ask for tryboot", b.name)
	}
	// Orderly: systemd stopped the agent's unit before the restart
	// (a bare reboot(2) stops nothing), and systemd-shutdown unmounted
	// the filesystems.
	if !anyLine(lines, agentStopped) ||
		!anyLine(lines, regexp.MustCompile(`systemd-shutdown\[1\]: All filesystems unmounted`)) {
		t.Errorf("%s: the trial reboot did not go through systemd's shutdown (no stopped agent unit, no systemd-shutdown):\n%s", b.name, tail(filepath.Join(vm.Dir, "console.log"), 30))
	}

	// The trial: the firmware's next boot, and only that one, is slot B.
	vm3 := f.powerOn(t, ctx, b, fw, layout.BootB, true)

	// Control's view: the deployment succeeded with the robot committed,
	// and the robot reports release 2's image.
	got := f.waitDeployment(t, ctx, d.ID, vm3, 15*time.Minute)
	clock.mark("committed", time.Now())
	if got.State != deploy.StateCompleted || len(got.Robots) != 1 || got.Robots[0].State != deploy.RobotSucceeded ||
		got.Robots[0].UpdateState != protocol.UpdateCommitted {
		t.Fatalf("%s: deployment %s: %s", b.name, d.ID, f.deploymentSummary(ctx, d.ID))
	}
	f.waitImage(t, ctx, id, release2Version, vm3, 5*time.Minute)
	t.Logf("%s: updated to %s and committed %s after the deployment was created", b.name, release2Version, time.Since(start).Round(time.Second))
	t.Logf("%s: the update, phase by phase (TCG on this machine; not a Pi's times):\n%s", b.name, f.updatePhases(t, ctx, id, d.ID, start))

	// Release 1 again, without allow_downgrade: older than the committed
	// release 2, refused before a byte is written.
	f.refuseDowngrade(t, ctx, b, vm3)

	// Power cut right after the commit; the next plain power-on boots
	// slot B.
	vm3.Close()
	fw.PowerCut()
	next, err := fw.PowerOn(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("%s: power-on after the commit: %v", b.name, err)
	}
	if next.Partition != layout.BootB || next.Tryboot {
		t.Errorf("%s: the power-on after the commit chose partition %d (tryboot %v), want boot_b by default", b.name, next.Partition, next.Tryboot)
	}
	f.checkDiskAfterUpdate(t, ctx, b)
}

// powerOn boots the board from its disk through the lab firmware and
// checks the firmware's choice.
func (f *floor) powerOn(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware, partition int, tryboot bool) *vmlab.VM {
	t.Helper()
	boot, err := fw.PowerOn(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("%s: power-on: %v", b.name, err)
	}
	if boot.Partition != partition || boot.Tryboot != tryboot {
		t.Fatalf("%s: the firmware chose partition %d (tryboot %v), want %d (tryboot %v)", b.name, boot.Partition, boot.Tryboot, partition, tryboot)
	}
	return vmlab.StartTest(t, ctx, vmlab.Config{Dir: t.TempDir(),
		Kernel: boot.Kernel, Initramfs: boot.Initramfs, Cmdline: boot.Cmdline,
		DeviceTree: b.deviceTree(boot.Bootloader()),
		Disk:       &vmlab.Disk{Path: b.disk},
		NIC:        &vmlab.NIC{MAC: b.mac, Bridge: f.lan.StationIf},
		ServoBuses: b.buses,
		Timeout:    20 * time.Minute,
	})
}

// waitDeployment polls control until the deployment is in a final state.
func (f *floor) waitDeployment(t *testing.T, ctx context.Context, id string, vm *vmlab.VM, timeout time.Duration) deploy.Deployment {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var d deploy.Deployment
	for {
		err := f.control.Admin().Do(ctx, "GET", "/v1/deployments/"+id, nil, &d)
		if err == nil && settled(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s not final within %s: %s (%v)\n%s", id, timeout, f.deploymentSummary(ctx, id), err, tail(filepath.Join(vm.Dir, "console.log"), 40))
		}
		select {
		case <-vm.Exited():
			t.Fatalf("the robot's VM stopped during deployment %s: %s\n%s", id, f.deploymentSummary(ctx, id), tail(filepath.Join(vm.Dir, "console.log"), 60))
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

// waitImage polls control's robot record until it reports the image
// version (the agent's hello after its start on the new slot).
func (f *floor) waitImage(t *testing.T, ctx context.Context, id, version string, vm *vmlab.VM, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var r robotView
	for {
		var doc json.RawMessage
		err := f.control.Admin().Do(ctx, "GET", "/v1/robots/"+id, nil, &doc)
		if err == nil && json.Unmarshal(doc, &r) == nil && r.Deployment.Image.Version == version && r.Status.State == "online" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("robot %s does not report image %s within %s: %+v (%v)", id, version, timeout, r, err)
		}
		select {
		case <-vm.Exited():
			t.Fatalf("the robot's VM stopped before it reported image %s", version)
		case <-time.After(2 * time.Second):
		}
	}
}

// deploymentSummary is the deployment as control shows it, for failures.
func (f *floor) deploymentSummary(ctx context.Context, id string) string {
	var doc json.RawMessage
	if err := f.control.Admin().Do(ctx, "GET", "/v1/deployments/"+id, nil, &doc); err != nil {
		return err.Error()
	}
	return string(doc)
}

// checkDiskAfterUpdate reads the disk with Debian's tools, not the
// project's: the partition table as built, autoboot.txt naming slot B by
// default and A for a trial, the FAT partitions clean, both system slots
// consistent ext4 holding their releases.
func (f *floor) checkDiskAfterUpdate(t *testing.T, ctx context.Context, b *board) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "sfdisk", "--json", b.disk).Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s: %v", b.disk, err)
	}
	var table struct {
		PartitionTable struct {
			Label      string `json:"label"`
			SectorSize int64  `json:"sectorsize"`
			Partitions []struct {
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Name  string `json:"name"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &table); err != nil {
		t.Fatal(err)
	}
	pt := table.PartitionTable
	sector := pt.SectorSize
	if sector == 0 {
		sector = 512
	}
	part := map[string][2]int64{} // name → offset, size in bytes
	for _, p := range pt.Partitions {
		part[p.Name] = [2]int64{p.Start * sector, p.Size * sector}
	}
	for _, name := range []string{"bootconfig", "boot_a", "boot_b", "system_a", "system_b"} {
		if _, ok := part[name]; !ok {
			t.Fatalf("sfdisk: no partition %q on the updated disk: %s", name, out)
		}
	}
	if pt.Label != "gpt" {
		t.Errorf("sfdisk: partition table %q, want gpt", pt.Label)
	}
	mtype := exec.CommandContext(ctx, "mtype", "-i", b.disk+"@@"+strconv.FormatInt(part["bootconfig"][0], 10), "::autoboot.txt")
	mtype.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	auto, err := mtype.Output()
	if err != nil {
		t.Fatalf("mtype autoboot.txt: %v", err)
	}
	a, err := piboot.ParseAutoboot(string(auto), false)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := piboot.ParseAutoboot(string(auto), true)
	if err != nil {
		t.Fatal(err)
	}
	if a.Partition != layout.BootB || tb.Partition != layout.BootA {
		t.Errorf("autoboot.txt after the commit names boot partition %d by default and %d for a trial; want %d and %d:\n%s",
			a.Partition, tb.Partition, layout.BootB, layout.BootA, auto)
	}
	// boot_a and the bootconfig partition were not mounted at the cut:
	// clean as they are. boot_b was (the committed slot was running):
	// its dirty flag is the cut's, cleared first on a copy, as the next
	// boot's fsck would.
	for _, name := range []string{"bootconfig", "boot_a"} {
		checkTool(t, ctx, b.disk, part[name], name, "fsck.fat", "-n")
	}
	bootB := extract(t, b.disk, part["boot_b"], "boot_b")
	if out, err := exec.CommandContext(ctx, "fsck.fat", "-a", bootB).CombinedOutput(); err != nil {
		if exit := (*exec.ExitError)(nil); !errors.As(err, &exit) || exit.ExitCode() > 1 {
			t.Errorf("fsck.fat -a boot_b: %v\n%s", err, out)
		}
	}
	if out, err := exec.CommandContext(ctx, "fsck.fat", "-n", bootB).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n boot_b after clearing the dirty flag: %v\n%s", err, out)
	}
	os.Remove(bootB)
	for name, version := range map[string]string{"system_a": imageVersion, "system_b": release2Version} {
		img := extract(t, b.disk, part[name], name)
		// The trial and the committed boot ran slot B read-write and the
		// lab cut its power: replay its journal first, as the next mount
		// would, on a copy.
		if out, err := exec.CommandContext(ctx, "e2fsck", "-fy", img).CombinedOutput(); err != nil {
			// Exit status 1: errors corrected (the journal replayed).
			if exit := (*exec.ExitError)(nil); !errors.As(err, &exit) || exit.ExitCode() > 1 {
				t.Errorf("e2fsck -fy %s: %v\n%s", name, err, out)
			}
		}
		if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn %s: %v\n%s", name, err, out)
		}
		info, err := exec.CommandContext(ctx, "debugfs", "-R", "cat /"+layout.ImageInfoPath, img).Output()
		if err != nil {
			t.Fatalf("debugfs %s: %v", name, err)
		}
		if ii, err := layout.ParseImageInfo(info); err != nil || ii.Version != version {
			t.Errorf("%s holds image %q (%v), want %s", name, ii.Version, err, version)
		}
		os.Remove(img)
	}
}

// extract copies a partition out of the disk image, sparsely, so that the
// checkers read it as a file of its own.
func extract(t *testing.T, disk string, p [2]int64, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".img")
	cmd := exec.Command("dd", "if="+disk, "of="+out, "bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse",
		"skip="+strconv.FormatInt(p[0], 10), "count="+strconv.FormatInt(p[1], 10), "status=none")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dd %s: %v: %s", name, err, b)
	}
	return out
}

func checkTool(t *testing.T, ctx context.Context, disk string, p [2]int64, name string, tool string, args ...string) {
	t.Helper()
	img := extract(t, disk, p, name)
	defer os.Remove(img)
	if out, err := exec.CommandContext(ctx, tool, append(args, img)...).CombinedOutput(); err != nil {
		t.Errorf("%s %s %s: %v\n%s", tool, strings.Join(args, " "), name, err, out)
	}
}

// ansiEscape is a terminal colour or attribute sequence; systemd colours
// its status lines on the console.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// consoleText is the VM's console, without colours.
func consoleText(vm *vmlab.VM) []string {
	var out []string
	for _, l := range vm.Console.Lines() {
		out = append(out, ansiEscape.ReplaceAllString(l.Text, ""))
	}
	return out
}

func anyLine(lines []string, re *regexp.Regexp) bool {
	for _, l := range lines {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

// A release whose trial fails, and one whose trial hangs: the boot files
// of release 2 with one change each to the kernel command line, so their
// slots differ from release 2's only in cmdline.txt.
const (
	// release 3 masks a service the LeKiwi profile requires (ssh): the
	// trial boots, the agent connects, its health check never passes.
	release3Version = "realboot-3-no-ssh"
	release3Cmdline = "systemd.mask=ssh.service"
	// release 4's trial never reaches userspace: init exits at once and
	// the kernel hangs in its panic, as a broken root would.
	release4Version = "realboot-4-hangs"
	release4Cmdline = "init=/bin/false"
)

// watchdogFed is the console line after which the lab's watchdog counts a
// boot alive: systemd has started the agent. On a Pi, systemd feeds the
// hardware watchdog from early boot; a boot that hangs before then is
// reset.
// (systemd colours the unit's name and shortens it: "Started
// \x1b[0;1;39mlekiwi-agent.servi…\x1b[0m - Lekiwi Heartbeat robot agent.")
var watchdogFed = regexp.MustCompile(`Started .*(lekiwi-agent|Lekiwi Heartbeat robot agent)`)

// labWatchdog is how long a trial boot may take to start the agent under
// TCG before the lab resets it (the real boot takes about a minute).
const labWatchdog = 4 * time.Minute

// failingReleases are releases 3 and 4 in control's registry.
type failingReleases struct{ noSSH, hangs string }

// updateFailures runs the two updates that must not stick, on the robot
// that committed release 2 (its VM powered off): release 3's trial boots
// but never passes the health check, so the agent rolls back; release 4's
// trial hangs before userspace, so the lab's watchdog resets it. Both end
// with the robot online on release 2 and control's deployment saying why.
func (f *floor) updateFailures(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware, clock *boardClock) {
	id := b.profile + "-" + b.serial.String()
	vm := f.powerOn(t, ctx, b, fw, layout.BootB, false)
	f.waitImage(t, ctx, id, release2Version, vm, 10*time.Minute)

	// Release 3: the trial comes up, the health check waits for
	// ssh.service until its timeout, the agent reports rolled_back and
	// restarts into the default slot.
	d := f.deploy(t, ctx, b, f.failing.noSSH, release3Version, deploy.Health{TimeoutSeconds: 90, Retries: 1})
	f.waitTrialReboot(t, ctx, b, vm, fw, d)
	trial := f.powerOn(t, ctx, b, fw, layout.BootA, true)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	_, err := trial.WaitFor(wctx, regexp.MustCompile(`reboot: Restarting system$`))
	cancel()
	if err != nil {
		t.Fatalf("%s: the failed trial did not restart: %v (deployment %s)\n%s", b.name, err, f.deploymentSummary(ctx, d), tail(filepath.Join(trial.Dir, "console.log"), 40))
	}
	if err := trial.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !fw.Restarted(consoleText(trial)) || fw.Tryboot() {
		t.Fatalf("%s: the failed trial's restart asked for another trial", b.name)
	}
	vm = f.powerOn(t, ctx, b, fw, layout.BootB, false)
	got := f.waitDeployment(t, ctx, d, vm, 10*time.Minute)
	f.closeFailed(t, ctx, got)
	clock.mark("rolled back", time.Now())
	r := robotResult(got)
	if r.UpdateState != protocol.UpdateRolledBack || !strings.Contains(r.Reason, "ssh.service") {
		t.Errorf("%s: release 3's deployment says %+v; want rolled_back naming ssh.service", b.name, r)
	}
	f.waitImage(t, ctx, id, release2Version, vm, 10*time.Minute)
	t.Logf("%s: release 3 rolled back: %s", b.name, r.Reason)

	// Release 4: the trial never reaches the agent; the watchdog resets
	// the board, whose next boot is the default slot again.
	d = f.deploy(t, ctx, b, f.failing.hangs, release4Version, deploy.Health{TimeoutSeconds: 300})
	f.waitTrialReboot(t, ctx, b, vm, fw, d)
	trial = f.powerOn(t, ctx, b, fw, layout.BootA, true)
	wctx, cancel = context.WithTimeout(ctx, labWatchdog)
	_, err = trial.WaitFor(wctx, watchdogFed)
	cancel()
	if err == nil {
		t.Fatalf("%s: release 4's trial started the agent; it should hang", b.name)
	}
	trial.Close() // the watchdog's reset
	vm = f.powerOn(t, ctx, b, fw, layout.BootB, false)
	got = f.waitDeployment(t, ctx, d, vm, 10*time.Minute)
	f.closeFailed(t, ctx, got)
	clock.mark("hung trial", time.Now())
	r = robotResult(got)
	if r.UpdateState != protocol.UpdateRolledBack || !strings.Contains(r.Reason, "did not come up") {
		t.Errorf("%s: release 4's deployment says %+v; want rolled_back, the trial did not come up", b.name, r)
	}
	f.waitImage(t, ctx, id, release2Version, vm, 10*time.Minute)
	t.Logf("%s: release 4's hung trial reset by the watchdog: %s", b.name, r.Reason)
	vm.Close()
}

// deploy creates a one-robot deployment of release and returns its id.
func (f *floor) deploy(t *testing.T, ctx context.Context, b *board, release, version string, health deploy.Health) string {
	t.Helper()
	return f.deployOpts(t, ctx, b, release, version, health, false)
}

// deployOpts is deploy, allowing a downgrade when asked.
func (f *floor) deployOpts(t *testing.T, ctx context.Context, b *board, release, version string, health deploy.Health, downgrade bool) string {
	t.Helper()
	var d deploy.Deployment
	spec := deploy.Spec{Release: release, Version: version, Target: deploy.Target{Profile: b.profile, RobotIDs: []string{b.profile + "-" + b.serial.String()}},
		Strategy: deploy.Rolling, BatchSize: deploy.Size{Count: 1}, Health: health, UpdateTimeoutSeconds: 3600, AllowDowngrade: downgrade}
	if err := f.control.Admin().Do(ctx, "POST", "/v1/deployments", spec, &d); err != nil {
		t.Fatalf("create the deployment of %s: %v", version, err)
	}
	return d.ID
}

// waitTrialReboot waits for the robot on vm to restart into a trial.
func (f *floor) waitTrialReboot(t *testing.T, ctx context.Context, b *board, vm *vmlab.VM, fw *piboot.Firmware, deployment string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	_, err := vm.WaitFor(wctx, trybootLine)
	cancel()
	if err != nil {
		t.Fatalf("%s: no trial reboot: %v (deployment %s)\n%s", b.name, err, f.deploymentSummary(ctx, deployment), tail(filepath.Join(vm.Dir, "console.log"), 40))
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("%s: the VM did not restart: %v", b.name, err)
	}
	if !fw.Restarted(consoleText(vm)) || !fw.Tryboot() {
		t.Fatalf("%s: the console's last restart did not ask for tryboot", b.name)
	}
}

// robotResult is the one robot's line of a one-robot deployment.
func robotResult(d deploy.Deployment) deploy.RobotProgress {
	if len(d.Robots) != 1 {
		return deploy.RobotProgress{}
	}
	return d.Robots[0]
}

// updatePhases reads the robot's update reports from control's event log
// (the agent's own clock, in order) and says how long each phase took,
// what was downloaded against what the release holds, and what the
// install cost the agent process; plus, from the images, how much of the
// slot really changed (64 KiB pieces of boot_a and system_a that differ
// between release 1 and release 2).
func (f *floor) updatePhases(t *testing.T, ctx context.Context, robot, deployment string, created time.Time) string {
	t.Helper()
	var page struct {
		Events []struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		} `json:"events"`
	}
	if err := f.control.Admin().Do(ctx, "GET", "/v1/events?robot="+robot+"&limit=1000", nil, &page); err != nil {
		t.Fatal(err)
	}
	type mark struct {
		state string
		at    time.Time
	}
	var marks []mark
	var armed, last protocol.UpdateState
	var downloaded int64 // the writing and later reports carry it
	for _, e := range page.Events {
		var pe protocol.Event
		var us protocol.UpdateState
		if json.Unmarshal(e.Data, &pe) != nil || pe.Kind != protocol.EventUpdate || json.Unmarshal(pe.Data, &us) != nil || us.DeploymentID != deployment {
			continue
		}
		if len(marks) == 0 || marks[len(marks)-1].state != us.State {
			marks = append(marks, mark{us.State, us.Since})
		}
		if us.State == protocol.UpdateArmed {
			armed = us
		}
		if us.Total > 0 {
			last = us
		}
		downloaded = max(downloaded, us.Downloaded)
	}
	var s strings.Builder
	prev := created
	fmt.Fprintf(&s, "  deployment created → ")
	for _, m := range marks {
		fmt.Fprintf(&s, "%s +%s → ", m.state, m.at.Sub(prev).Round(100*time.Millisecond))
		prev = m.at
	}
	fmt.Fprintf(&s, "(total %s)\n", prev.Sub(created).Round(time.Second))
	fmt.Fprintf(&s, "  downloaded %.1f MiB of the %.1f MiB the new slot holds; the slot's real change: %.1f MiB (64 KiB pieces of boot_a + system_a that differ between the release images)\n",
		float64(downloaded)/(1<<20), float64(last.Total)/(1<<20), float64(f.changedBytes(t))/(1<<20))
	fmt.Fprintf(&s, "  agent during the install: peak RSS %.1f MiB, %.1f CPU s", float64(armed.AgentMaxRSSBytes)/(1<<20), armed.AgentCPUSeconds)
	return s.String()
}

// changedBytes compares the A slots of the two release images piece by
// piece.
func (f *floor) changedBytes(t *testing.T) int64 {
	t.Helper()
	a, plan := openDisk(t, f.images[0])
	b, _ := openDisk(t, f.images[1])
	const piece = 64 << 10
	pa, pb := make([]byte, piece), make([]byte, piece)
	var changed int64
	for _, n := range []int{layout.BootA, layout.SystemA} {
		p := plan.Part(n)
		for off := p.Start; off < p.Start+p.Size; off += piece {
			na, _ := a.ReadAt(pa, off)
			nb, _ := b.ReadAt(pb, off)
			if na != nb || !bytes.Equal(pa[:na], pb[:nb]) {
				changed += piece
			}
		}
	}
	return changed
}

// openDisk opens a disk image read-only (closed when the test ends) and
// reads its partition table.
func openDisk(t *testing.T, path string) (*os.File, *layout.Plan) {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	fi, err := fd.Stat()
	if err != nil {
		t.Fatal(err)
	}
	plan, err := layout.ReadGPT(fd, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return fd, plan
}

// settled reports whether a deployment is in a final state.
func settled(d deploy.Deployment) bool {
	switch d.State {
	case deploy.StateCompleted, deploy.StatePaused, deploy.StateAborted, deploy.StateRolledBack:
		return true
	}
	return false
}

// Cut points of the power-cut sweep: the update state control last saw
// from the robot when the lab pulls the plug (after a random delay), or
// the moment of the trial restart itself.
const (
	cutDownloading = "downloading"
	cutWriting     = "writing"
	cutArmed       = "armed"   // the kernel restarted for the trial; power lost before the trial boot
	cutTrial       = "trial"   // during the trial's health check and commit
	cutCommitted   = "settled" // just after control saw the update's end
)

var cutPoints = []string{cutDownloading, cutWriting, cutArmed, cutTrial, cutCommitted}

// cutOutcome is one run of the sweep.
type cutOutcome struct {
	point   string // the cut point drawn
	at      string // where the update was when the power went (the point, or "settled" if it passed it unseen)
	delay   time.Duration
	booted  int    // boot partition the power-on after the cut chose
	result  string // the deployment's robot result after the cut
	retried bool   // a second deployment was needed to finish
}

// powerCuts runs n updates of the robot (VM powered off, release 2
// committed), alternating releases 1 and 2, each with a power cut at a
// seeded random point; after every cut the board must boot a complete slot
// with its agent online, and the update must reach success, by itself or
// retried.
func (f *floor) powerCuts(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware, n int, seed uint64) []cutOutcome {
	rng := rand.New(rand.NewPCG(seed, 0xc07))
	id := b.profile + "-" + b.serial.String()
	releases := []struct{ ref, version string }{{f.release1, imageVersion}, {f.release2, release2Version}}
	current := 1 // release 2 runs
	vm := f.powerOn(t, ctx, b, fw, f.committedBoot(t, ctx, b), false)
	var outcomes []cutOutcome
	for i := range n {
		next := 1 - current
		rel := releases[next]
		f.waitImage(t, ctx, id, releases[current].version, vm, 10*time.Minute)
		o := cutOutcome{point: cutPoints[rng.IntN(len(cutPoints))], delay: time.Duration(rng.IntN(8000)) * time.Millisecond}
		d := f.deployOpts(t, ctx, b, rel.ref, rel.version, deploy.Health{TimeoutSeconds: 600}, next == 0)
		vm, o.at = f.cutAt(t, ctx, b, fw, vm, d, o.point, o.delay)
		// The cut: power lost, the flag with it; the next power-on must
		// boot a complete slot whose agent comes online.
		vm.Close()
		fw.PowerCut()
		o.booted = f.committedBoot(t, ctx, b)
		vm = f.powerOn(t, ctx, b, fw, o.booted, false)
		got, vmAfter := f.runUntilFinal(t, ctx, b, fw, vm, d, 30*time.Minute)
		vm = vmAfter
		r := robotResult(got)
		o.result = r.State + "/" + r.UpdateState
		f.closeFailed(t, ctx, got)
		if r.State != deploy.RobotSucceeded {
			o.retried = true
			d = f.deployOpts(t, ctx, b, rel.ref, rel.version, deploy.Health{TimeoutSeconds: 600}, next == 0)
			got, vm = f.runUntilFinal(t, ctx, b, fw, vm, d, 30*time.Minute)
			if r := robotResult(got); r.State != deploy.RobotSucceeded {
				t.Fatalf("%s: cut %d (%s +%s): the retried update did not succeed: %s", b.name, i, o.point, o.delay, f.deploymentSummary(ctx, d))
			}
		}
		current = next
		outcomes = append(outcomes, o)
		t.Logf("%s: power cut %d/%d at %s +%s (update %s): booted partition %d, deployment %s, retried %v", b.name, i+1, n, o.point, o.delay, o.at, o.booted, o.result, o.retried)
	}
	f.waitImage(t, ctx, id, releases[current].version, vm, 10*time.Minute)
	vm.Close()
	return outcomes
}

// committedBoot is the partition a plain power-on boots now (read with
// the lab's independent tools).
func (f *floor) committedBoot(t *testing.T, ctx context.Context, b *board) int {
	t.Helper()
	boot, err := piboot.FromDisk(ctx, b.disk, piboot.DiskOptions{Board: piboot.Board{Revision: b.revision, Serial: b.serial}, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("%s: read the disk's boot choice: %v", b.name, err)
	}
	return boot.Partition
}

// cutAt follows the update on vm (restarting into the trial when asked)
// until point, waits delay and returns the VM to cut and where the update
// was.
func (f *floor) cutAt(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware, vm *vmlab.VM, deployment, point string, delay time.Duration) (*vmlab.VM, string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-vm.Exited():
			if !fw.Restarted(consoleText(vm)) {
				t.Fatalf("%s: the robot powered off during the update", b.name)
			}
			if point == cutArmed && fw.Tryboot() {
				return vm, cutArmed // the trial restart: cut before its boot
			}
			vm = f.powerOn(t, ctx, b, fw, f.nextBoot(t, ctx, b, fw), fw.Tryboot())
			continue
		case <-time.After(time.Second):
		}
		var d deploy.Deployment
		if err := f.control.Admin().Do(ctx, "GET", "/v1/deployments/"+deployment, nil, &d); err != nil {
			continue
		}
		r := robotResult(d)
		reached := r.UpdateState == point
		if point == cutCommitted {
			reached = (protocol.UpdateState{State: r.UpdateState}).Terminal()
		}
		if point == cutArmed {
			reached = false // waits for the restart above
		}
		if reached || (protocol.UpdateState{State: r.UpdateState}).Terminal() {
			at := r.UpdateState
			if (protocol.UpdateState{State: at}).Terminal() {
				at = cutCommitted
			}
			select {
			case <-vm.Exited():
			case <-time.After(delay):
			}
			return vm, at
		}
	}
	t.Fatalf("%s: the update never reached %s", b.name, point)
	return vm, ""
}

// nextBoot is the partition the firmware's next power-on chooses, tryboot
// flag included.
func (f *floor) nextBoot(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware) int {
	t.Helper()
	boot, err := piboot.FromDisk(ctx, b.disk, piboot.DiskOptions{Board: piboot.Board{Revision: b.revision, Serial: b.serial, Tryboot: fw.Tryboot()}, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("%s: read the disk's boot choice: %v", b.name, err)
	}
	return boot.Partition
}

// runUntilFinal keeps the robot running — every restart it asks for is
// the firmware's next boot — until control's deployment is final.
func (f *floor) runUntilFinal(t *testing.T, ctx context.Context, b *board, fw *piboot.Firmware, vm *vmlab.VM, deployment string, timeout time.Duration) (deploy.Deployment, *vmlab.VM) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-vm.Exited():
			if !fw.Restarted(consoleText(vm)) {
				t.Fatalf("%s: the robot powered off during deployment %s", b.name, deployment)
			}
			vm = f.powerOn(t, ctx, b, fw, f.nextBoot(t, ctx, b, fw), fw.Tryboot())
			continue
		case <-time.After(2 * time.Second):
		}
		var d deploy.Deployment
		if err := f.control.Admin().Do(ctx, "GET", "/v1/deployments/"+deployment, nil, &d); err == nil &&
			settled(d) {
			return d, vm
		}
	}
	t.Fatalf("%s: deployment %s not final within %s: %s", b.name, deployment, timeout, f.deploymentSummary(ctx, deployment))
	return deploy.Deployment{}, vm
}

// reportCuts logs which cut points the sweep hit and what followed.
func (f *floor) reportCuts(t *testing.T, outcomes []cutOutcome) {
	t.Helper()
	byPoint := map[string]int{}
	retried := 0
	for _, o := range outcomes {
		byPoint[o.at]++
		if o.retried {
			retried++
		}
	}
	var parts []string
	for _, p := range cutPoints {
		parts = append(parts, fmt.Sprintf("%s %d", p, byPoint[p]))
	}
	t.Logf("power-cut sweep (seed %d): %d cuts, by where the update was: %s; every power-on booted a complete slot and the agent came back online; %d updates needed a retry, all then succeeded",
		*seedFlag, len(outcomes), strings.Join(parts, ", "), retried)
}

// refuseDowngrade deploys release 1 to the robot running release 2 (on
// vm), as an ordinary deployment: the agent must refuse it as a
// downgrade, and slot A (release 1's, the inactive one) must be untouched.
func (f *floor) refuseDowngrade(t *testing.T, ctx context.Context, b *board, vm *vmlab.VM) {
	t.Helper()
	before := f.slotDigest(t, b, layout.BootA, layout.SystemA)
	d := f.deploy(t, ctx, b, f.release1, imageVersion, deploy.Health{TimeoutSeconds: 600})
	got := f.waitDeployment(t, ctx, d, vm, 10*time.Minute)
	f.closeFailed(t, ctx, got)
	r := robotResult(got)
	if r.State == deploy.RobotSucceeded || r.UpdateState != protocol.UpdateFailed || !strings.Contains(r.Reason, "downgrade") {
		t.Errorf("%s: release 1 deployed over release 2: %+v; want it refused as a downgrade", b.name, r)
	}
	if after := f.slotDigest(t, b, layout.BootA, layout.SystemA); after != before {
		t.Errorf("%s: the refused downgrade changed slot A", b.name)
	}
	t.Logf("%s: downgrade refused: %s", b.name, r.Reason)
}

// slotDigest hashes partitions of the board's disk (read while the VM
// runs: the partitions are not the running slot's).
func (f *floor) slotDigest(t *testing.T, b *board, parts ...int) string {
	t.Helper()
	disk, plan := openDisk(t, b.disk)
	h := sha256.New()
	for _, n := range parts {
		p := plan.Part(n)
		if _, err := io.Copy(h, io.NewSectionReader(disk, p.Start, p.Size)); err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// closeFailed aborts a deployment that stopped on a failure, as an
// engineer does after reading why: a paused deployment keeps its robots
// busy, and the next one for this robot would be refused.
func (f *floor) closeFailed(t *testing.T, ctx context.Context, d deploy.Deployment) {
	t.Helper()
	if d.State != deploy.StatePaused {
		return
	}
	if err := f.control.Admin().Do(ctx, "POST", "/v1/deployments/"+d.ID+"/abort", nil, nil); err != nil {
		t.Fatalf("abort the failed deployment %s: %v", d.ID, err)
	}
}

// TestConsolePatterns checks the lab's console patterns against lines as
// the lab's VMs print them (colours and all), so that a wait for one
// cannot pass by never matching.
func TestConsolePatterns(t *testing.T) {
	started := "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mlekiwi-agent.servi…\x1b[0m - Lekiwi Heartbeat robot agent."
	if !watchdogFed.MatchString(started) {
		t.Errorf("watchdogFed does not match %q", started)
	}
	if watchdogFed.MatchString("         Starting \x1b[0;1;39mlekiwi-agent.serv… - Lekiwi Heartbeat robot agent...") {
		t.Error("watchdogFed matches the unit starting, not started")
	}
	stopped := ansiEscape.ReplaceAllString("[\x1b[0;32m  OK  \x1b[0m] Stopped \x1b[0;1;39mlekiwi-agent.servi…\x1b[0m - Lekiwi Heartbeat robot agent.", "")
	if !anyLine([]string{stopped}, agentStopped) {
		t.Errorf("the stopped-agent pattern does not match %q", stopped)
	}
	if !trybootLine.MatchString("[  197.563465] reboot: Restarting system with command '0 tryboot'") {
		t.Error("trybootLine does not match the kernel's restart line")
	}
}
