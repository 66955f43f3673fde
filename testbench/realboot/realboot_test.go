// Package realboot_test runs the factory flow on a real arm64 kernel: a
// bare board (a QEMU VM shaped like a Pi 4 with an NVMe HAT: NVMe disk, servo buses on USB
// serial adapters, a Raspberry Pi MAC) netboots the provisioning kit from
// the station, its agent installs the robot image and reboots, the lab
// boots the installed disk as the Pi firmware would, and systemd starts the
// agent as the image ships it, which connects to control with the identity
// the factory issued. Control, the station and the image builder are the
// real programs, as processes.
package realboot_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/netboot/kit"
	"github.com/lekiwi/heartbeat/netboot/station"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/pisim"
	"github.com/lekiwi/heartbeat/testbench/pisim/netlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab/fixture"
	"github.com/lekiwi/heartbeat/testbench/vmlab/piboot"
)

var (
	all          = flag.Bool("realboot.all", false, "an XLE board too (make vm-test); without it a LeKiwi board and a held one")
	fixturesFlag = flag.String("realboot.fixtures", "", "fixtures prepared outside the namespace (set by the test itself)")
	cutsFlag     = flag.Int("realboot.cuts", 0, "power cuts at random points of as many updates of the LeKiwi robot (make vm-test: 20)")
	seedFlag     = flag.Uint64("realboot.seed", 1, "seed of the power cuts' points and delays")
)

// fixtures are what the test prepares before it moves into its private
// network namespace, where nothing outside can be reached (the Debian
// mirror included).
type fixtures struct {
	Dir                                string
	Agent, Control, Netboot, Provision string
	Agent2                             string   // release 2's agent: a newer version
	Debs                               []string // the kit's sources
	Base                               string   // the robot image's root tarball
}

func prepare(t *testing.T, ctx context.Context) string {
	dir := t.TempDir()
	fx := fixtures{Dir: dir}
	start := time.Now()
	bin := filepath.Join(dir, "bin")
	fx.Agent, fx.Agent2 = filepath.Join(bin, "agent-linux-arm64"), filepath.Join(bin, "agent2-linux-arm64")
	for _, a := range []struct{ out, version string }{{fx.Agent, agent1Version}, {fx.Agent2, agent2Version}} {
		if err := fixture.BuildGuestBinary(ctx, "github.com/lekiwi/heartbeat/cmd/agent", a.out, a.version); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if fx.Control, err = lab.ControlBinary(ctx, bin); err != nil {
		t.Fatal(err)
	}
	fx.Netboot, fx.Provision = filepath.Join(bin, "netboot"), filepath.Join(bin, "provision")
	for _, c := range []struct{ pkg, out string }{{"cmd/netboot", fx.Netboot}, {"cmd/provision", fx.Provision}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", c.out, "github.com/lekiwi/heartbeat/"+c.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", c.pkg, err, b)
		}
	}
	t.Logf("programs built in %s", time.Since(start).Round(time.Second))
	cache := fixture.CacheDir()
	if fx.Debs, err = kit.FetchDebs(ctx, filepath.Join(cache, "kit-debs"), testLog{t}); err != nil {
		t.Fatal(err)
	}
	if fx.Base, err = (vmlab.DebianBase{}).Tarball(ctx, cache, testLog{t}); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(fx)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "fixtures.json")
	writeFile(t, p, string(b))
	t.Logf("fixtures ready in %s", time.Since(start).Round(time.Second))
	return p
}

// testLog sends progress lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The boards are Pi 4s: the kit is made from Debian's packages, whose
// bookworm kernel has no Pi 5 device tree (netboot kit build says so; a
// Raspberry Pi OS image is the Pi 5's source), and a Pi bootloader fetches
// its model's. The VM is QEMU's virt machine either way.
const (
	piModel    = "Raspberry Pi 4 Model B Rev 1.4"
	piRevision = raspberrypi.Revision(0xc03114)
)

// imageVersion is the robot image's version, which control must show.
const imageVersion = "realboot-1"

// board is one VM on the factory floor.
type board struct {
	name     string
	profile  string // "" for a board that must be held
	mac      net.HardwareAddr
	serial   raspberrypi.Serial
	revision raspberrypi.Revision
	buses    []vmlab.ServoBus
	disk     string
}

