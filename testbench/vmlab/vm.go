package vmlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/internal/netns"
)

// Defaults of Config.
const (
	// DefaultCPU is the emulated core. Under TCG the Debian kernel reaches
	// userspace about as fast on cortex-a72 as on "max,pauth-impdef=on",
	// and three times slower on plain "max", whose architectural pointer
	// authentication (QARMA) TCG computes in software on every return.
	DefaultCPU      = "cortex-a72"
	DefaultSMP      = 2
	DefaultMemoryMB = 1024
	DefaultTimeout  = 3 * time.Minute
	DefaultQEMU     = "qemu-system-aarch64"
)

// Config describes one VM: an arm64 QEMU "virt" machine booted directly
// into Kernel with Initramfs and Cmdline (the lab plays the firmware, see
// testbench/vmlab/piboot), with the devices a robot's Pi has.
type Config struct {
	// Kernel is an arm64 Image; Initramfs and Cmdline are optional.
	Kernel, Initramfs, Cmdline string
	// CPU, SMP and MemoryMB size the machine; defaults DefaultCPU,
	// DefaultSMP and DefaultMemoryMB.
	CPU      string
	SMP      int
	MemoryMB int
	// DeviceTree, if set, is added to QEMU's generated device tree (a
	// Pi's model, serial, revision and bootloader properties); nil boots
	// with QEMU's own ("linux,dummy-virt").
	DeviceTree *DeviceTree
	// Disk is the install target, an NVMe drive; nil has none.
	Disk *Disk
	// NIC is the Ethernet port; nil has none.
	NIC *NIC
	// ServoBuses are USB serial adapters with simulated servos behind,
	// in order (the guest usually enumerates them as ttyUSB0, ttyUSB1…).
	ServoBuses []ServoBus
	// Timeout bounds the VM's life: QEMU is killed after it. Default
	// DefaultTimeout.
	Timeout time.Duration
	// Dir receives console.log (the serial console), qemu.log (QEMU's
	// own messages), the device tree and the servo sockets. Required.
	Dir string
	// QEMU is the emulator; default DefaultQEMU from PATH.
	QEMU string
}

// Disk is an NVMe drive backed by a raw image file.
type Disk struct {
	Path string
	// Serial is the drive's serial number; default "LEKIWI-LAB-0".
	Serial string
}

// VM is a running QEMU. Close it (StartTest does) to kill it and remove
// everything it was given.
type VM struct {
	// Console is the serial console (ttyAMA0).
	Console *Console
	// Dir is Config.Dir.
	Dir string

	args    []string
	cmd     *exec.Cmd
	started time.Time
	sims    []*servo.Sim
	links   []*servoLink
	nic     *NIC
	tap     string
	timer   *time.Timer

	exited   chan struct{}
	exitErr  error // QEMU's exit, set before exited closes
	timedOut atomic.Bool
	killed   atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// Available returns why a VM cannot be started here (no QEMU), or nil.
func Available() error {
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		return fmt.Errorf("vmlab: needs %s (apt-get install qemu-system-arm)", DefaultQEMU)
	}
	return nil
}

