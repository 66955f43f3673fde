package factory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// simBuses opens a simulated bus per device name; ports without one are
// silent (a serial device that is not a servo bus).
func simBuses(sims map[string]*servo.Sim) func(string) (servo.Pinger, error) {
	return func(dev string) (servo.Pinger, error) {
		sim, ok := sims[filepath.Base(dev)]
		if !ok {
			sim = &servo.Sim{}
		}
		return servo.NewBus(sim, dev, 3*time.Millisecond), nil
	}
}

func ids(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func fixture(name string) Options {
	root := filepath.Join("testdata", name)
	return Options{ProcRoot: filepath.Join(root, "proc"), SysRoot: filepath.Join(root, "sys")}
}

func TestProbeFixtures(t *testing.T) {
	pi5Video := []protocol.VideoDevice{{Device: "/dev/video19", Name: "rpi-hevc-dec"}, {Device: "/dev/video20", Name: "pispbe-input"}}
	sd64 := protocol.StorageDevice{Name: "mmcblk0", Kind: protocol.StorageSD, SizeBytes: 124735488 * 512, Model: "SN64G"}
	for _, tc := range []struct {
		fixture string
		sims    map[string]*servo.Sim
		want    protocol.HardwareReport
	}{
		{
			fixture: "lekiwi-pi5",
			sims:    map[string]*servo.Sim{"ttyACM0": {IDs: ids(1, 9)}},
			want: protocol.HardwareReport{
				Board: protocol.BoardInfo{Serial: "10000000a1b2c3d4", Revision: "d04170", Model: "Raspberry Pi 5 Model B Rev 1.0",
					Type: "5", BoardRevision: "1.0", MemoryMB: 8192, Manufacturer: "Sony UK", Processor: "BCM2712"},
				MemoryBytes: 8245952 * 1024,
				Storage:     []protocol.StorageDevice{sd64},
				USB: []protocol.USBDevice{
					{Path: "1-1", Vendor: "1a86", Product: "55d3", Name: "USB Single Serial", Serial: "5A46083073", Class: protocol.USBClassServoAdapter},
					{Path: "1-2", Vendor: "0c45", Product: "6366", Name: "USB 2.0 Camera", Class: protocol.USBClassCamera},
					{Path: "1-3", Vendor: "0c45", Product: "6366", Name: "USB 2.0 Camera", Class: protocol.USBClassCamera},
				},
				Video: []protocol.VideoDevice{
					{Device: "/dev/video0", Name: "USB 2.0 Camera: USB 2.0 Camera", USB: "1-2"},
					{Device: "/dev/video1", Name: "USB 2.0 Camera: USB 2.0 Camera", USB: "1-2"},
					{Device: "/dev/video2", Name: "USB 2.0 Camera: USB 2.0 Camera", USB: "1-3"},
					{Device: "/dev/video3", Name: "USB 2.0 Camera: USB 2.0 Camera", USB: "1-3"},
					pi5Video[0], pi5Video[1],
				},
				SerialPorts: []protocol.SerialPort{{Device: "/dev/ttyACM0", USB: "1-1", Vendor: "1a86", Product: "55d3", Serial: "5A46083073"}},
				ServoBuses:  []protocol.ServoBus{{Device: "/dev/ttyACM0", IDs: ids(1, 9)}},
			},
		},
		{
			fixture: "xle-pi5",
			sims: map[string]*servo.Sim{
				"ttyACM0": {IDs: ids(1, 8)},
				"ttyACM1": {IDs: ids(2, 9), Corrupt: []int{1}}, // two servos set to ID 1
				"ttyUSB0": {IDs: ids(1, 6)},                    // leader arm
			},
			want: protocol.HardwareReport{
				Board: protocol.BoardInfo{Serial: "10000000deadbeef", Revision: "e04171", Model: "Raspberry Pi 5 Model B Rev 1.0",
					Type: "5", BoardRevision: "1.1", MemoryMB: 16384, Manufacturer: "Sony UK", Processor: "BCM2712"},
				MemoryBytes: 8245952 * 1024,
				Storage: []protocol.StorageDevice{
					sd64,
					{Name: "nvme0n1", Kind: protocol.StorageNVMe, SizeBytes: 976773168 * 512, Model: "Samsung SSD 980 500GB"},
				},
				USB: []protocol.USBDevice{
					{Path: "1-1", Vendor: "1a86", Product: "55d3", Name: "USB Single Serial", Serial: "5A46083071", Class: protocol.USBClassServoAdapter},
					{Path: "1-2", Vendor: "1a86", Product: "55d3", Name: "USB Single Serial", Serial: "5A46083072", Class: protocol.USBClassServoAdapter},
					{Path: "1-3", Vendor: "0c45", Product: "6366", Name: "Intel(R) RealSense(TM) Depth Camera 435", Class: protocol.USBClassCamera},
					{Path: "1-4", Vendor: "1a86", Product: "7523", Name: "USB Serial", Class: protocol.USBClassServoAdapter}, // the leader arm's CH340
				},
				Video: []protocol.VideoDevice{
					{Device: "/dev/video0", Name: "Intel(R) RealSense(TM) Depth Camera 435: Intel(R) RealSense(TM) Depth Camera 435", USB: "1-3"},
					{Device: "/dev/video1", Name: "Intel(R) RealSense(TM) Depth Camera 435: Intel(R) RealSense(TM) Depth Camera 435", USB: "1-3"},
					pi5Video[0], pi5Video[1],
				},
				SerialPorts: []protocol.SerialPort{
					{Device: "/dev/ttyACM0", USB: "1-1", Vendor: "1a86", Product: "55d3", Serial: "5A46083071"},
					{Device: "/dev/ttyACM1", USB: "1-2", Vendor: "1a86", Product: "55d3", Serial: "5A46083072"},
					{Device: "/dev/ttyUSB0", USB: "1-4", Vendor: "1a86", Product: "7523"},
				},
				ServoBuses: []protocol.ServoBus{
					{Device: "/dev/ttyACM0", IDs: ids(1, 8)},
					{Device: "/dev/ttyACM1", IDs: ids(2, 9), Garbled: []int{1}},
					{Device: "/dev/ttyUSB0", IDs: ids(1, 6)},
				},
			},
		},
		{
			fixture: "bare-pi4",
			want: protocol.HardwareReport{
				Board: protocol.BoardInfo{Serial: "100000001234abcd", Revision: "c03112", Model: "Raspberry Pi 4 Model B Rev 1.2",
					Type: "4B", BoardRevision: "1.2", MemoryMB: 4096, Manufacturer: "Sony UK", Processor: "BCM2711"},
				MemoryBytes: 3884324 * 1024,
				Storage: []protocol.StorageDevice{
					{Name: "mmcblk0", Kind: protocol.StorageSD, SizeBytes: 62333952 * 512},
					{Name: "sda", Kind: protocol.StorageUSB, SizeBytes: 30031872 * 512, Removable: true, Model: "Cruzer Blade"},
				},
				USB: []protocol.USBDevice{{Path: "2-1", Vendor: "0781", Product: "5567", Name: "Cruzer Blade", Manufacturer: "SanDisk", Serial: "4C530001"}},
			},
		},
		{
			fixture: "ftdi-pi5",
			sims:    map[string]*servo.Sim{"ttyUSB0": {IDs: ids(1, 9)}},
			want: protocol.HardwareReport{
				Board: protocol.BoardInfo{Serial: "10000000f7d1a2b3", Revision: "d04170", Model: "Raspberry Pi 5 Model B Rev 1.0",
					Type: "5", BoardRevision: "1.0", MemoryMB: 8192, Manufacturer: "Sony UK", Processor: "BCM2712"},
				MemoryBytes: 8245952 * 1024,
				Storage:     []protocol.StorageDevice{sd64},
				USB: []protocol.USBDevice{
					{Path: "1-1", Vendor: "0403", Product: "6001", Name: "FT232R USB UART", Manufacturer: "FTDI", Serial: "A10KZP45", Class: protocol.USBClassServoAdapter},
					{Path: "1-2", Vendor: "1546", Product: "01a8", Name: "u-blox GNSS receiver", Manufacturer: "u-blox AG - www.u-blox.com"},
				},
				Video: pi5Video,
				SerialPorts: []protocol.SerialPort{
					{Device: "/dev/ttyACM0", USB: "1-2", Vendor: "1546", Product: "01a8"},
					{Device: "/dev/ttyUSB0", USB: "1-1", Vendor: "0403", Product: "6001", Serial: "A10KZP45"},
				},
				// The GPS receiver's port is listed, not pinged.
				ServoBuses: []protocol.ServoBus{{Device: "/dev/ttyUSB0", IDs: ids(1, 9)}},
				Warnings:   []string{`serial port /dev/ttyACM0 (USB 1546:01a8) not pinged: not a known servo adapter; if a servo bus is on it, add "1546:01a8" to the profile's hardware.servo_adapters`},
			},
		},
		{
			// A VM with QEMU's usb-serial: no board to decode (said in a
			// warning), the model labelled, the emulated FTDI pinged.
			fixture: "qemu-virt",
			want: protocol.HardwareReport{
				Board:       protocol.BoardInfo{Model: "virtual machine (linux,dummy-virt)"},
				MemoryBytes: 2014408 * 1024,
				Storage:     []protocol.StorageDevice{{Name: "vda", SizeBytes: 16777216 * 512}},
				USB: []protocol.USBDevice{{Path: "1-1", Vendor: "0403", Product: "6001", Name: "QEMU USB SERIAL", Manufacturer: "QEMU",
					Serial: "1-0000:00:01.0-1", Class: protocol.USBClassServoAdapter}},
				SerialPorts: []protocol.SerialPort{{Device: "/dev/ttyUSB0", USB: "1-1", Vendor: "0403", Product: "6001", Serial: "1-0000:00:01.0-1"}},
				ServoBuses:  []protocol.ServoBus{{Device: "/dev/ttyUSB0", IDs: []int{}}},
				Warnings:    []string{"board identity: no revision code in testdata/qemu-virt/proc/cpuinfo or the device tree: not a Raspberry Pi?"},
			},
		},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			o := fixture(tc.fixture)
			o.OpenBus = simBuses(tc.sims)
			got, err := Probe(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				g, _ := json.MarshalIndent(got, "", "  ")
				w, _ := json.MarshalIndent(tc.want, "", "  ")
				t.Errorf("report:\n%s\nwant:\n%s", g, w)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("report does not validate: %v", err)
			}
		})
	}
}