func (b *board) deviceTree(bootloader map[string]uint32) *vmlab.DeviceTree {
	return &vmlab.DeviceTree{Model: piModel, Serial: "10000000" + b.serial.String(),
		Revision: uint32(b.revision), Bootloader: bootloader}
}

// floor is everything the boards meet: the LAN, control, the station.
type floor struct {
	t       *testing.T
	dir     string
	lan     *netlab.Lab
	control *lab.Member
	station *exec.Cmd
	http    string // the station's HTTP base URL
	log     *os.File
	steps   *stepClock
	mapped  map[string]int64 // bytes of data in each profile's image (its block map)
	// release2 is the LeKiwi image's next release in control's registry
	// (host/repo@digest), which the LeKiwi board updates to.
	release2 string
	// failing are releases 3 and 4, with -realboot.all.
	failing failingReleases
	// images are the LeKiwi images of releases 1 and 2, for the benchmark.
	images [2]string
	// release1 is release 1 in control's registry: the downgrade the
	// robot must refuse, and the sweep's other release.
	release1 string
}

func TestBareBoardToRobot(t *testing.T) {
	if !netlab.Inside() {
		for _, avail := range []func() error{vmlab.Available, netlab.Available} {
			if err := avail(); err != nil {
				t.Skip(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		defer cancel()
		fx := prepare(t, ctx)
		args := []string{"-test.run=^" + t.Name() + "$", "-test.v", "-test.count=1", "-test.timeout=40m", "-realboot.fixtures=" + fx}
		if *all {
			args = append(args, "-realboot.all")
		}
		args = append(args, fmt.Sprintf("-realboot.cuts=%d", *cutsFlag), fmt.Sprintf("-realboot.seed=%d", *seedFlag))
		out, err := netlab.Reexec(ctx, args...)
		t.Logf("in a private network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("%s in a private network namespace: %v", t.Name(), err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	f := newFloor(t, ctx)
	// A LeKiwi board and a board no profile fits (ten seconds of TCG) in
	// make test; the XLE board too with -realboot.all.
	boards := []*board{
		{name: "lekiwi", profile: "lekiwi", mac: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x5e, 0x00, 0x01},
			serial: 0x5eb00001, revision: piRevision, buses: vmlab.LeKiwiBuses()},
		{name: "held", mac: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x5e, 0x00, 0x03},
			serial: 0x5eb00003, revision: piRevision, buses: []vmlab.ServoBus{{IDs: []int{1, 2, 3, 4, 5}}}},
	}
	if *all {
		boards = append(boards, &board{name: "xle", profile: "xle", mac: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x5e, 0x00, 0x02},
			serial: 0x5eb00002, revision: piRevision, buses: vmlab.XLEBuses()})
	}
	for _, b := range boards {
		b.disk = sparseDisk(t, filepath.Join(f.dir, b.name+"-nvme.img"), 2<<30)
	}
	// Boards run one after the other: two TCG guests on two cores take
	// as long as one after the other, and each step's time stays its own.
	for _, b := range boards {
		t.Run(b.name, func(t *testing.T) { f.provision(t, ctx, b) })
	}
	t.Logf("steps (TCG on this machine; not a Pi's times):\n%s", f.steps)
}

// mappedBytes is the data an image holds, from its block map: what the
// factory run writes and reads back.
func mappedBytes(t *testing.T, img string) int64 {
	t.Helper()
	fd, err := os.Open(bmap.SidecarPath(img))
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	m, err := bmap.Parse(fd)
	if err != nil {
		t.Fatal(err)
	}
	return m.MappedBytes()
}

func sparseDisk(t *testing.T, p string, size int64) string {
	t.Helper()
	fd, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// newFloor builds the fixtures (cached across runs where expensive), the
// LAN, control and the station.
func newFloor(t *testing.T, ctx context.Context) *floor {
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "floor.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	f := &floor{t: t, dir: dir, log: logf, steps: &stepClock{}, mapped: map[string]int64{}}
	start := time.Now()
	var fx fixtures
	b, err := os.ReadFile(*fixturesFlag)
	if err == nil {
		err = json.Unmarshal(b, &fx)
	}
	if err != nil {
		t.Fatalf("fixtures (-realboot.fixtures=%q): %v", *fixturesFlag, err)
	}
	agent, controlBin, netbootBin, provisionBin, debs := fx.Agent, fx.Control, fx.Netboot, fx.Provision, fx.Debs

	// The provisioning kit from Debian's packages, as a factory engineer
	// makes it.
	kitDir := filepath.Join(dir, "kit")
	kitStart := time.Now()
	k, err := kit.Build(ctx, kit.Options{Debs: debs, Agent: agent, Out: kitDir, Progress: logf})
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.Stat(filepath.Join(kitDir, kit.Initramfs))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kit built in %s: kernel %s, initramfs %.1f MiB", time.Since(kitStart).Round(100*time.Millisecond),
		k.Boots[0].KernelRelease, float64(initrd.Size())/(1<<20))

	// The LAN: the station's bridge, the factory's DHCP server.
	if f.lan, err = netlab.New(ctx, 83); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.lan.Close(); err != nil {
			t.Error(err)
		}
	})
	stopDHCP, err := f.lan.StartFactoryDHCP(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopDHCP() })

	// Control, on the station's LAN address so the robots reach it.
	caDir := filepath.Join(dir, "ca")
	ca, err := lab.LabCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	dbAddr, err := lab.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t, f.lan.StationIP)
	f.control = &lab.Member{Name: "control", DataDir: filepath.Join(dir, "control"), LogPath: filepath.Join(dir, "control.log"),
		Binary: controlBin, CA: ca, Listen: netip.AddrPortFrom(f.lan.StationIP, port).String(), DBAddress: dbAddr}
	f.control.Args = []string{"init", "--ca-dir", caDir, "--data-dir", f.control.DataDir, "--db-address", dbAddr,
		"--node-id", "control", "--listen", f.control.Listen, "--log-level", "info"}
	if err := f.control.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.control.Kill)
	if err := waitReady(ctx, f.control, time.Minute); err != nil {
		t.Fatal(err)
	}

	// The robot image: the Debian base (mmdebstrap, cached), the kit's
	// kernel and initramfs on its boot slots, the agent, this control.
	base := fx.Base
	bootDir := filepath.Join(dir, "image-boot")
	if err := os.MkdirAll(bootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(kitDir, kit.Kernel), filepath.Join(bootDir, "vmlinuz"))
	copyFile(t, filepath.Join(kitDir, kit.Initramfs), filepath.Join(bootDir, "initrd.img"))
	writeFile(t, filepath.Join(bootDir, "config.txt"), "arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\nenable_uart=1\n")
	writeFile(t, filepath.Join(bootDir, "cmdline.txt"), "console=serial0,115200 rootwait\n")
	// The release signing key, as an engineer makes it; images trust it.
	releaseKey := filepath.Join(dir, "release.key")
	run(t, ctx, logf, provisionBin, "release", "keygen", "--out", releaseKey)
	buildImage := func(profile, agent, version string, epoch int64, img string) {
		runWith(t, ctx, logf, []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(epoch, 10)}, provisionBin, "image", "build",
			"--base", base, "--firmware", bootDir, "--profile", profile, "--agent", agent, "--control-url", f.control.URL(),
			"--update-key", releaseKey+".pub", "--version", version, "--boot-size", "64", "--out", img)
	}
	images := map[string]string{}
	for _, profile := range []string{"lekiwi", "xle"} {
		img := filepath.Join(dir, "images", profile+".img")
		imgStart := time.Now()
		buildImage(profile, agent, imageVersion, release1Epoch, img)
		images[profile] = img
		f.mapped[profile] = mappedBytes(t, img)
		t.Logf("%s image built in %s", profile, time.Since(imgStart).Round(100*time.Millisecond))
		if !*all {
			break
		}
	}
	// Release 2 of the LeKiwi image, in control's registry.
	img2 := filepath.Join(dir, "images", "lekiwi-2.img")
	imgStart := time.Now()
	buildImage("lekiwi", fx.Agent2, release2Version, release2Epoch, img2)
	f.images = [2]string{images["lekiwi"], img2}
	t.Logf("lekiwi release 2 image built in %s", time.Since(imgStart).Round(100*time.Millisecond))
	f.release2 = f.pushRelease(t, ctx, provisionBin, img2, release2Version, releaseKey, filepath.Join(caDir, "ca.crt"))
	f.release1 = f.pushRelease(t, ctx, provisionBin, images["lekiwi"], imageVersion, releaseKey, filepath.Join(caDir, "ca.crt"))
	if *all {
		// Releases 3 and 4: release 2's root, a changed kernel command
		// line each.
		for _, r := range []struct {
			version, cmdline string
			ref              *string
		}{{release3Version, release3Cmdline, &f.failing.noSSH}, {release4Version, release4Cmdline, &f.failing.hangs}} {
			boot := filepath.Join(dir, "image-boot-"+r.version)
			for _, name := range []string{"vmlinuz", "initrd.img", "config.txt"} {
				copyFile(t, filepath.Join(bootDir, name), filepath.Join(boot, name))
			}
			writeFile(t, filepath.Join(boot, "cmdline.txt"), "console=serial0,115200 rootwait "+r.cmdline+"\n")
			img := filepath.Join(dir, "images", "lekiwi-"+r.version+".img")
			runWith(t, ctx, logf, []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(release2Epoch+86400, 10)}, provisionBin, "image", "build",
				"--base", base, "--firmware", boot, "--profile", "lekiwi", "--agent", fx.Agent2, "--control-url", f.control.URL(),
				"--update-key", releaseKey+".pub", "--version", r.version, "--boot-size", "64", "--out", img)
			*r.ref = f.pushRelease(t, ctx, provisionBin, img, r.version, releaseKey, filepath.Join(caDir, "ca.crt"))
		}
	}

	// The station's node certificate, as `provision ca issue-node` makes it.
	certPEM, keyPEM, err := ca.IssueNode(pki.NodeRequest{Name: "station-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "station-creds")
	if err := os.MkdirAll(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(creds, "node.crt"), string(certPEM))
	writeFile(t, filepath.Join(creds, "node.key"), string(keyPEM))
	writeFile(t, filepath.Join(creds, "ca.crt"), string(ca.CertPEM))
	httpPort := freePort(t, f.lan.StationIP)
	f.http = "http://" + netip.AddrPortFrom(f.lan.StationIP, httpPort).String()
	args := []string{"serve", "--interface", f.lan.StationIf, "--server-ip", f.lan.StationIP.String(),
		"--http-addr", netip.AddrPortFrom(f.lan.StationIP, httpPort).String(), "--tftp-addr", f.lan.StationIP.String() + ":69",
		"--boot-dir", kitDir, "--image", images["lekiwi"], "--state-dir", filepath.Join(dir, "station"),
		"--control", f.control.URL(), "--cert", filepath.Join(creds, "node.crt"), "--key", filepath.Join(creds, "node.key"),
		"--ca", filepath.Join(creds, "ca.crt"),
		// Under TCG a servo answers through QEMU's emulated USB in 9-67 ms.
		"--kernel-args", "console=serial0,115200 rdinit=/init " + protocol.KernelArgPingTimeout + "=500ms"}
	for p, img := range images {
		args = append(args, "--profile-image", p+"="+img)
	}
	stationLog, err := os.Create(filepath.Join(dir, "station.log"))
	if err != nil {
		t.Fatal(err)
	}
	f.station = exec.Command(netbootBin, args...)
	f.station.Stdout, f.station.Stderr = stationLog, stationLog
	if err := f.station.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.station.Process.Kill()
		f.station.Wait()
		stationLog.Close()
		if t.Failed() {
			for _, p := range []string{stationLog.Name(), f.control.LogPath, logf.Name()} {
				t.Logf("--- %s (tail)\n%s", filepath.Base(p), tail(p, 40))
			}
		}
	})
	t.Logf("floor ready in %s", time.Since(start).Round(time.Second))
	return f
}

