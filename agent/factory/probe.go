// Package factory is the robot side of the factory flow: `agent factory`
// runs in the netboot provisioning environment, probes the board and its
// attached hardware, and reports to the station, which picks the robot's
// profile (see profiles.Match).
//
// The probe reads only procfs and sysfs (roots injectable, so the tests run
// on fixture trees copied from real boards) and talks to the serial ports
// through servo.Pinger, so that a simulated servo bus can stand in for the
// motors.
package factory

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
)

// DefaultServoAdapters are the USB IDs (vendor:product, as sysfs
// idVendor and idProduct read) of the USB-serial chips bus-servo driver
// boards are built on:
//
//	1a86:55d3  WCH CH343: Feetech's FE-URT-1 and Waveshare's bus servo
//	           driver boards (LeKiwi, XLE)
//	1a86:7523  WCH CH340/CH341: older and cheaper boards, SO-100 leader arms
//	0403:6001  FTDI FT232R (and QEMU's emulated usb-serial, an FT232)
//	0403:6010  FTDI FT2232
//	0403:6014  FTDI FT232H (Robotis U2D2)
//	0403:6015  FTDI FT230X/FT231X
//	10c4:ea60  Silicon Labs CP210x
//
// A list, not every tty: a ping is bytes written at 1 Mbaud, and a GPS
// receiver, an LTE modem in AT mode or a microcontroller on ttyACM must
// not get them by surprise. Ports on other adapters are listed in the
// report, with a warning, but not pinged; a robot whose bus is on another
// chip names it in its profile (hardware.servo_adapters).
func DefaultServoAdapters() []string {
	return []string{"1a86:55d3", "1a86:7523", "0403:6001", "0403:6010", "0403:6014", "0403:6015", "10c4:ea60"}
}

