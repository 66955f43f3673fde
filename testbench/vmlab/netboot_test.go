package vmlab_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/netboot/station"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
	"github.com/lekiwi/heartbeat/testbench/pisim"
	"github.com/lekiwi/heartbeat/testbench/pisim/netlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab"
	"github.com/lekiwi/heartbeat/testbench/vmlab/piboot"
)

// noControl is a control that is never asked anything in this test: the
// board only boots, it never reports.
type noControl struct{}

func (noControl) SendEvents(context.Context, protocol.FactoryEvents) error { return nil }
func (noControl) RequestRobot(context.Context, string, string) (protocol.FactoryRobot, error) {
	return protocol.FactoryRobot{}, io.ErrUnexpectedEOF
}
func (noControl) RobotOnline(context.Context, string) (bool, error) { return false, nil }

// TestNetbootSmoke boots a VM the way a bare Pi 5 boots on the factory
// floor: the lab's bootloader (pisim, with the VM's MAC and serial) gets an
// address from the factory's DHCP server (busybox udhcpd) and the boot menu
// from the netboot station in proxy mode, fetches config.txt, cmdline.txt,
// the kernel and the initramfs from the station over TFTP, and QEMU boots
// those bytes on the same LAN. Inside, smokeinit prints /proc/cmdline: the
// station's URL and the board's one-time token arrived.
func TestNetbootSmoke(t *testing.T) {
	if !netlab.Inside() {
		if err := vmlab.Available(); err != nil {
			t.Skip(err)
		}
		if err := netlab.Available(); err != nil {
			t.Skip(err)
		}
		// The station's servers open sockets from goroutines of their
		// own, so the whole test process moves into a fresh namespace.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		args := []string{"-test.run=^" + t.Name() + "$", "-test.v", "-test.count=1"}
		if *long {
			args = append(args, "-vmlab.long")
		}
		if *logDir != "" {
			args = append(args, "-vmlab.logdir="+*logDir)
		}
		out, err := netlab.Reexec(ctx, args...)
		t.Logf("in a private network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("%s in a private network namespace: %v", t.Name(), err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	k := kernelFixture(t, ctx)
	initrd := smokeInitramfs(t, ctx, k)

	lab, err := netlab.New(ctx, 79)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	stopFactory, err := lab.StartFactoryDHCP(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopFactory() })

	// The boot directory: Debian's names, which the station's config.txt
	// boots by default, and the Pi 5 device tree the bootloader fetches
	// (the VM does not use it: it boots QEMU's).
	boot := t.TempDir()
	copyFile(t, k.Image, filepath.Join(boot, "vmlinuz"))
	copyFile(t, initrd, filepath.Join(boot, "initrd.img"))
	if err := os.WriteFile(filepath.Join(boot, "bcm2712-rpi-5-b.dtb"), []byte("the Pi's device tree, unused by the VM"), 0o644); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(t.TempDir(), "robot.img")
	if err := os.WriteFile(image, []byte("not booted in this test"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := station.New(station.Config{
		StateDir: t.TempDir(), BootDir: boot, Image: image, Control: noControl{},
		HTTPAddr: lab.StationIP.String() + ":0", TFTPAddr: lab.StationIP.String() + ":69",
		DHCP:   &dhcp.Config{Interface: lab.StationIf, ServerIP: lab.StationIP, Mode: dhcp.ModeProxy},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- st.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil && ctx.Err() == nil {
			t.Errorf("station: %v", err)
		}
	})

	mac := net.HardwareAddr{0xd8, 0x3a, 0xdd, 0x0e, 0x7b, 0x01}
	const serial, revision = raspberrypi.Serial(0x5e7b0001), raspberrypi.Revision(0xd04170)
	b, res, err := piboot.FromNetwork(ctx, piboot.NetworkOptions{
		Pi:  pisim.Pi{Model: 5, MAC: mac, Serial: serial, Revision: revision},
		Sim: pisim.Config{Interface: lab.PisIf, Netns: lab.Path(lab.Pis), DiscoverRetry: time.Second, DHCPTimeout: 20 * time.Second},
		Dir: t.TempDir(),
	})
	if err != nil {
		t.Fatalf("network boot: %v\nso far: %+v", err, res.Files)
	}
	if b.KernelName != "vmlinuz" || len(b.InitramfsNames) != 1 || b.InitramfsNames[0] != "initrd.img" {
		t.Errorf("booted kernel %q, initramfs %v; want the station's vmlinuz and initrd.img", b.KernelName, b.InitramfsNames)
	}
	if res.DHCP.AddressServer != lab.FactoryIP || res.DHCP.TFTPServer != lab.StationIP {
		t.Errorf("address from %v, TFTP from %v; want the factory's DHCP server %v and the station %v", res.DHCP.AddressServer, res.DHCP.TFTPServer, lab.FactoryIP, lab.StationIP)
	}
	if got, want := fileSize(t, b.Kernel), fileSize(t, k.Image); got != want {
		t.Errorf("the kernel fetched is %d bytes, the station's %d", got, want)
	}
	t.Logf("network boot: DHCP ACK after %v, TFTP %v for %d files (kernel %d MiB)", res.DHCP.AckLatency.Round(time.Millisecond),
		res.TFTP.Round(time.Millisecond), len(res.Fetched()), fileSize(t, b.Kernel)>>20)

	vm := vmlab.StartTest(t, ctx, vmlab.Config{Dir: vmDir(t),
		Kernel: b.Kernel, Initramfs: b.Initramfs, Cmdline: b.Cmdline,
		DeviceTree: &vmlab.DeviceTree{Model: "Raspberry Pi 5 Model B Rev 1.0", Serial: "10000000" + serial.String(),
			Revision: uint32(revision), Bootloader: b.Bootloader()},
		Disk:       &vmlab.Disk{Path: sparseDisk(t, 64<<20)},
		NIC:        &vmlab.NIC{MAC: mac, Bridge: lab.StationIf}, // on the station's LAN
		ServoBuses: vmlab.LeKiwiBuses(),
		Timeout:    3 * time.Minute,
	})
	m := expect(t, ctx, vm, `^smokeinit: cmdline (.*)$`)
	cmdline := m[0][1]
	wantURL := protocol.KernelArgStation + "=" + st.StationURL()
	token := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(protocol.KernelArgToken) + `=(\S+)`).FindStringSubmatch(cmdline)
	if !strings.Contains(" "+cmdline+" ", " "+wantURL+" ") || token == nil || len(token[1]) < 16 {
		t.Errorf("/proc/cmdline %q: want %s and a %s", cmdline, wantURL, protocol.KernelArgToken)
	}
	// serial0 became the VM's UART, as the firmware rewrites it.
	if !strings.HasPrefix(cmdline, "console=ttyAMA0,115200 ") {
		t.Errorf("/proc/cmdline %q does not start with the serial console on ttyAMA0", cmdline)
	}
	expect(t, ctx, vm,
		`^smokeinit: dt model="Raspberry Pi 5 Model B Rev 1\.0" serial="10000000`+serial.String()+`"$`,
		`^smokeinit: net eth0 mac=d8:3a:dd:0e:7b:01$`,
		`^smokeinit: servos ttyUSB0 answered=1,2,3,4,5,6,7,8,9 `,
		`^smokeinit: done$`)
	if err := vm.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	noErrors(t, vm)
	if !lab.Prefix.Contains(res.DHCP.Address) {
		t.Errorf("leased address %v is not on the lab's LAN %v", res.DHCP.Address, lab.Prefix)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