// provision takes one board from power-on to an online robot (or, for a
// board no profile fits, to held with nothing written).
func (f *floor) provision(t *testing.T, ctx context.Context, b *board) {
	power := time.Now()
	clock := f.steps.board(b.name, power)
	b1, res, err := piboot.FromNetwork(ctx, piboot.NetworkOptions{
		Pi:  pisim.Pi{Model: 4, MAC: b.mac, Serial: b.serial, Revision: b.revision},
		Sim: pisim.Config{Interface: f.lan.PisIf, Netns: f.lan.Path(f.lan.Pis), DiscoverRetry: time.Second, DHCPTimeout: 30 * time.Second},
		Dir: t.TempDir(),
	})
	if err != nil {
		t.Fatalf("network boot: %v\nso far: %+v (DHCP %+v)\n%s", err, res.Files, res.DHCP, f.lan.Describe(ctx))
	}
	clock.mark("dhcp", power.Add(res.DHCP.AckLatency))
	clock.mark("tftp", time.Now())
	defer f.waitDeviceSeen(t, ctx, b.mac)
	vm := vmlab.StartTest(t, ctx, vmlab.Config{Dir: t.TempDir(),
		Kernel: b1.Kernel, Initramfs: b1.Initramfs, Cmdline: b1.Cmdline,
		DeviceTree: b.deviceTree(b1.Bootloader()),
		Disk:       &vmlab.Disk{Path: b.disk},
		NIC:        &vmlab.NIC{MAC: b.mac, Bridge: f.lan.StationIf},
		ServoBuses: b.buses,
		Timeout:    20 * time.Minute,
	})
	step := func(name, pattern string, timeout time.Duration) vmlab.Line {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		l, err := vm.WaitFor(wctx, regexp.MustCompile(pattern))
		if err != nil {
			t.Fatalf("%s: waiting for %q: %v", b.name, pattern, err)
		}
		clock.mark(name, time.Now())
		return l
	}
	step("kernel", `init: modules: \d+ loaded`, 3*time.Minute)
	step("probe", `factory: .* reported to `, 5*time.Minute)
	if b.profile == "" {
		f.expectHeld(t, ctx, b, vm)
		return
	}
	step("identity", `factory: installing image .* for `+b.profile+`-`, 5*time.Minute)
	installStart := time.Now()
	step("install", `factory: rebooting \(installed `, 15*time.Minute)
	took := time.Since(installStart)
	t.Logf("%s: installed %d MiB of image data in %s (%.0f MB/s, written and read back)", b.name, f.mapped[b.profile]>>20,
		took.Round(100*time.Millisecond), float64(f.mapped[b.profile])/1e6/took.Seconds())
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("%s: the provisioning VM did not reboot: %v", b.name, err)
	}
	clock.mark("reboot", time.Now())

	// Power on again: the lab's firmware reads the installed disk.
	fw := &piboot.Firmware{Disk: b.disk, Board: piboot.Board{Revision: b.revision, Serial: b.serial}}
	fw.Restarted(consoleText(vm))
	b2, err := fw.PowerOn(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("%s: boot from the installed disk: %v", b.name, err)
	}
	if b2.Partition != 2 {
		t.Errorf("%s: the firmware chose boot partition %d, want boot_a (2)", b.name, b2.Partition)
	}
	vm2 := vmlab.StartTest(t, ctx, vmlab.Config{Dir: t.TempDir(),
		Kernel: b2.Kernel, Initramfs: b2.Initramfs, Cmdline: b2.Cmdline,
		DeviceTree: b.deviceTree(b2.Bootloader()),
		Disk:       &vmlab.Disk{Path: b.disk},
		NIC:        &vmlab.NIC{MAC: b.mac, Bridge: f.lan.StationIf},
		ServoBuses: b.buses,
		Timeout:    15 * time.Minute,
	})
	robot := f.waitOnline(t, ctx, b, vm2, 10*time.Minute)
	clock.mark("online", time.Now())
	robot.checkHardware(t, b)
	t.Logf("%s: robot %s online %s after power-on: %s", b.name, robot.ID, time.Since(power).Round(time.Second), robot.summary())
	if b.profile == "lekiwi" {
		f.update(t, ctx, b, vm2, fw, clock)
		if *all {
			f.updateFailures(t, ctx, b, fw, clock)
		}
		if *cutsFlag > 0 {
			f.reportCuts(t, f.powerCuts(t, ctx, b, fw, *cutsFlag, *seedFlag))
		}
	}
}