// Start builds the devices and starts QEMU. On error nothing is left
// running.
func Start(ctx context.Context, cfg Config) (_ *VM, err error) {
	if cfg.Kernel == "" || cfg.Dir == "" {
		return nil, errors.New("vmlab: Config.Kernel and Config.Dir are required")
	}
	if cfg.CPU == "" {
		cfg.CPU = DefaultCPU
	}
	if cfg.SMP <= 0 {
		cfg.SMP = DefaultSMP
	}
	if cfg.MemoryMB <= 0 {
		cfg.MemoryMB = DefaultMemoryMB
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return nil, fmt.Errorf("vmlab: %s not found (apt-get install qemu-system-arm): %w", cfg.QEMU, err)
	}
	v := &VM{Dir: cfg.Dir, nic: cfg.NIC, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			err = errors.Join(err, v.Close())
		}
	}()

	machine := []string{"-M", "virt", "-cpu", cfg.CPU, "-smp", strconv.Itoa(cfg.SMP), "-m", strconv.Itoa(cfg.MemoryMB)}
	args := append(machine,
		// The serial console on stdout, no monitor, and QEMU exits
		// instead of rebooting: a guest's reboot or power-off ends the run.
		"-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", cfg.Kernel)
	if cfg.Initramfs != "" {
		args = append(args, "-initrd", cfg.Initramfs)
	}
	if cfg.Cmdline != "" {
		args = append(args, "-append", cfg.Cmdline)
	}
	if cfg.DeviceTree != nil {
		dtb := filepath.Join(cfg.Dir, "pi.dtb")
		if err := buildDTB(ctx, cfg.QEMU, machine, *cfg.DeviceTree, cfg.Dir, dtb); err != nil {
			return nil, err
		}
		args = append(args, "-dtb", dtb)
	}
	if d := cfg.Disk; d != nil {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("vmlab: NVMe disk image: %w", err)
		}
		serial := d.Serial
		if serial == "" {
			serial = "LEKIWI-LAB-0"
		}
		args = append(args,
			"-drive", "if=none,format=raw,id=nvme0,file="+qemuOptValue(d.Path),
			"-device", "nvme,drive=nvme0,serial="+qemuOptValue(serial))
	}
	if cfg.NIC != nil {
		if len(cfg.NIC.MAC) != 6 || cfg.NIC.Bridge == "" {
			return nil, fmt.Errorf("vmlab: NIC needs an Ethernet MAC and a bridge (got %v, %q)", cfg.NIC.MAC, cfg.NIC.Bridge)
		}
		if v.tap, err = addTap(ctx, cfg.NIC); err != nil {
			return nil, err
		}
		args = append(args,
			"-netdev", "tap,id=net0,script=no,downscript=no,ifname="+v.tap,
			"-device", "virtio-net-pci,netdev=net0,mac="+cfg.NIC.MAC.String())
	} else {
		args = append(args, "-nic", "none")
	}
	var sockets []string
	if len(cfg.ServoBuses) > 0 {
		args = append(args, "-device", "qemu-xhci,id=xhci")
	}
	for i, b := range cfg.ServoBuses {
		sock := filepath.Join(cfg.Dir, fmt.Sprintf("bus%d.sock", i))
		if len(sock) >= 108 {
			return nil, fmt.Errorf("vmlab: servo socket path %s is longer than a unix socket address holds: use a shorter Config.Dir", sock)
		}
		serial := b.Serial
		if serial == "" {
			serial = fmt.Sprintf("LAB%05d", i)
		}
		id := fmt.Sprintf("bus%d", i)
		// always-plugged: the adapter is on the bus from power-on, as on
		// a robot, rather than from when the lab connects the socket.
		args = append(args,
			"-chardev", "socket,id="+id+",server=on,wait=off,path="+qemuOptValue(sock),
			"-device", "usb-serial,bus=xhci.0,always-plugged=on,chardev="+id+",serial="+qemuOptValue(serial))
		sockets = append(sockets, sock)
		v.sims = append(v.sims, &servo.Sim{IDs: append([]int(nil), b.IDs...)})
	}
	v.args = append([]string{cfg.QEMU}, args...)

	console, err := os.Create(filepath.Join(cfg.Dir, "console.log"))
	if err != nil {
		return nil, fmt.Errorf("vmlab: console log: %w", err)
	}
	qlog, err := os.Create(filepath.Join(cfg.Dir, "qemu.log"))
	if err != nil {
		console.Close()
		return nil, fmt.Errorf("vmlab: QEMU log: %w", err)
	}
	fmt.Fprintf(qlog, "%s\n", v.CommandLine())
	cmd := exec.Command(cfg.QEMU, args...)
	cmd.Stderr = qlog
	// Its own process group, so Close kills whatever QEMU started too;
	// and killed with the test binary's thread that started it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		console.Close()
		qlog.Close()
		return nil, err
	}
	nsPath := ""
	if cfg.NIC != nil {
		nsPath = cfg.NIC.Netns
	}
	// Started on a thread inside the NIC's namespace, QEMU lives there and
	// opens the tap there.
	if err := netns.Run(nsPath, cmd.Start); err != nil {
		console.Close()
		qlog.Close()
		return nil, fmt.Errorf("vmlab: starting %s: %w", cfg.QEMU, err)
	}
	v.cmd, v.started = cmd, time.Now()
	v.Console = newConsole(v.started)
	v.timer = time.AfterFunc(cfg.Timeout, func() {
		v.timedOut.Store(true)
		v.kill()
	})
	go func() {
		v.Console.consume(stdout, console)
		werr := cmd.Wait()
		console.Close()
		qlog.Close()
		v.timer.Stop()
		switch {
		case v.timedOut.Load():
			werr = fmt.Errorf("vmlab: QEMU killed after the VM's timeout of %v", cfg.Timeout)
		case v.killed.Load():
			werr = errors.New("vmlab: QEMU killed by Close")
		case werr != nil:
			werr = fmt.Errorf("vmlab: QEMU: %w; its log %s ends:\n%s", werr, filepath.Join(cfg.Dir, "qemu.log"), fileTail(filepath.Join(cfg.Dir, "qemu.log"), 10))
		}
		v.exitErr = werr
		why := "QEMU exited"
		if werr != nil {
			why = werr.Error()
		}
		v.Console.close(why)
		close(v.exited)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for i, sock := range sockets {
		l, err := dialServo(sock, v.sims[i], deadline, v.exited)
		if err != nil {
			select {
			case <-v.exited: // QEMU's own reason is the better error
				if v.exitErr != nil {
					return nil, v.exitErr
				}
			default: // the deferred Close kills it
			}
			return nil, err
		}
		v.links = append(v.links, l)
	}
	return v, nil
}

