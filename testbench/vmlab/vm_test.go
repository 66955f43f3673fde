package vmlab_test

import (
	"context"
	"flag"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/testbench/vmlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab/fixture"
)

var (
	long   = flag.Bool("vmlab.long", false, "also run the long VM tests (XLE's two buses, CPU model timings): minutes of TCG")
	logDir = flag.String("vmlab.logdir", "", "keep each VM's console and QEMU logs under this directory (default: the test's temporary directory, removed)")
)

// vmDir is the VM's Config.Dir: under -vmlab.logdir when given, so the
// logs outlive the test; else "" (StartTest's t.TempDir).
func vmDir(t *testing.T) string {
	t.Helper()
	if *logDir == "" {
		return ""
	}
	d := filepath.Join(*logDir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-"+time.Now().Format("150405"))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// smokeModules are what smokeinit needs from the Debian kernel, which
// builds them all as modules: NVMe, the xHCI controller with the USB core,
// the FTDI serial driver, and virtio-net on virtio-pci. Their dependencies
// (nvme-core, t10-pi, usb-common, usbserial, net_failover, failover,
// virtio_pci_*_dev…) are resolved by image/kmod from each module's .modinfo.
var smokeModules = []string{"nvme", "xhci_pci", "ftdi_sio", "virtio_pci", "virtio_net"}

// kernelFixture is the Debian arm64 kernel, fetched into the lab's cache
// when missing.
func kernelFixture(t *testing.T, ctx context.Context) fixture.Kernel {
	t.Helper()
	if err := vmlab.Available(); err != nil {
		t.Skip(err)
	}
	k, err := fixture.UnpackKernel(ctx, fixture.CacheDir(), fixture.DebianKernel())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// smokeInitramfs cross-compiles smokeinit and packs it with the modules.
func smokeInitramfs(t *testing.T, ctx context.Context, k fixture.Kernel) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "init")
	if err := fixture.BuildGuestBinary(ctx, "github.com/lekiwi/heartbeat/testbench/vmlab/internal/smokeinit", bin, ""); err != nil {
		t.Fatal(err)
	}
	init, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := k.Modules.Resolve(smokeModules...)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.cpio.gz")
	if err := fixture.WriteInitramfs(out, init, k.Modules, mods); err != nil {
		t.Fatal(err)
	}
	return out
}

func sparseDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nvme.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// expect waits for each pattern in turn and returns the submatches of each.
func expect(t *testing.T, ctx context.Context, vm *vmlab.VM, patterns ...string) [][]string {
	t.Helper()
	var out [][]string
	for _, p := range patterns {
		re := regexp.MustCompile(p)
		l, err := vm.WaitFor(ctx, re)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, re.FindStringSubmatch(l.Text))
	}
	return out
}

func noErrors(t *testing.T, vm *vmlab.VM) {
	t.Helper()
	for _, l := range vm.Console.Lines() {
		if strings.Contains(l.Text, "smokeinit: error") {
			t.Errorf("guest reported: %s", l.Text)
		}
	}
}

// TestSmokeLeKiwi boots the Debian kernel with smokeinit on a LeKiwi-shaped
// VM and checks every device from inside the guest: the Pi identity in the
// device tree, the NIC's MAC, the NVMe disk's size, the FTDI adapter, and
// servos 1-9 answering (10 silent) through the guest's ftdi_sio.
func TestSmokeLeKiwi(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	k := kernelFixture(t, ctx)
	if err := vmlab.NetAvailable(); err != nil {
		t.Skip(err)
	}
	initrd := smokeInitramfs(t, ctx, k)
	const diskSize = 96 << 20
	disk := sparseDisk(t, diskSize)
	lan, err := vmlab.NewNet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lan.Close(); err != nil {
			t.Error(err)
		}
	})
	mac := net.HardwareAddr{0xd8, 0x3a, 0xdd, 0x1e, 0x51, 0x01}
	vm := vmlab.StartTest(t, ctx, vmlab.Config{Dir: vmDir(t),
		Kernel: k.Image, Initramfs: initrd,
		Cmdline: "console=ttyAMA0 quiet smokeinit.buses=1",
		DeviceTree: &vmlab.DeviceTree{Model: "Raspberry Pi 5 Model B Rev 1.0", Serial: "10000000d83a1e51", Revision: 0xd04170,
			Bootloader: map[string]uint32{"partition": 2, "tryboot": 0}},
		Disk:       &vmlab.Disk{Path: disk, Serial: "LEKIWI-NVME-1"},
		NIC:        lan.NIC(mac),
		ServoBuses: vmlab.LeKiwiBuses(),
		Timeout:    3 * time.Minute,
	})
	m := expect(t, ctx, vm,
		`^smokeinit: start uptime=`,
		`^smokeinit: cmdline console=ttyAMA0 quiet smokeinit\.buses=1$`,
		`^smokeinit: dt model="Raspberry Pi 5 Model B Rev 1\.0" serial="10000000d83a1e51"$`,
		`^smokeinit: modules .*\bftdi_sio\b`,
		`^smokeinit: net eth0 mac=d8:3a:dd:1e:51:01$`,
		`^smokeinit: nvme nvme0n1 bytes=(\d+) serial=LEKIWI-NVME-1$`,
		`^smokeinit: usb-serial ttyUSB0 driver=ftdi_sio id=0403:6001 serial=LAB00000$`,
		`^smokeinit: servos ttyUSB0 answered=([0-9,]*) slowest=(\S+)$`,
		`^smokeinit: done$`,
	)
	if got, _ := strconv.ParseInt(m[5][1], 10, 64); got != diskSize {
		t.Errorf("the guest's NVMe disk is %d bytes, the image %d", got, diskSize)
	}
	if m[7][1] != "1,2,3,4,5,6,7,8,9" {
		t.Errorf("servos answering on ttyUSB0: %s, want 1-9", m[7][1])
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("QEMU did not exit cleanly after the guest powered off: %v", err)
	}
	noErrors(t, vm)
	// The guest's pings reached the simulator: ten of them, ID 10 too.
	if w := vm.Servo(0).Written(); len(w) < 10 {
		t.Errorf("the servo simulator got %d packets, want the 10 pings", len(w))
	}
	first := vm.Console.Lines()[0]
	for _, l := range vm.Console.Lines() {
		if strings.HasPrefix(l.Text, "smokeinit: start") {
			first = l
			break
		}
	}
	t.Logf("TCG %s: first userspace line after %.1fs (guest %s); servo round trip up to %s; QEMU ran %.1fs",
		vmlab.DefaultCPU, first.At.Seconds(), strings.TrimPrefix(first.Text, "smokeinit: start uptime="), m[7][2], vm.Uptime().Seconds())
}

