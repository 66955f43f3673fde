// Command smokeinit is the /init of the VM lab's smoke tests: a static
// arm64 program that checks, from inside a real kernel, the devices the lab
// gives a VM, and prints one "smokeinit: ..." line per finding for the test
// to read off the serial console, then powers the VM off.
//
// It mounts /proc, /sys and devtmpfs; prints /proc/cmdline and the device
// tree's model and serial; loads the modules the initramfs lists in
// lib/modules/load-order with finit_module; prints each network interface's
// MAC, the NVMe disk's size, each USB serial port's driver and USB ids; and
// pings servo IDs 1-10 on each port with the agent's servo package at
// 1 Mbaud. Kernel arguments: smokeinit.buses=N (USB serial ports to wait
// for, default 1), smokeinit.ping_timeout=DURATION (default 500ms: under
// TCG the emulated FTDI's round trip is far above a real one's).
//
// Its lines go to every console the kernel lists as active, not to
// /dev/console alone: with "console=ttyAMA0 console=tty1" (the station's
// command line) /dev/console is tty1, a screen the VM does not have.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/agent/servo"
)

func main() {
	out := io.Writer(os.Stdout)
	say := func(format string, args ...any) { fmt.Fprintf(out, "smokeinit: "+format+"\n", args...) }
	defer func() {
		if r := recover(); r != nil {
			say("error: panic: %v", r)
		}
		say("done")
		unix.Sync()
		// PID 1 must not return: the kernel would panic.
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		select {}
	}()
	if err := mountAll(); err != nil {
		say("error: %v", err)
		return
	}
	// Kernel messages below errors stay off the console: printed in the
	// middle of one of ours, a message would split it.
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("3"), 0)
	out = activeConsoles()
	say("start uptime=%s", uptime())

	cmdline, _ := os.ReadFile("/proc/cmdline")
	say("cmdline %s", strings.TrimSpace(string(cmdline)))
	args := kernelArgs(string(cmdline))
	say("dt model=%q serial=%q", dtString("/proc/device-tree/model"), dtString("/proc/device-tree/serial-number"))

	loaded, err := loadModules("/lib/modules/load-order")
	if err != nil {
		say("error: %v", err)
	}
	say("modules %s", strings.Join(loaded, ","))

	nets, _ := filepath.Glob("/sys/class/net/*")
	for _, n := range nets {
		if filepath.Base(n) == "lo" {
			continue
		}
		mac, _ := os.ReadFile(filepath.Join(n, "address"))
		say("net %s mac=%s", filepath.Base(n), strings.TrimSpace(string(mac)))
	}

	if err := waitFor("/sys/block/nvme0n1/size", 30*time.Second); err != nil {
		say("error: no NVMe disk: %v", err)
	} else {
		sectors, _ := os.ReadFile("/sys/block/nvme0n1/size")
		n, _ := strconv.ParseInt(strings.TrimSpace(string(sectors)), 10, 64)
		serial, _ := os.ReadFile("/sys/class/nvme/nvme0/serial")
		say("nvme nvme0n1 bytes=%d serial=%s", n*512, strings.TrimSpace(string(serial)))
	}

	buses := 1
	if s, ok := args["smokeinit.buses"]; ok {
		buses, _ = strconv.Atoi(s)
	}
	timeout := 500 * time.Millisecond
	if s, ok := args["smokeinit.ping_timeout"]; ok {
		if d, err := time.ParseDuration(s); err == nil {
			timeout = d
		}
	}
	ports, err := waitPorts(buses, 30*time.Second)
	if err != nil {
		say("error: %v", err)
	}
	for _, p := range ports {
		say("usb-serial %s", describePort(p))
	}
	for _, p := range ports {
		answered, slowest, err := ping(p, timeout)
		if err != nil {
			say("error: %s: %v", p, err)
		}
		say("servos %s answered=%s slowest=%s", p, joinInts(answered), slowest.Round(time.Millisecond))
	}
}

func mountAll() error {
	for _, m := range []struct{ fstype, dir string }{{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.dir, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dir, err)
		}
	}
	return nil
}

// activeConsoles opens every console the kernel writes to.
func activeConsoles() io.Writer {
	b, err := os.ReadFile("/sys/class/tty/console/active")
	if err != nil {
		return os.Stdout
	}
	var ws []io.Writer
	for _, name := range strings.Fields(string(b)) {
		if f, err := os.OpenFile("/dev/"+name, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			ws = append(ws, f)
		}
	}
	if len(ws) == 0 {
		return os.Stdout
	}
	return io.MultiWriter(ws...)
}

func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}

func kernelArgs(cmdline string) map[string]string {
	out := map[string]string{}
	for _, a := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(a, "=")
		out[k] = v
	}
	return out
}

func dtString(path string) string {
	b, _ := os.ReadFile(path)
	s, _, _ := strings.Cut(string(b), "\x00")
	return s
}

func loadModules(orderFile string) ([]string, error) {
	b, err := os.ReadFile(orderFile)
	if err != nil {
		return nil, fmt.Errorf("module list: %w", err)
	}
	var loaded []string
	for _, name := range strings.Fields(string(b)) {
		f, err := os.Open(filepath.Join(filepath.Dir(orderFile), name+".ko"))
		if err != nil {
			return loaded, err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return loaded, fmt.Errorf("finit_module %s: %w", name, err)
		}
		loaded = append(loaded, name)
	}
	return loaded, nil
}

func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		_, err := os.Stat(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPorts waits until n USB serial ports exist, and for their /dev
// nodes.
func waitPorts(n int, limit time.Duration) ([]string, error) {
	deadline := time.Now().Add(limit)
	for {
		ports, _ := filepath.Glob("/sys/bus/usb-serial/devices/ttyUSB*")
		var names []string
		for _, p := range ports {
			if _, err := os.Stat("/dev/" + filepath.Base(p)); err == nil {
				names = append(names, filepath.Base(p))
			}
		}
		slices.Sort(names)
		if len(names) >= n {
			return names, nil
		}
		if time.Now().After(deadline) {
			return names, fmt.Errorf("%d of %d USB serial ports after %v", len(names), n, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// describePort names the port's driver and its USB device's ids: the port
// sits under the interface (1-1:1.0), under the device (1-1).
func describePort(port string) string {
	dev := "/sys/bus/usb-serial/devices/" + port
	driver, _ := os.Readlink(dev + "/driver")
	real, _ := filepath.EvalSymlinks(dev)
	usb := filepath.Dir(filepath.Dir(real))
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(usb, name))
		return strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s driver=%s id=%s:%s serial=%s", port, filepath.Base(driver), read("idVendor"), read("idProduct"), read("serial"))
}

func ping(port string, timeout time.Duration) ([]int, time.Duration, error) {
	bus, err := servo.Open("/dev/"+port, timeout)
	if err != nil {
		return nil, 0, err
	}
	defer bus.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var answered []int
	var slowest time.Duration
	for id := 1; id <= 10; id++ {
		t := time.Now()
		ok, err := bus.Ping(ctx, id)
		if err != nil {
			return answered, slowest, err
		}
		if ok {
			answered = append(answered, id)
			slowest = max(slowest, time.Since(t))
		}
	}
	return answered, slowest, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