// qemuOptValue escapes a value inside a QEMU option list, where a comma
// is written twice.
func qemuOptValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// CommandLine is the QEMU command, quoted for a shell, to rerun by hand.
func (v *VM) CommandLine() string {
	q := make([]string, len(v.args))
	for i, a := range v.args {
		if strings.ContainsAny(a, " \t\"'$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// WaitFor is Console.WaitFor.
func (v *VM) WaitFor(ctx context.Context, re *regexp.Regexp) (Line, error) {
	return v.Console.WaitFor(ctx, re)
}

// Servo returns the simulator behind bus i (Config.ServoBuses order).
func (v *VM) Servo(i int) *servo.Sim { return v.sims[i] }

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Wait waits for QEMU to exit (the guest powered off or rebooted) and
// returns nil if it exited cleanly, or why not.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	case <-ctx.Done():
		return fmt.Errorf("vmlab: QEMU still running (%w); console ends:\n%s", ctx.Err(), v.Console.tailText(TailLines))
	}
}

// Uptime is how long QEMU has run.
func (v *VM) Uptime() time.Duration { return time.Since(v.started) }

func (v *VM) kill() {
	if v.cmd != nil && v.cmd.Process != nil {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Close kills QEMU's process group if it still runs, stops the servo
// links, and deletes the tap and the sockets. The logs stay in Dir.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		var errs []error
		if v.cmd != nil && v.cmd.Process != nil {
			select {
			case <-v.exited:
			default:
				v.killed.Store(true)
				v.kill()
				select {
				case <-v.exited:
				case <-time.After(30 * time.Second):
					errs = append(errs, fmt.Errorf("vmlab: QEMU (pid %d) did not exit 30 s after SIGKILL", v.cmd.Process.Pid))
				}
			}
		}
		for _, l := range v.links {
			l.close()
		}
		if v.tap != "" {
			errs = append(errs, delTap(v.nic, v.tap))
		}
		socks, _ := filepath.Glob(filepath.Join(v.Dir, "bus*.sock"))
		for _, s := range socks {
			if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		v.closeErr = errors.Join(errs...)
	})
	return v.closeErr
}

// StartTest starts a VM for a test: the VM is closed when the test ends,
// and a failed test logs the console's last lines and the command line.
// Dir defaults to a fresh t.TempDir, whose logs a failed test keeps: they
// are copied to a directory under os.TempDir that the failure names.
func StartTest(t testing.TB, ctx context.Context, cfg Config) *VM {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
	temporary := cfg.Dir == ""
	if temporary {
		cfg.Dir = t.TempDir()
	}
	v, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
		if !t.Failed() {
			return
		}
		logs := v.Dir
		if temporary {
			logs = keepLogs(t, v.Dir)
		}
		t.Logf("VM %s\nlogs in %s; console ends:\n%s", v.CommandLine(), logs, v.Console.tailText(TailLines))
	})
	return v
}

// keepLogs copies a VM's logs out of a directory the test will remove.
func keepLogs(t testing.TB, dir string) string {
	keep, err := os.MkdirTemp("", "vmlab-"+strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-")
	if err != nil {
		return dir + " (removed: " + err.Error() + ")"
	}
	for _, name := range []string{"console.log", "qemu.log", "pi.dts"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			_ = os.WriteFile(filepath.Join(keep, name), b, 0o644)
		}
	}
	return keep
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return "  " + strings.Join(lines[max(0, len(lines)-n):], "\n  ")
}