func TestProbeWarningsAndErrors(t *testing.T) {
	// An empty tree: nothing to read, every part explained, no panic.
	o := Options{ProcRoot: t.TempDir(), SysRoot: t.TempDir(), OpenBus: simBuses(nil)}
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Warnings) != 2 || len(r.Storage)+len(r.USB)+len(r.SerialPorts)+len(r.ServoBuses) != 0 {
		t.Errorf("empty tree: %+v", r)
	}

	// A port that cannot be opened, and one that fails mid-probe.
	o = fixture("xle-pi5")
	gone := errors.New("device disconnected")
	o.OpenBus = func(dev string) (servo.Pinger, error) {
		switch filepath.Base(dev) {
		case "ttyACM0":
			return nil, fmt.Errorf("open %s: %w", dev, gone)
		case "ttyACM1":
			sim := &servo.Sim{IDs: ids(1, 9)}
			sim.FailWrites(gone)
			return servo.NewBus(sim, dev, time.Millisecond), nil
		}
		return servo.NewBus(&servo.Sim{IDs: ids(1, 6)}, dev, time.Millisecond), nil
	}
	r, err = Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if b := r.ServoBuses; len(b) != 3 || b[0].Error == "" || b[1].Error == "" || len(b[1].IDs) != 0 || b[2].Error != "" || len(b[2].IDs) != 6 {
		t.Errorf("servo buses with failures: %+v", b)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o = fixture("lekiwi-pi5")
	o.OpenBus = simBuses(map[string]*servo.Sim{"ttyACM0": {IDs: ids(1, 9)}})
	if _, err := Probe(ctx, o); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled probe: %v", err)
	}
}

