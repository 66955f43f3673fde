package station

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// One board from DHCP to installed, through a control outage at the
// identity step: the board only keeps polling its plan and continues by
// itself once control is back.
func TestBoardFromSeenToInstalledThroughControlOutage(t *testing.T) {
	b, ctl := newBench(t), newFakeControl()
	st := b.start(t, ctl)
	const serial = "d83add01"
	now := time.Now()
	st.deviceSeen(dhcp.DeviceSeen{MAC: "d8:3a:dd:01:02:03", IsPi: true, Serial: serial, Revision: "d04170", Model: "Raspberry Pi 5 8GB", FirstSeen: now, LastSeen: now})
	st.deviceSeen(dhcp.DeviceSeen{MAC: "00:11:22:33:44:55", FirstSeen: now, LastSeen: now}) // a laptop
	if got := st.board(serial); got.Step != StepSeen || got.MAC != "d8:3a:dd:01:02:03" || got.Model != "Raspberry Pi 5 8GB" {
		t.Fatalf("after DHCP: %+v", got)
	}
	if len(st.Status().Boards) != 1 {
		t.Fatalf("the laptop became a board: %+v", st.Status().Boards)
	}

	token, config, cmdline := st.netboot(t, serial)
	for _, want := range []string{"arm_64bit=1\n", "kernel=vmlinuz\n", "initramfs initrd.img followkernel\n"} {
		if !strings.Contains(config, want) {
			t.Errorf("config.txt lacks %q:\n%s", want, config)
		}
	}
	wantCmd := DefaultKernelArgs + " lekiwi.station=" + st.StationURL() + " lekiwi.token=" + token + "\n"
	if cmdline != wantCmd || !strings.HasPrefix(st.StationURL(), "http://127.0.0.1:") {
		t.Errorf("cmdline.txt = %q, want %q", cmdline, wantCmd)
	}
	eventually(t, "boot done", func() bool { b := st.board(serial); return b.Step == StepBoot && b.Status == StatusDone })

	ctl.setDown(true)
	var plan protocol.StationPlan
	if code := st.call(t, "POST", protocol.StationReportPath, token, lekiwiReport(serial), &plan); code != 200 {
		t.Fatalf("report: %d", code)
	}
	if plan.Action != protocol.PlanWait || plan.RetryAfterSeconds != 1 || plan.Profile != "lekiwi" || !strings.HasPrefix(plan.Reason, "waiting for control (unreachable since ") {
		t.Fatalf("plan while control is down: %+v", plan)
	}
	if got := st.board(serial); got.Status != StatusWaiting || !strings.Contains(got.Reason, "connection refused") {
		t.Fatalf("status while control is down: %+v", got)
	}
	// The loop keeps trying while the board waits.
	ctl.mu.Lock()
	before := ctl.request
	ctl.mu.Unlock()
	eventually(t, "identity retries", func() bool { ctl.mu.Lock(); defer ctl.mu.Unlock(); return ctl.request >= before+2 })

	ctl.setDown(false)
	eventually(t, "install plan", func() bool {
		plan = protocol.StationPlan{}
		st.call(t, "GET", protocol.StationPlanPath, token, nil, &plan)
		return plan.Action == protocol.PlanInstall
	})
	want := protocol.StationPlan{Action: protocol.PlanInstall, Profile: "lekiwi", RobotID: "lekiwi-" + serial, Hostname: "lekiwi-" + serial,
		EnrollToken: plan.EnrollToken, CAPEM: "-----BEGIN CERTIFICATE-----\nfleet\n-----END CERTIFICATE-----\n",
		ImageSize: int64(len(b.imageData)), ImageVersion: "2025.1", Storage: "nvme0n1"}
	if plan != want || !strings.HasPrefix(plan.EnrollToken, "lke_") {
		t.Fatalf("install plan:\n got %+v\nwant %+v", plan, want)
	}

	for _, p := range []protocol.StationProgress{
		{Step: StepInstall, Status: StatusStarted, Total: 100},
		{Step: StepInstall, Status: StatusDone, Done: 100, Total: 100},
		{Step: StepVerify, Status: StatusDone, Done: 100, Total: 100},
		{Step: StepIdentity, Status: StatusStarted},
		{Step: StepIdentity, Status: StatusDone},
		{Step: StepReboot, Status: StatusStarted},
	} {
		if code := st.call(t, "POST", protocol.StationProgressPath, token, p, nil); code != http.StatusNoContent {
			t.Fatalf("progress %+v: %d", p, code)
		}
	}
	plan = protocol.StationPlan{}
	if code := st.call(t, "GET", protocol.StationPlanPath, token, nil, &plan); code != 200 || plan.Action != protocol.PlanDone || plan.EnrollToken != "" {
		t.Fatalf("plan after install: %d %+v", code, plan)
	}
	if got := st.board(serial); got.Step != StepOnline || got.Status != StatusWaiting || got.RobotID != "lekiwi-"+serial {
		t.Fatalf("after install: %+v", got)
	}
	raw, err := os.ReadFile(filepath.Join(b.state, "boards", serial+".json"))
	if err != nil || strings.Contains(string(raw), "lke_token") {
		t.Fatalf("the enrollment token outlived the install in the state file (%v):\n%s", err, raw)
	}

	eventually(t, "events at control", func() bool { return hasStep(ctl.steps(serial), StepOnline, StatusWaiting) })
	// The robot enrolls and connects: control sees it online, and so the
	// station ends the board's run.
	ctl.setOnline("lekiwi-" + serial)
	eventually(t, "online/done", func() bool {
		got := st.board(serial)
		return got.Step == StepOnline && got.Status == StatusDone && hasStep(ctl.steps(serial), StepOnline, StatusDone)
	})
	steps := ctl.steps(serial)
	for _, w := range [][2]string{{StepSeen, StatusDone}, {StepBoot, StatusStarted}, {StepBoot, StatusDone}, {StepProbe, StatusDone},
		{StepMatch, StatusDone}, {StepIdentity, StatusWaiting}, {StepIdentity, StatusDone}, {StepInstall, StatusDone}, {StepReboot, StatusStarted}} {
		if !hasStep(steps, w[0], w[1]) {
			t.Errorf("control has no %s/%s event: %+v", w[0], w[1], steps)
		}
	}
	waits := 0
	for _, s := range steps {
		if s.Step == StepIdentity && s.Status == StatusWaiting {
			waits++
		}
	}
	if waits != 1 {
		t.Errorf("%d identity/waiting events, want one however often the station retried", waits)
	}
	macs := map[string]bool{}
	for _, d := range ctl.seen() {
		macs[d.MAC] = true
	}
	if !macs["d8:3a:dd:01:02:03"] || !macs["00:11:22:33:44:55"] {
		t.Errorf("DeviceSeen events for %v, want the Pi and the laptop", macs)
	}
}