// ServoAdapters are the adapters the probe pings by default:
// DefaultServoAdapters and those of every profile in ps. The probe runs
// before the board's profile is known, so every profile's count.
func ServoAdapters(ps []*profiles.Profile) []string {
	ids := DefaultServoAdapters()
	for _, p := range ps {
		for _, id := range p.Hardware.ServoAdapters {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// DefaultServoIDs are pinged on every bus: LeKiwi and XLE use 1-9.
var DefaultServoIDs = []int{1, 2, 3, 4, 5, 6, 7, 8, 9}

// Options say where to look and how to reach servo buses. Zero values
// mean the real system.
type Options struct {
	ProcRoot string // default /proc
	SysRoot  string // default /sys
	DevRoot  string // default /dev; serial ports are reported under it
	// OpenBus opens a serial port as a servo bus. Default: servo.Open at
	// 1 Mbaud with PingTimeout.
	OpenBus func(device string) (servo.Pinger, error)
	// ServoAdapters are the USB IDs ("vendor:product") whose serial ports
	// are pinged as servo buses; nil: ServoAdapters of the embedded
	// profiles.
	ServoAdapters []string
	// ServoIDs are pinged on each servo adapter's port; default
	// DefaultServoIDs.
	ServoIDs []int
	// PingTimeout bounds each ping; default servo.DefaultPingTimeout.
	PingTimeout time.Duration
}

func (o *Options) defaults() {
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.SysRoot == "" {
		o.SysRoot = "/sys"
	}
	if o.DevRoot == "" {
		o.DevRoot = "/dev"
	}
	if o.ServoIDs == nil {
		o.ServoIDs = DefaultServoIDs
	}
	if o.OpenBus == nil {
		timeout := o.PingTimeout
		o.OpenBus = func(dev string) (servo.Pinger, error) { return servo.Open(dev, timeout) }
	}
}

// Probe inspects the board. Parts that cannot be read are explained in the
// report's Warnings rather than failing the whole probe; only a cancelled
// context is an error.
func Probe(ctx context.Context, o Options) (*protocol.HardwareReport, error) {
	o.defaults()
	r := &protocol.HardwareReport{}
	warn := func(err error) { r.Warnings = append(r.Warnings, err.Error()) }

	board, err := readBoard(o.ProcRoot, o.SysRoot)
	if err != nil {
		warn(err)
	}
	r.Board = board
	if r.MemoryBytes, err = readMemTotal(o.ProcRoot); err != nil {
		warn(err)
	}
	if r.Storage, err = readStorage(o.SysRoot); err != nil {
		warn(err)
	}
	adapters := o.ServoAdapters
	if adapters == nil {
		ps, err := profiles.LoadAll()
		if err != nil {
			warn(fmt.Errorf("servo adapters named by the profiles: %w (pinging the default adapters only)", err))
		}
		adapters = ServoAdapters(ps)
	}
	if r.USB, err = readUSB(o.SysRoot, adapters); err != nil {
		warn(err)
	}
	if r.Video, err = readVideo(o.SysRoot); err != nil {
		warn(err)
	}
	markCameras(r.USB, r.Video)
	if r.SerialPorts, err = readSerialPorts(o.SysRoot, o.DevRoot); err != nil {
		warn(err)
	}
	var buses []protocol.SerialPort
	for _, p := range r.SerialPorts {
		id := p.Vendor + ":" + p.Product
		switch {
		case slices.Contains(adapters, id):
			buses = append(buses, p)
		case p.Vendor == "":
			warn(fmt.Errorf("serial port %s not pinged: its USB device was not found in sysfs", p.Device))
		default:
			warn(fmt.Errorf("serial port %s (USB %s) not pinged: not a known servo adapter; if a servo bus is on it, add %q to the profile's hardware.servo_adapters", p.Device, id, id))
		}
	}
	r.ServoBuses = pingBuses(ctx, o, buses)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("hardware probe: %w", err)
	}
	return r, nil
}

// readBoard identifies the board as the agent does (collect.ReadHardware:
// device tree, cpuinfo) and decodes its revision code in full; an unknown
// code is a warning naming the field the decoder did not know.
func readBoard(procRoot, sysRoot string) (protocol.BoardInfo, error) {
	hw, err := collect.ReadHardware(collect.Roots{Proc: procRoot, Sys: sysRoot})
	b := protocol.BoardInfo{Serial: hw.Serial, Revision: hw.Revision, Model: hw.Model}
	if err != nil {
		return b, fmt.Errorf("board identity from %s and %s: %w", procRoot, sysRoot, err)
	}
	if hw.Revision == "" {
		return b, fmt.Errorf("board identity: no revision code in %s/cpuinfo or the device tree: not a Raspberry Pi?", procRoot)
	}
	rev, err := raspberrypi.ParseRevision(hw.Revision)
	if err != nil {
		return b, fmt.Errorf("board identity: %w", err)
	}
	dec, err := rev.Decode()
	b.Type, b.BoardRevision, b.MemoryMB, b.Manufacturer, b.Processor = dec.Model, dec.PCBRevision, dec.MemoryMB, dec.Manufacturer, dec.Processor
	if err != nil {
		return b, fmt.Errorf("board identity: %w", err)
	}
	return b, nil
}

func readMemTotal(procRoot string) (uint64, error) {
	p := filepath.Join(procRoot, "meminfo")
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("memory size: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 2 && f[1] == "kB" {
			if kb, err := strconv.ParseUint(f[0], 10, 64); err == nil && kb < 1<<44 {
				return kb * 1024, nil
			}
		}
		return 0, fmt.Errorf("memory size: %s: cannot read %q", p, sc.Text())
	}
	return 0, fmt.Errorf("memory size: %s has no MemTotal line", p)
}

// readLine returns the first line of a sysfs attribute, "" when absent.
func readLine(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(s)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// listClass returns the entries of a sysfs class or bus directory; a
// missing directory is an empty list (no such devices, or no driver).
func listClass(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// skipDisk filters block devices that are not disks someone could install
// onto: virtual devices, and an eMMC's boot and RPMB areas.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "md", "sr", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return strings.HasPrefix(name, "mmcblk") && (strings.Contains(name, "boot") || strings.Contains(name, "rpmb"))
}

func readStorage(sysRoot string) ([]protocol.StorageDevice, error) {
	dir := filepath.Join(sysRoot, "class", "block")
	names, err := listClass(dir)
	if err != nil {
		return nil, fmt.Errorf("storage devices: %w", err)
	}
	var out []protocol.StorageDevice
	var errs []error
	for _, name := range names {
		d := filepath.Join(dir, name)
		if skipDisk(name) || exists(filepath.Join(d, "partition")) {
			continue
		}
		sectors, err := strconv.ParseUint(readLine(filepath.Join(d, "size")), 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("storage device %s: size: %w", name, err))
			continue
		}
		s := protocol.StorageDevice{
			Name:      name,
			SizeBytes: sectors * 512, // sysfs counts 512-byte sectors whatever the block size
			Removable: readLine(filepath.Join(d, "removable")) == "1",
		}
		real, _ := filepath.EvalSymlinks(d)
		switch {
		case strings.HasPrefix(name, "mmcblk"):
			switch readLine(filepath.Join(d, "device", "type")) {
			case "SD":
				s.Kind = protocol.StorageSD
			case "MMC":
				s.Kind = protocol.StorageEMMC
			}
			s.Model = readLine(filepath.Join(d, "device", "name"))
		case strings.HasPrefix(name, "nvme"):
			s.Kind = protocol.StorageNVMe
			s.Model = readLine(filepath.Join(d, "device", "model"))
		case strings.Contains(real, "/usb"):
			s.Kind = protocol.StorageUSB
			s.Model = readLine(filepath.Join(d, "device", "model"))
		}
		out = append(out, s)
	}
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	return out, nil
}

func readUSB(sysRoot string, servoAdapters []string) ([]protocol.USBDevice, error) {
	dir := filepath.Join(sysRoot, "bus", "usb", "devices")
	names, err := listClass(dir)
	if err != nil {
		return nil, fmt.Errorf("USB devices: %w", err)
	}
	var out []protocol.USBDevice
	for _, name := range names {
		d := filepath.Join(dir, name)
		// Interfaces ("1-1:1.0") have no idVendor; root hubs are "usbN".
		vendor := readLine(filepath.Join(d, "idVendor"))
		if vendor == "" || strings.HasPrefix(name, "usb") {
			continue
		}
		u := protocol.USBDevice{
			Path:         name,
			Vendor:       vendor,
			Product:      readLine(filepath.Join(d, "idProduct")),
			Name:         readLine(filepath.Join(d, "product")),
			Manufacturer: readLine(filepath.Join(d, "manufacturer")),
			Serial:       readLine(filepath.Join(d, "serial")),
		}
		if slices.Contains(servoAdapters, u.Vendor+":"+u.Product) {
			u.Class = protocol.USBClassServoAdapter
		}
		if u.Class == "" && hasVideoInterface(d, name) {
			u.Class = protocol.USBClassCamera
		}
		out = append(out, u)
	}
	return out, nil
}

// hasVideoInterface reports whether a USB device has a USB Video Class
// interface (bInterfaceClass 0e).
func hasVideoInterface(dev, name string) bool {
	ifs, _ := filepath.Glob(filepath.Join(dev, name+":*", "bInterfaceClass"))
	for _, f := range ifs {
		if readLine(f) == "0e" {
			return true
		}
	}
	return false
}

// usbParent walks up from a device's sysfs directory to the USB device it
// hangs off and returns that device's directory ("" when it is not on USB).
func usbParent(sysRoot, classEntry string) string {
	real, err := filepath.EvalSymlinks(classEntry)
	if err != nil {
		return ""
	}
	root, err := filepath.EvalSymlinks(sysRoot)
	if err != nil {
		return ""
	}
	for d := real; len(d) > len(root) && strings.HasPrefix(d, root); d = filepath.Dir(d) {
		if exists(filepath.Join(d, "idVendor")) && !strings.HasPrefix(filepath.Base(d), "usb") {
			return d
		}
	}
	return ""
}

func readVideo(sysRoot string) ([]protocol.VideoDevice, error) {
	dir := filepath.Join(sysRoot, "class", "video4linux")
	names, err := listClass(dir)
	if err != nil {
		return nil, fmt.Errorf("video devices: %w", err)
	}
	var out []protocol.VideoDevice
	for _, name := range names {
		v := protocol.VideoDevice{Device: "/dev/" + name, Name: readLine(filepath.Join(dir, name, "name"))}
		if p := usbParent(sysRoot, filepath.Join(dir, name)); p != "" {
			v.USB = filepath.Base(p)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Device, out[j].Device) })
	return out, nil
}