// TestProbeFast: 9 IDs on three silent buses with a realistic timeout stay
// well under a second, because buses are pinged in parallel.
func TestProbeFast(t *testing.T) {
	o := fixture("xle-pi5")
	o.OpenBus = func(dev string) (servo.Pinger, error) {
		return servo.NewBus(&servo.Sim{}, dev, servo.DefaultPingTimeout), nil
	}
	start := time.Now()
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("probe of 3 silent buses took %v", el)
	}
	for _, b := range r.ServoBuses {
		if len(b.IDs) != 0 || b.Error != "" {
			t.Errorf("silent bus %+v", b)
		}
	}
}

// Only ports on servo adapters are opened: the list given, or the default
// chips plus what the profiles add.
func TestProbePingsOnlyServoAdapters(t *testing.T) {
	var mu sync.Mutex
	var opened []string
	open := func(dev string) (servo.Pinger, error) {
		mu.Lock()
		opened = append(opened, filepath.Base(dev))
		mu.Unlock()
		return servo.NewBus(&servo.Sim{IDs: ids(1, 6)}, dev, time.Millisecond), nil
	}

	o := fixture("ftdi-pi5")
	o.OpenBus = open
	if _, err := Probe(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(opened, []string{"ttyUSB0"}) {
		t.Errorf("opened %v on the FTDI board, want only ttyUSB0 (never the GPS on ttyACM0)", opened)
	}

	// The XLE's leader arm is on a CH340: left out when the list has only
	// the CH343.
	opened = nil
	o = fixture("xle-pi5")
	o.OpenBus, o.ServoAdapters = open, []string{"1a86:55d3"}
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(opened)
	if !slices.Equal(opened, []string{"ttyACM0", "ttyACM1"}) || len(r.ServoBuses) != 2 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "/dev/ttyUSB0 (USB 1a86:7523) not pinged") {
		t.Errorf("with only the CH343 listed: opened %v, buses %+v, warnings %q", opened, r.ServoBuses, r.Warnings)
	}
	if r.USB[3].Class != "" {
		t.Errorf("the CH340 is classed %q with only the CH343 listed", r.USB[3].Class)
	}
}

func TestServoAdaptersFromProfiles(t *testing.T) {
	p, err := profiles.Parse("robot.yaml", []byte(`name: arm
robot_type: lekiwi
arch: arm64
hostname_pattern: "arm-{serial}"
agent:
  heartbeat_interval: 30s
  telemetry_min_interval: 10s
hardware:
  servo_adapters: ["2e8a:000a", "0403:6014"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := ServoAdapters([]*profiles.Profile{p})
	want := append(DefaultServoAdapters(), "2e8a:000a") // 0403:6014 is a default already
	if !slices.Equal(got, want) {
		t.Fatalf("ServoAdapters = %v, want %v", got, want)
	}
	embedded, err := profiles.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1a86:55d3", "1a86:7523", "0403:6001", "0403:6010", "0403:6014", "0403:6015", "10c4:ea60"} {
		if !slices.Contains(ServoAdapters(embedded), id) {
			t.Errorf("the probe's adapters lack %s", id)
		}
	}
}