// An XLE gets its profile; hardware that matches nothing, and a board
// control refuses, are held with reasons a technician can act on.
func TestProfilesAndHolds(t *testing.T) {
	b, ctl := newBench(t), newFakeControl()
	ctl.refuse["0badcafe"] = "robot lekiwi-0badcafe is already enrolled: revoke it first"
	st := b.start(t, ctl)

	unknown := lekiwiReport("c0ffee00")
	unknown.ServoBuses = []protocol.ServoBus{{Device: "/dev/ttyACM0", IDs: []int{1, 2, 3, 4, 5, 6, 7, 8}}}
	var buses []profiles.ObservedBus
	for _, b := range unknown.ServoBuses {
		buses = append(buses, profiles.ObservedBus{Device: b.Device, IDs: b.IDs})
	}
	m, err := profiles.MatchEmbedded(buses)
	if err != nil || !m.Held() || m.Reason == "" {
		t.Fatalf("the matcher does not hold 8 motors: %+v %v", m, err)
	}
	noDisk := lekiwiReport("feed0001")
	noDisk.Storage = []protocol.StorageDevice{{Name: "sda", Kind: protocol.StorageUSB, SizeBytes: 8 << 30}}

	for _, c := range []struct {
		serial string
		report protocol.HardwareReport
		want   protocol.StationPlan
	}{
		{"1234abcd", xleReport("1234abcd"), protocol.StationPlan{Action: protocol.PlanInstall, Profile: "xle", RobotID: "xle-1234abcd", Hostname: "xle-1234abcd", Storage: "mmcblk0"}},
		{"c0ffee00", unknown, protocol.StationPlan{Action: protocol.PlanHold, Reason: m.Reason}},
		{"0badcafe", lekiwiReport("0badcafe"), protocol.StationPlan{Action: protocol.PlanHold, Profile: "lekiwi", Reason: "control refused the identity: " + ctl.refuse["0badcafe"]}},
		{"feed0001", noDisk, protocol.StationPlan{Action: protocol.PlanHold, Reason: "no NVMe drive, eMMC or SD card to install onto (found: sda (usb, 8589934592 bytes)): fit one and reboot the board"}},
	} {
		token, _, _ := st.netboot(t, c.serial)
		var plan protocol.StationPlan
		if code := st.call(t, "POST", protocol.StationReportPath, token, c.report, &plan); code != 200 {
			t.Fatalf("%s: report %d", c.serial, code)
		}
		got := protocol.StationPlan{Action: plan.Action, Profile: plan.Profile, RobotID: plan.RobotID, Hostname: plan.Hostname, Storage: plan.Storage, Reason: plan.Reason}
		if got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.serial, got, c.want)
		}
		if bs := st.board(c.serial); c.want.Action == protocol.PlanHold && (bs.Status != StatusHeld || bs.Reason != c.want.Reason) {
			t.Errorf("%s: status %+v, want held with the plan's reason", c.serial, bs)
		}
	}
}