// markCameras classes USB devices that own a V4L2 node as cameras too
// (a camera whose interface class was not read still shows up this way).
func markCameras(usb []protocol.USBDevice, video []protocol.VideoDevice) {
	for _, v := range video {
		for i := range usb {
			if v.USB != "" && usb[i].Path == v.USB && usb[i].Class == "" {
				usb[i].Class = protocol.USBClassCamera
			}
		}
	}
}

func readSerialPorts(sysRoot, devRoot string) ([]protocol.SerialPort, error) {
	dir := filepath.Join(sysRoot, "class", "tty")
	names, err := listClass(dir)
	if err != nil {
		return nil, fmt.Errorf("serial ports: %w", err)
	}
	var out []protocol.SerialPort
	for _, name := range names {
		if !strings.HasPrefix(name, "ttyACM") && !strings.HasPrefix(name, "ttyUSB") {
			continue
		}
		s := protocol.SerialPort{Device: filepath.Join(devRoot, name)}
		if p := usbParent(sysRoot, filepath.Join(dir, name)); p != "" {
			s.USB = filepath.Base(p)
			s.Vendor = readLine(filepath.Join(p, "idVendor"))
			s.Product = readLine(filepath.Join(p, "idProduct"))
			s.Serial = readLine(filepath.Join(p, "serial"))
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Device, out[j].Device) })
	return out, nil
}