// TestSmokeXLE is the XLE's wiring: two adapters, servos 1-8 and 1-9, told
// apart in the guest by their USB serial numbers.
func TestSmokeXLE(t *testing.T) {
	if !*long {
		t.Skip("a second full VM boot: run with -vmlab.long (make vm-test)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	k := kernelFixture(t, ctx)
	initrd := smokeInitramfs(t, ctx, k)
	vm := vmlab.StartTest(t, ctx, vmlab.Config{Dir: vmDir(t),
		Kernel: k.Image, Initramfs: initrd,
		Cmdline:    "console=ttyAMA0 quiet smokeinit.buses=2",
		DeviceTree: &vmlab.DeviceTree{Model: "Raspberry Pi 5 Model B Rev 1.0", Serial: "10000000d83a1e52"},
		Disk:       &vmlab.Disk{Path: sparseDisk(t, 64<<20)},
		ServoBuses: vmlab.XLEBuses(),
		Timeout:    3 * time.Minute,
	})
	re := regexp.MustCompile(`^smokeinit: usb-serial (ttyUSB\d) driver=ftdi_sio id=0403:6001 serial=(LAB\d+)$`)
	bySerial := map[string]string{}
	for range 2 {
		l, err := vm.WaitFor(ctx, re)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindStringSubmatch(l.Text)
		bySerial[m[2]] = m[1]
	}
	want := map[string]string{"LAB00000": "1,2,3,4,5,6,7,8", "LAB00001": "1,2,3,4,5,6,7,8,9"}
	got := map[string]string{}
	ping := regexp.MustCompile(`^smokeinit: servos (ttyUSB\d) answered=([0-9,]*) `)
	for range 2 {
		l, err := vm.WaitFor(ctx, ping)
		if err != nil {
			t.Fatal(err)
		}
		m := ping.FindStringSubmatch(l.Text)
		got[m[1]] = m[2]
	}
	for serial, ids := range want {
		if port := bySerial[serial]; got[port] != ids {
			t.Errorf("adapter %s (%s) answered %q, want %q", serial, port, got[port], ids)
		}
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	noErrors(t, vm)
}

// TestBootTimeByCPU measures, for each CPU model, how long the Debian
// kernel takes under TCG to reach smokeinit's first line and to power off
// (NVMe and one servo bus probed): two rounds, interleaved so that a burst
// of load on the host skews every model alike, and the faster of the two
// reported.
func TestBootTimeByCPU(t *testing.T) {
	if !*long {
		t.Skip("boots two VMs per CPU model: run with -vmlab.long (make vm-test)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	k := kernelFixture(t, ctx)
	initrd := smokeInitramfs(t, ctx, k)
	cpus := []string{"cortex-a72", "cortex-a76", "max", "max,pauth-impdef=on"}
	type timing struct{ first, guest, total time.Duration }
	best := map[string]timing{}
	for range 2 {
		for _, cpu := range cpus {
			vm := vmlab.StartTest(t, ctx, vmlab.Config{Dir: vmDir(t), Kernel: k.Image, Initramfs: initrd, CPU: cpu,
				Cmdline: "console=ttyAMA0 quiet", Disk: &vmlab.Disk{Path: sparseDisk(t, 64<<20)}, ServoBuses: vmlab.LeKiwiBuses(),
				Timeout: 3 * time.Minute})
			l, err := vm.WaitFor(ctx, regexp.MustCompile(`^smokeinit: start uptime=([0-9.]+)s`))
			if err != nil {
				t.Fatal(err)
			}
			guest, _ := time.ParseDuration(strings.TrimSuffix(strings.TrimPrefix(l.Text, "smokeinit: start uptime="), "s") + "s")
			done, err := vm.WaitFor(ctx, regexp.MustCompile(`^smokeinit: done$`))
			if err != nil {
				t.Fatal(err)
			}
			if err := vm.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			noErrors(t, vm)
			if b, ok := best[cpu]; !ok || l.At < b.first {
				best[cpu] = timing{l.At, guest, done.At}
			}
		}
	}
	for _, cpu := range cpus {
		b := best[cpu]
		t.Logf("%-20s first userspace line %5.1fs after QEMU started (guest uptime %5.2fs), smokeinit done %5.1fs",
			cpu, b.first.Seconds(), b.guest.Seconds(), b.total.Seconds())
	}
}