// Only the board that booted the station's files may speak for its
// serial, and only with this boot's token.
func TestBoardTokens(t *testing.T) {
	b, ctl := newBench(t), newFakeControl()
	st := b.start(t, ctl)
	ctl.refuse["aabbccdd"] = "no"
	first, _, _ := st.netboot(t, "aabbccdd")
	var plan protocol.StationPlan
	if st.call(t, "GET", protocol.StationPlanPath, first, nil, &plan); plan.Action != protocol.PlanWait {
		t.Fatalf("plan before the report: %+v", plan)
	}
	st.call(t, "POST", protocol.StationReportPath, first, lekiwiReport("aabbccdd"), &plan)
	if plan.Action != protocol.PlanHold {
		t.Fatalf("refused board: %+v", plan)
	}
	// The held board reboots: a new run, a new token.
	second, _, _ := st.netboot(t, "aabbccdd")
	if second == first {
		t.Fatal("a new run kept the old board token")
	}
	other, _, _ := st.netboot(t, "11223344")
	for _, c := range []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"no token", "GET", protocol.StationPlanPath, "", nil, 401},
		{"wrong token", "GET", protocol.StationPlanPath, "0123456789abcdef0123456789abcdef", nil, 401},
		{"previous run's token", "POST", protocol.StationReportPath, first, lekiwiReport("aabbccdd"), 401},
		{"previous run's token, progress", "POST", protocol.StationProgressPath, first, protocol.StationProgress{Step: "install", Status: "started"}, 401},
		{"this run's token", "GET", protocol.StationPlanPath, second, nil, 200},
		{"another board's token for this serial", "POST", protocol.StationReportPath, other, lekiwiReport("aabbccdd"), 400},
		{"unknown step", "POST", protocol.StationProgressPath, second, protocol.StationProgress{Step: "dance", Status: "started"}, 400},
		{"report that is not JSON", "POST", protocol.StationReportPath, second, "x", 400},
	} {
		if got := st.call(t, c.method, c.path, c.token, c.body, nil); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// A restart keeps boards (token, step, profile) and the events control
// has not stored yet; the waiting board then continues.
func TestRestartKeepsBoardsAndEvents(t *testing.T) {
	b, ctl := newBench(t), newFakeControl()
	ctl.setDown(true)
	st := b.start(t, ctl)
	const serial = "5eed0001"
	token, _, _ := st.netboot(t, serial)
	var plan protocol.StationPlan
	st.call(t, "POST", protocol.StationReportPath, token, xleReport(serial), &plan)
	if plan.Action != protocol.PlanWait {
		t.Fatalf("plan: %+v", plan)
	}
	pending := st.Outbox().Pending
	if pending < 5 {
		t.Fatalf("%d events pending while control is down, want the board's steps", pending)
	}
	before := st.board(serial)
	st.stop()

	st2 := b.start(t, ctl)
	after := st2.board(serial)
	if after.Step != StepIdentity || after.Status != StatusWaiting || after.Profile != "xle" || !after.FirstSeen.Equal(before.FirstSeen) {
		t.Fatalf("after restart: %+v\nbefore: %+v", after, before)
	}
	if got := st2.Outbox().Pending; got < pending {
		t.Fatalf("%d events pending after restart, had %d", got, pending)
	}
	if code := st2.call(t, "GET", protocol.StationPlanPath, token, nil, &plan); code != 200 || plan.Action != protocol.PlanWait {
		t.Fatalf("token after restart: %d %+v", code, plan)
	}
	ctl.setDown(false)
	eventually(t, "install after restart", func() bool {
		plan = protocol.StationPlan{}
		st2.call(t, "GET", protocol.StationPlanPath, token, nil, &plan)
		return plan.Action == protocol.PlanInstall && plan.RobotID == "xle-"+serial
	})
	eventually(t, "queued events delivered", func() bool { return st2.Outbox().Pending == 0 })
	steps := ctl.steps(serial)
	if !hasStep(steps, StepBoot, StatusStarted) || !hasStep(steps, StepIdentity, StatusDone) {
		t.Fatalf("events before and after the restart: %+v", steps)
	}
}

// The image (and its block map) resume with Range.
func TestImageRange(t *testing.T) {
	b := newBench(t)
	st := b.start(t, newFakeControl())
	for _, c := range []struct {
		rng        string
		start, end int // inclusive
	}{{"bytes=0-99", 0, 99}, {"bytes=1000000-", 1000000, len(b.imageData) - 1}, {"bytes=-10", len(b.imageData) - 10, len(b.imageData) - 1}} {
		req, _ := http.NewRequest("GET", st.url(protocol.StationImagePath), nil)
		req.Header.Set("Range", c.rng)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantCR := fmt.Sprintf("bytes %d-%d/%d", c.start, c.end, len(b.imageData))
		if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != wantCR || string(got) != string(b.imageData[c.start:c.end+1]) {
			t.Errorf("%s: %d %q, %d bytes; want 206 %q", c.rng, resp.StatusCode, resp.Header.Get("Content-Range"), len(got), wantCR)
		}
	}
	resp, err := http.Get(st.url(protocol.StationImagePath + ".bmap"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != `<bmap version="2.0"/>` {
		t.Fatalf("bmap: %d %q", resp.StatusCode, got)
	}
}

// Boot files: a per-generation file wins for boards of that generation;
// names outside the boot directory are never served.
func TestBootFiles(t *testing.T) {
	b := newBench(t)
	if err := os.WriteFile(filepath.Join(filepath.Dir(b.boot), "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret", filepath.Join(b.boot, "escape")); err != nil {
		t.Fatal(err)
	}
	st := b.start(t, newFakeControl())
	now := time.Now()
	st.deviceSeen(dhcp.DeviceSeen{MAC: "dc:a6:32:00:00:01", IsPi: true, Serial: "4444aaaa", Revision: "c03111", FirstSeen: now, LastSeen: now}) // Pi 4B
	st.deviceSeen(dhcp.DeviceSeen{MAC: "2c:cf:67:00:00:01", IsPi: true, Serial: "5555aaaa", Revision: "d04170", FirstSeen: now, LastSeen: now}) // Pi 5
	ctx := t.Context()
	for _, c := range []struct {
		serial, file, want string
	}{
		{"4444aaaa", "start4.elf", "pi4 start4"},
		{"5555aaaa", "start4.elf", "generic start4"},
		{"", "start4.elf", "generic start4"},
	} {
		r, n, err := st.boot.Open(ctx, c.serial, c.file, netipZero)
		if err != nil {
			t.Fatalf("%s/%s: %v", c.serial, c.file, err)
		}
		buf := make([]byte, n)
		r.ReadAt(buf, 0)
		if string(buf) != c.want {
			t.Errorf("%s/%s = %q, want %q", c.serial, c.file, buf, c.want)
		}
		if cl, ok := r.(io.Closer); ok {
			cl.Close()
		}
	}
	for _, name := range []string{"escape", "pi4/../../secret", "missing.dtb"} {
		if _, _, err := st.boot.Open(ctx, "4444aaaa", name, netipZero); err == nil {
			t.Errorf("%s was served", name)
		}
	}
	if got := st.board("4444aaaa").Model; got != "Raspberry Pi 4B 4GB" {
		t.Errorf("model decoded from c03111 = %q", got)
	}
}

var netipZero netip.AddrPort

func TestStatusAndMetrics(t *testing.T) {
	b := newBench(t)
	st := b.start(t, newFakeControl())
	st.netboot(t, "abcdef01")
	var rep StatusReport
	if code := st.call(t, "GET", StatusPath, "", nil, &rep); code != 200 || len(rep.Boards) != 1 || rep.Boards[0].Serial != "abcdef01" || rep.StationURL != st.StationURL() {
		t.Fatalf("status: %d %+v", code, rep)
	}
	raw, _ := json.Marshal(rep)
	if strings.Contains(string(raw), "token") {
		t.Fatalf("/status shows a token: %s", raw)
	}
	resp, err := http.Get(st.url(MetricsPath))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`lekiwi_netboot_station_boards{status="`, `lekiwi_netboot_station_tftp_transfers_total{result="probe"}`, "lekiwi_netboot_tftp_transfers_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