// naturalLess orders "video2" before "video10".
func naturalLess(a, b string) bool {
	ta, na := splitNum(a)
	tb, nb := splitNum(b)
	if ta != tb {
		return ta < tb
	}
	return na < nb
}

func splitNum(s string) (string, int) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	n, _ := strconv.Atoi(s[i:])
	return s[:i], n
}

// pingBuses pings the servo adapters' ports, all ports at once (each bus
// is its own wire), the IDs of one port one after the other.
func pingBuses(ctx context.Context, o Options, ports []protocol.SerialPort) []protocol.ServoBus {
	if len(ports) == 0 {
		return nil
	}
	out := make([]protocol.ServoBus, len(ports))
	var wg sync.WaitGroup
	for i, p := range ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = pingBus(ctx, o, p.Device)
		}()
	}
	wg.Wait()
	return out
}

func pingBus(ctx context.Context, o Options, device string) protocol.ServoBus {
	sb := protocol.ServoBus{Device: device, IDs: []int{}}
	bus, err := o.OpenBus(device)
	if err != nil {
		sb.Error = err.Error()
		return sb
	}
	defer bus.Close()
	for _, id := range o.ServoIDs {
		ok, err := bus.Ping(ctx, id)
		switch {
		case ok:
			sb.IDs = append(sb.IDs, id)
		case errors.Is(err, servo.ErrChecksum):
			sb.Garbled = append(sb.Garbled, id)
		case err != nil:
			sb.Error = err.Error()
			return sb
		}
	}
	return sb
}