// expectHeld checks a board no profile fits: the station holds it with the
// matcher's reason, control has no robot for it, its disk is untouched.
func (f *floor) expectHeld(t *testing.T, ctx context.Context, b *board, vm *vmlab.VM) {
	t.Helper()
	var st station.BoardStatus
	deadline := time.Now().Add(2 * time.Minute)
	for {
		report, err := f.status(ctx)
		if err == nil {
			for _, bs := range report.Boards {
				if bs.Serial == b.serial.String() {
					st = bs
				}
			}
		}
		if st.Status == station.StatusHeld || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if st.Status != station.StatusHeld || !strings.Contains(st.Reason, "ttyUSB0") {
		t.Fatalf("%s: station shows %+v; want it held with the matcher's reason naming its bus", b.name, st)
	}
	var doc json.RawMessage
	if err := f.control.Admin().Do(ctx, "GET", "/v1/robots/lekiwi-"+b.serial.String(), nil, &doc); err == nil {
		t.Errorf("%s: control has a robot for a held board: %s", b.name, doc)
	}
	// The VM keeps running (re-probing for a technician); its disk has
	// not been written: the sparse file still holds no data.
	fd, err := os.Open(b.disk)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if off, err := fd.Seek(0, 3 /* SEEK_DATA */); err == nil {
		t.Errorf("%s: a held board's disk has data at offset %d", b.name, off)
	}
	t.Logf("%s: held: %s", b.name, st.Reason)
	vm.Close()
}

// status reads the station's GET /status.
func (f *floor) status(ctx context.Context) (station.StatusReport, error) {
	var r station.StatusReport
	req, err := http.NewRequestWithContext(ctx, "GET", f.http+station.StatusPath, nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

// waitDeviceSeen waits until control has the station's DeviceSeen event
// for mac: the board's DHCP went through the station's proxy DHCP snoop,
// its outbox, and control's factory route.
func (f *floor) waitDeviceSeen(t *testing.T, ctx context.Context, mac net.HardwareAddr) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var page struct {
			Events []struct {
				Type string          `json:"type"`
				Data json.RawMessage `json:"data"`
			} `json:"events"`
		}
		if err := f.control.Admin().Do(ctx, "GET", "/v1/events?limit=1000", nil, &page); err == nil {
			for _, e := range page.Events {
				var d protocol.DeviceSeen
				if e.Type == protocol.EventDeviceSeen && json.Unmarshal(e.Data, &d) == nil && strings.EqualFold(d.MAC, mac.String()) {
					if !d.IsPi {
						t.Errorf("DeviceSeen for %s says it is not a Pi: %s", mac, e.Data)
					}
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control has no %s event for %s a minute after its DHCP", protocol.EventDeviceSeen, mac)
		}
		time.Sleep(time.Second)
	}
}

// robotView is what the test reads of control's robot document.
type robotView struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Hardware struct {
		Serial   string `json:"serial"`
		Model    string `json:"model"`
		Revision string `json:"revision"`
	} `json:"hardware"`
	Network struct {
		MAC string `json:"mac"`
	} `json:"network"`
	Status struct {
		State string `json:"state"`
	} `json:"status"`
	Deployment struct {
		OSVersion string `json:"os_version"`
		Image     struct {
			Version string `json:"version"`
			Profile string `json:"profile"`
		} `json:"image"`
	} `json:"deployment"`
	Resources struct {
		MemoryTotal int64 `json:"memory_total_bytes"`
	} `json:"resources"`
}

func (r robotView) summary() string {
	return fmt.Sprintf("%s %s (revision %s, serial %s), MAC %s, %s, image %s (%s), %d MiB of memory", r.Type, r.Hardware.Model, r.Hardware.Revision,
		r.Hardware.Serial, r.Network.MAC, r.Deployment.OSVersion, r.Deployment.Image.Version, r.Deployment.Image.Profile, r.Resources.MemoryTotal>>20)
}

// checkHardware compares control's record with what the VM really is.
func (r robotView) checkHardware(t *testing.T, b *board) {
	t.Helper()
	if r.Type != b.profile || r.Deployment.Image.Profile != b.profile || r.Deployment.Image.Version != imageVersion {
		t.Errorf("%s: control says type %q, image %q of profile %q; want %s, %s", b.name, r.Type, r.Deployment.Image.Version, r.Deployment.Image.Profile, b.profile, imageVersion)
	}
	if r.Hardware.Model != piModel || r.Hardware.Serial != "10000000"+b.serial.String() || r.Hardware.Revision != fmt.Sprintf("%x", uint32(b.revision)) {
		t.Errorf("%s: control's hardware %+v; want %s, serial 10000000%s, revision %x (the VM's device tree)", b.name, r.Hardware, piModel, b.serial, uint32(b.revision))
	}
	if !strings.EqualFold(r.Network.MAC, b.mac.String()) {
		t.Errorf("%s: control's MAC %s, want the VM's %s", b.name, r.Network.MAC, b.mac)
	}
	// The VM has vmlab's default 1 GiB; the kernel keeps some for itself.
	if mib := r.Resources.MemoryTotal >> 20; mib < 900 || mib > 1024 {
		t.Errorf("%s: control says %d MiB of memory, the VM has 1024", b.name, mib)
	}
}

// waitOnline waits until control's record of the robot is complete: online
// (its hello committed), with the network and resources its first
// telemetry brings — the record is checked as control holds it, not at the
// first moment one field says online.
func (f *floor) waitOnline(t *testing.T, ctx context.Context, b *board, vm *vmlab.VM, timeout time.Duration) robotView {
	t.Helper()
	id := b.profile + "-" + b.serial.String()
	deadline := time.Now().Add(timeout)
	var last robotView
	var lastErr error
	for time.Now().Before(deadline) {
		var doc json.RawMessage
		lastErr = f.control.Admin().Do(ctx, "GET", "/v1/robots/"+id, nil, &doc)
		if lastErr == nil {
			if lastErr = json.Unmarshal(doc, &last); lastErr == nil && last.Status.State == "online" &&
				last.Network.MAC != "" && last.Resources.MemoryTotal > 0 {
				return last
			}
		}
		select {
		case <-vm.Exited():
			t.Fatalf("%s: the robot's VM stopped before it came online:\n%s", b.name, tail(filepath.Join(vm.Dir, "console.log"), 60))
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
	t.Fatalf("%s: robot %s not online with its network and resources within %s (last: %+v, %v)", b.name, id, timeout, last, lastErr)
	return last
}

// stepClock records when each board passed each step, for the benchmark.
type stepClock struct{ boards []*boardClock }

type boardClock struct {
	name  string
	power time.Time
	marks []mark
}

type mark struct {
	step string
	at   time.Time
}

func (c *stepClock) board(name string, power time.Time) *boardClock {
	b := &boardClock{name: name, power: power}
	c.boards = append(c.boards, b)
	return b
}

func (b *boardClock) mark(step string, at time.Time) { b.marks = append(b.marks, mark{step, at}) }

func (c *stepClock) String() string {
	var s strings.Builder
	for _, b := range c.boards {
		fmt.Fprintf(&s, "%s:", b.name)
		prev := b.power
		for _, m := range b.marks {
			fmt.Fprintf(&s, " %s +%s", m.step, m.at.Sub(prev).Round(100*time.Millisecond))
			prev = m.at
		}
		fmt.Fprintf(&s, " (total %s)\n", prev.Sub(b.power).Round(time.Second))
	}
	return s.String()
}

func waitReady(ctx context.Context, m *lab.Member, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var v json.RawMessage
		err := m.Admin().Do(ctx, "GET", "/v1/robots", nil, &v)
		if err == nil {
			return nil
		}
		if !m.Running() || time.Now().After(deadline) {
			return fmt.Errorf("control not ready: %v\n%s", err, tail(m.LogPath, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func freePort(t *testing.T, ip netip.Addr) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func run(t *testing.T, ctx context.Context, log *os.File, bin string, args ...string) {
	t.Helper()
	runWith(t, ctx, log, nil, bin, args...)
}

// runWith runs bin with env added to the test's environment.
func runWith(t *testing.T, ctx context.Context, log *os.File, env []string, bin string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	log.Write(out)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b))
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func tail(p string, n int) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
