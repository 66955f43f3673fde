package piboot_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/raspberrypi"
	"github.com/lekiwi/heartbeat/testbench/vmlab/piboot"
)

const (
	pi5 raspberrypi.Revision = 0xd04170 // Pi 5 8GB
	pi4 raspberrypi.Revision = 0xc03111 // Pi 4B 4GB
	cm4 raspberrypi.Revision = 0xb03140 // CM4 2GB
)

func TestParseConfig(t *testing.T) {
	const text = `# a Pi OS-like config.txt
dtparam=audio=on
camera_auto_detect=1
auto_initramfs=1
arm_64bit=1
[cm4]
otg_mode=1
kernel=cm4.img
[pi4]
kernel=kernel8.img
[pi5]
kernel=kernel_2712.img
[tryboot]
cmdline=cmdline-try.txt
[all]
initramfs initrd-a.img,initrd-b.img followkernel
[pi4]
[tryboot]
# both must hold
kernel=pi4-try.img
[all]
`
	for _, tc := range []struct {
		name string
		b    piboot.Board
		want piboot.Config
	}{
		{"pi5", piboot.Board{Revision: pi5}, piboot.Config{Kernel: "kernel_2712.img", AutoInitramfs: true, Initramfs: []string{"initrd-a.img", "initrd-b.img"}}},
		{"pi5 tryboot", piboot.Board{Revision: pi5, Tryboot: true}, piboot.Config{Kernel: "kernel_2712.img", AutoInitramfs: true, Initramfs: []string{"initrd-a.img", "initrd-b.img"}, Cmdline: "cmdline-try.txt"}},
		{"pi4", piboot.Board{Revision: pi4}, piboot.Config{Kernel: "kernel8.img", AutoInitramfs: true, Initramfs: []string{"initrd-a.img", "initrd-b.img"}}},
		// [tryboot] after [pi5] combines with it (filters of different
		// types are ANDed until [all]): a Pi 4 on a tryboot does not get
		// cmdline-try.txt, but does get the [pi4][tryboot] kernel.
		{"pi4 tryboot: filters combine", piboot.Board{Revision: pi4, Tryboot: true}, piboot.Config{Kernel: "pi4-try.img", AutoInitramfs: true, Initramfs: []string{"initrd-a.img", "initrd-b.img"}}},
		// A CM4 sees [cm4] and [pi4]; [pi4] comes later and wins.
		{"cm4", piboot.Board{Revision: cm4}, piboot.Config{Kernel: "kernel8.img", AutoInitramfs: true, Initramfs: []string{"initrd-a.img", "initrd-b.img"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := piboot.ParseConfig(text, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			got.Ignored = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	c, _ := piboot.ParseConfig(text, piboot.Board{Revision: cm4})
	if want := []string{"dtparam=audio=on", "camera_auto_detect=1", "otg_mode=1"}; !reflect.DeepEqual(c.Ignored, want) {
		t.Errorf("ignored %v, want %v", c.Ignored, want)
	}

	// What the lab does not model is refused, naming the line.
	for _, bad := range []struct{ text, want string }{
		{"[EDID=DEL-DELL_U2422H]\nkernel=x\n", "[edid=del-dell_u2422h]"},
		{"[gpio4=1]\n", "gpio4=1"},
		{"os_prefix=next/\n", "os_prefix"},
		{"include extra.txt\n", "neither a filter"},
		{"initramfs initrd.img 0x2000000\n", "load address"},
		{"arm_64bit=0\n", "64-bit"},
		{"frobnicate=1\n", `"frobnicate" is unknown`},
		{"[pi5\nkernel=x\n", "unterminated"},
	} {
		if _, err := piboot.ParseConfig(bad.text, piboot.Board{Revision: pi5}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseConfig(%q) = %v, want an error mentioning %q", bad.text, err, bad.want)
		}
	}
	// Settings in a section for another board are skipped, as the
	// firmware skips them, whatever they are.
	if _, err := piboot.ParseConfig("[pi4]\nos_prefix=x/\n[all]\n", piboot.Board{Revision: pi5}); err != nil {
		t.Errorf("an os_prefix for the Pi 4 stopped a Pi 5: %v", err)
	}
	if c, err := piboot.ParseConfig("[0x0badcafe]\nkernel=mine.img\n[all]\n", piboot.Board{Revision: pi5, Serial: 0x0badcafe}); err != nil || c.Kernel != "mine.img" {
		t.Errorf("serial filter: %+v, %v", c, err)
	}
}

func TestParseAutoboot(t *testing.T) {
	ab, err := layout.Autoboot("a")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tryboot bool
		want    piboot.Autoboot
	}{{false, piboot.Autoboot{Partition: 2, TrybootAB: true}}, {true, piboot.Autoboot{Partition: 3, TrybootAB: true}}} {
		if got, err := piboot.ParseAutoboot(string(ab), tc.tryboot); err != nil || got != tc.want {
			t.Errorf("tryboot=%v: %+v, %v; want %+v", tc.tryboot, got, err, tc.want)
		}
	}
	for _, bad := range []string{"[pi5]\nboot_partition=2\n", "boot_partition=0\n", "[all]\nkernel=x\n", "", "boot_partition=two\n"} {
		if _, err := piboot.ParseAutoboot(bad, false); err == nil {
			t.Errorf("ParseAutoboot(%q) accepted", bad)
		}
	}
}

// TestFromDisk boots a real A/B image (image/assemble through imagetest)
// the way the firmware would, reading it with sfdisk and mtools: slot A
// normally, slot B on a tryboot, the model's kernel from config.txt's
// filters, and the slot's own command line.
func TestFromDisk(t *testing.T) {
	for _, tool := range []string{"sfdisk", "mdir", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install fdisk mtools)", tool)
		}
	}
	dir := t.TempDir()
	kernel4, kernel5 := bytes.Repeat([]byte("pi4 kernel "), 5000), bytes.Repeat([]byte("pi5 kernel "), 7000)
	initrd := bytes.Repeat([]byte("070701 initramfs "), 3000)
	img := imagetest.Build(t, dir, imagetest.Options{Boot: map[string][]byte{
		"config.txt":  []byte("[all]\narm_64bit=1\ndtparam=watchdog=on\n[pi4]\nkernel=vmlinuz-pi4\n[pi5]\nkernel=vmlinuz-pi5\n[all]\ninitramfs initrd.img followkernel\n"),
		"cmdline.txt": []byte("console=serial0,115200 console=tty1 rootwait\n"),
		"vmlinuz-pi4": kernel4, "vmlinuz-pi5": kernel5, "initrd.img": initrd,
	}})
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		board     piboot.Board
		partition int
		kernel    []byte
		kname     string
		root      int
	}{
		{"pi5", piboot.Board{Revision: pi5}, layout.BootA, kernel5, "vmlinuz-pi5", layout.SystemA},
		{"pi5 tryboot", piboot.Board{Revision: pi5, Tryboot: true}, layout.BootB, kernel5, "vmlinuz-pi5", layout.SystemB},
		{"pi4", piboot.Board{Revision: pi4}, layout.BootA, kernel4, "vmlinuz-pi4", layout.SystemA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := piboot.FromDisk(ctx, img.Path, piboot.DiskOptions{Board: tc.board, Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if b.Partition != tc.partition || b.KernelName != tc.kname || b.ConfigFile != "config.txt" ||
				!reflect.DeepEqual(b.InitramfsNames, []string{"initrd.img"}) {
				t.Errorf("chose partition %d, %s, kernel %s, initramfs %v; want partition %d, config.txt, %s, [initrd.img]",
					b.Partition, b.ConfigFile, b.KernelName, b.InitramfsNames, tc.partition, tc.kname)
			}
			if got, _ := os.ReadFile(b.Kernel); !bytes.Equal(got, tc.kernel) {
				t.Errorf("kernel bytes differ from %s's (%d bytes, want %d)", tc.kname, len(got), len(tc.kernel))
			}
			if got, _ := os.ReadFile(b.Initramfs); !bytes.Equal(got, initrd) {
				t.Errorf("initramfs bytes differ (%d bytes, want %d)", len(got), len(initrd))
			}
			root := "root=PARTUUID=" + img.Plan.Part(tc.root).GUID.String()
			if !strings.HasPrefix(b.Cmdline, "console=ttyAMA0,115200 console=tty1 rootwait ") || !strings.Contains(b.Cmdline, root) {
				t.Errorf("cmdline %q: want serial0 rewritten to ttyAMA0 and %s", b.Cmdline, root)
			}
			bl := b.Bootloader()
			if bl["partition"] != uint32(tc.partition) || (bl["tryboot"] == 1) != tc.board.Tryboot || bl["boot-mode"] != piboot.BootModeNVMe {
				t.Errorf("/chosen/bootloader %v", bl)
			}
		})
	}

	// Without tryboot_a_b, a tryboot reads tryboot.txt instead of
	// config.txt. Rewrite autoboot.txt and add a tryboot.txt to slot B
	// with mtools.
	put := func(part int, name, content string) {
		t.Helper()
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		target := img.Path + "@@" + strconv.FormatInt(img.Plan.Part(part).Start, 10)
		cmd := exec.Command("mcopy", "-o", "-i", target, src, "::/"+name)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mcopy %s: %v: %s", name, err, out)
		}
	}
	put(layout.BootConfig, "autoboot.txt", "[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n")
	put(layout.BootB, "tryboot.txt", "kernel=vmlinuz-pi4\n")
	b, err := piboot.FromDisk(ctx, img.Path, piboot.DiskOptions{Board: piboot.Board{Revision: pi5, Tryboot: true}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if b.Partition != layout.BootB || b.ConfigFile != "tryboot.txt" || b.KernelName != "vmlinuz-pi4" || b.Initramfs != "" {
		t.Errorf("tryboot without tryboot_a_b: partition %d, %s, kernel %s, initramfs %q; want 3, tryboot.txt, vmlinuz-pi4, none",
			b.Partition, b.ConfigFile, b.KernelName, b.Initramfs)
	}
	if b, err := piboot.FromDisk(ctx, img.Path, piboot.DiskOptions{Board: piboot.Board{Revision: pi5}, Dir: t.TempDir()}); err != nil || b.Partition != layout.BootA || b.ConfigFile != "config.txt" {
		t.Errorf("normal boot after the rewrite: %+v, %v", b, err)
	}
}

// TestFirmwareTryboot: the flag follows the kernel's restart line, lasts
// one boot, and a power cut or a restart without the argument clears it.
func TestFirmwareTryboot(t *testing.T) {
	for _, tool := range []string{"sfdisk", "mdir", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install fdisk mtools)", tool)
		}
	}
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{Boot: map[string][]byte{
		"config.txt":  []byte("kernel=vmlinuz\n"),
		"cmdline.txt": []byte("console=serial0,115200 rootwait\n"),
		"vmlinuz":     []byte("kernel"),
	}})
	ctx := context.Background()
	fw := &piboot.Firmware{Disk: img.Path, Board: piboot.Board{Revision: pi5, Tryboot: true}}
	boot := func(want int, trial bool) {
		t.Helper()
		b, err := fw.PowerOn(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if b.Partition != want || b.Tryboot != trial {
			t.Fatalf("booted partition %d (tryboot %v), want %d (tryboot %v)", b.Partition, b.Tryboot, want, trial)
		}
	}
	trybootConsole := []string{"[   41.2] systemd-shutdown[1]: Rebooting with argument '0 tryboot'.", "[   41.3] reboot: Restarting system with command '0 tryboot'"}
	boot(layout.BootA, false) // Board.Tryboot is not the firmware's flag
	for _, tc := range []struct {
		name      string
		console   []string
		restarted bool
		next      int
		trial     bool
	}{
		{"restart with tryboot", trybootConsole, true, layout.BootB, true},
		{"plain restart", []string{"reboot: Restarting system"}, true, layout.BootA, false},
		{"restart with another argument", []string{"reboot: Restarting system with command 'recovery'"}, true, layout.BootA, false},
		{"the last restart counts", append(append([]string(nil), trybootConsole...), "reboot: Restarting system"), true, layout.BootA, false},
		{"power off", []string{"reboot: Power down"}, false, layout.BootA, false},
	} {
		if got := fw.Restarted(tc.console); got != tc.restarted || fw.Tryboot() != tc.trial {
			t.Errorf("%s: Restarted = %v, flag %v; want %v, %v", tc.name, got, fw.Tryboot(), tc.restarted, tc.trial)
		}
		boot(tc.next, tc.trial)
		// One boot only: the next one is the default again.
		boot(layout.BootA, false)
	}
	fw.Restarted(trybootConsole)
	fw.PowerCut()
	boot(layout.BootA, false)
}
