package collect

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/protocol"
)

type fakeIfaces struct {
	ifs []Interface
	err error
}

func (f fakeIfaces) Interfaces() ([]Interface, error) { return f.ifs, f.err }

func fixedDisk(total, used uint64) StatfsFunc {
	return func(string) (DiskUsage, error) { return DiskUsage{TotalBytes: total, UsedBytes: used}, nil }
}

func pi5Interfaces() fakeIfaces {
	return fakeIfaces{ifs: []Interface{
		{Name: "lo", Loopback: true, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}},
		{Name: "eth0", MAC: "2c:cf:67:12:34:56", IPs: []netip.Addr{netip.MustParseAddr("192.168.1.42"), netip.MustParseAddr("fe80::2ecf:67ff:fe12:3456")}},
		{Name: "wlan0", MAC: "2c:cf:67:12:34:57", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.7")}},
	}}
}

func fixtureRoots(dir string) Roots {
	return Roots{Proc: filepath.Join(dir, "proc"), Sys: filepath.Join(dir, "sys"), Etc: filepath.Join(dir, "etc")}
}

func TestSampleRaspberryPi5Fixture(t *testing.T) {
	c := New(Options{
		Roots:      fixtureRoots("testdata/pi5"),
		DiskPath:   "/",
		Statfs:     fixedDisk(64_000_000_000, 12_800_000_000),
		Interfaces: pi5Interfaces(),
	})
	got, err := c.Sample(context.Background())
	if err != nil {
		t.Fatalf("Sample on the Pi 5 fixture: %v", err)
	}
	temp := 48.75
	want := protocol.Telemetry{
		Network: protocol.Network{
			Hostname: "lekiwi-0042",
			MAC:      "2c:cf:67:12:34:56",
			IPs:      []string{"10.0.0.7", "192.168.1.42", "fe80::2ecf:67ff:fe12:3456"},
		},
		Resources: protocol.Resources{
			// First sample: average since boot, (10050045-9878888)/10050045.
			CPUPercent:       100 * float64(10050045-9878888) / 10050045,
			MemoryTotalBytes: 8245632 * 1024,
			MemoryUsedBytes:  (8245632 - 7340032) * 1024,
			DiskTotalBytes:   64_000_000_000,
			DiskUsedBytes:    12_800_000_000,
			TemperatureC:     &temp,
		},
		OSVersion:     "Debian GNU/Linux 12 (bookworm)",
		UptimeSeconds: 86400.25,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Sample =\n%+v\n%+v\nwant\n%+v\n%+v", got, *got.Resources.TemperatureC, want, temp)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("sample does not validate as protocol telemetry: %v", err)
	}
}

// TestSampleCPUOverInterval checks that the second sample measures the
// interval between the two /proc/stat readings, not the average since boot.
func TestSampleCPUOverInterval(t *testing.T) {
	dir := t.TempDir()
	copyTree(t, "testdata/pi5", dir)
	c := New(Options{Roots: fixtureRoots(dir), Statfs: fixedDisk(1, 0), Interfaces: fakeIfaces{}})
	if _, err := c.Sample(context.Background()); err != nil {
		t.Fatal(err)
	}
	// +600 user, +150 system, +1200 idle, +50 iowait: 2000 ticks, 750 busy.
	later := "cpu  124056 789 45828 9877743 2395 0 1234 0 0 0\n"
	if err := os.WriteFile(filepath.Join(dir, "proc", "stat"), []byte(later), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := c.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got.Resources.CPUPercent-37.5) > 1e-9 {
		t.Fatalf("CPU over the interval = %v, want 37.5", got.Resources.CPUPercent)
	}
}

func TestSampleWithoutOptionalSources(t *testing.T) {
	c := New(Options{Roots: fixtureRoots("testdata/vm"), Statfs: fixedDisk(1000, 10), Interfaces: fakeIfaces{}})
	got, err := c.Sample(context.Background())
	if err != nil {
		t.Fatalf("Sample on a board without thermal zone, hostname and PRETTY_NAME: %v", err)
	}
	if got.Resources.TemperatureC != nil {
		t.Errorf("temperature = %v, want nil when the thermal zone is absent", *got.Resources.TemperatureC)
	}
	if got.Network.Hostname != "" || got.Network.MAC != "" || got.Network.IPs != nil {
		t.Errorf("network = %+v, want empty", got.Network)
	}
	if got.OSVersion != "Alpine 3.20" {
		t.Errorf("OS version = %q, want NAME VERSION fallback %q", got.OSVersion, "Alpine 3.20")
	}
	// No MemAvailable: free + buffers + cached = 1012000 kB available.
	if want := uint64(2048000-1012000) * 1024; got.Resources.MemoryUsedBytes != want {
		t.Errorf("memory used = %d, want %d", got.Resources.MemoryUsedBytes, want)
	}
	if got.Resources.CPUPercent != 20 {
		t.Errorf("CPU = %v, want 20", got.Resources.CPUPercent)
	}
}

func TestSampleErrors(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(dir string) error
		opts    func(*Options)
		wantErr string
	}{
		{name: "missing /proc/stat", mutate: func(d string) error { return os.Remove(filepath.Join(d, "proc", "stat")) }, wantErr: "proc/stat"},
		{name: "garbage meminfo", mutate: func(d string) error {
			return os.WriteFile(filepath.Join(d, "proc", "meminfo"), []byte("MemTotal: lots kB\n"), 0o644)
		}, wantErr: "MemTotal"},
		{name: "garbage temperature", mutate: func(d string) error {
			return os.WriteFile(filepath.Join(d, "sys", "class", "thermal", "thermal_zone0", "temp"), []byte("-2147483647\n"), 0o644)
		}, wantErr: "implausible"},
		{name: "statfs fails", opts: func(o *Options) {
			o.Statfs = func(p string) (DiskUsage, error) { return DiskUsage{}, errors.New("no such filesystem") }
			o.DiskPath = "/mnt/gone"
		}, wantErr: "disk usage of /mnt/gone"},
		{name: "interfaces fail", opts: func(o *Options) { o.Interfaces = fakeIfaces{err: errors.New("netlink down")} }, wantErr: "netlink down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyTree(t, "testdata/pi5", dir)
			if tt.mutate != nil {
				if err := tt.mutate(dir); err != nil {
					t.Fatal(err)
				}
			}
			o := Options{Roots: fixtureRoots(dir), Statfs: fixedDisk(10, 1), Interfaces: fakeIfaces{}}
			if tt.opts != nil {
				tt.opts(&o)
			}
			_, err := New(o).Sample(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Sample error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestReadHardware(t *testing.T) {
	pi5 := protocol.Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "d04170", MemoryMB: 8192, Manufacturer: "Sony UK"}
	pi4 := protocol.Hardware{Serial: "10000000b7e3a9f2", Model: "Raspberry Pi 4 Model B Rev 1.4", Revision: "c03114", MemoryMB: 4096, Manufacturer: "Sony UK"}
	tests := []struct {
		name    string
		fixture string
		mutate  func(root string) error // root holds proc/ and sys/
		want    protocol.Hardware
	}{
		{name: "pi5 device tree and cpuinfo", fixture: "pi5", want: pi5},
		{name: "pi5 cpuinfo only", fixture: "pi5", mutate: remove("proc/device-tree"), want: pi5},
		{name: "pi5 device tree only", fixture: "pi5", mutate: remove("proc/cpuinfo"), want: pi5},
		{name: "device tree wins", fixture: "pi5", mutate: func(root string) error {
			return os.WriteFile(filepath.Join(root, "proc/device-tree/serial-number"), []byte("00000000cafe0001\x00"), 0o644)
		}, want: protocol.Hardware{Serial: "00000000cafe0001", Model: pi5.Model, Revision: pi5.Revision, MemoryMB: 8192, Manufacturer: "Sony UK"}},
		{name: "pi5 4GB from /sys/firmware/devicetree (no /proc/device-tree, no cpuinfo lines)", fixture: "pi5-4gb",
			want: protocol.Hardware{Serial: "5d1c07e2a4b9f318", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "c04170", MemoryMB: 4096, Manufacturer: "Sony UK"}},
		{name: "pi4", fixture: "pi4", want: pi4},
		{name: "pi4 without a model anywhere: the revision code names it", fixture: "pi4", mutate: func(root string) error {
			return errors.Join(os.Remove(filepath.Join(root, "proc/device-tree/model")),
				os.WriteFile(filepath.Join(root, "proc/cpuinfo"), []byte("Revision\t: c03114\n"), 0o644))
		}, want: protocol.Hardware{Serial: "10000000b7e3a9f2", Model: "Raspberry Pi 4B", Revision: "c03114", MemoryMB: 4096, Manufacturer: "Sony UK"}},
		{name: "a tree with no model and no revision: compatible, labelled", fixture: "pi4", mutate: func(root string) error {
			return errors.Join(os.Remove(filepath.Join(root, "proc/device-tree/model")), os.Remove(filepath.Join(root, "proc/device-tree/system/linux,revision")),
				os.Remove(filepath.Join(root, "proc/cpuinfo")))
		}, want: protocol.Hardware{Serial: "10000000b7e3a9f2", Model: "raspberrypi,4-model-b (device-tree compatible; the tree names no model)"}},
		{name: "an unknown revision code keeps what is known", fixture: "pi5", mutate: func(root string) error {
			return os.WriteFile(filepath.Join(root, "proc/cpuinfo"), []byte("Revision\t: d04ff0\n"), 0o644)
		}, want: protocol.Hardware{Serial: pi5.Serial, Model: pi5.Model, Revision: "d04ff0", MemoryMB: 8192, Manufacturer: "Sony UK"}},
		{name: "qemu virt", fixture: "qemu-virt", want: protocol.Hardware{Model: "virtual machine (linux,dummy-virt)"}},
		{name: "qemu virt without model", fixture: "qemu-virt", mutate: remove("sys/firmware/devicetree/base/model"),
			want: protocol.Hardware{Model: "virtual machine (linux,dummy-virt)"}},
		{name: "x86 vm: no device tree", fixture: "vm", want: protocol.Hardware{}},
		{name: "nothing", fixture: "pi5", mutate: func(root string) error {
			return errors.Join(os.RemoveAll(filepath.Join(root, "proc/device-tree")), os.Remove(filepath.Join(root, "proc/cpuinfo")))
		}, want: protocol.Hardware{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyTree(t, filepath.Join("testdata", tt.fixture), dir)
			if tt.mutate != nil {
				if err := tt.mutate(dir); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadHardware(Roots{Proc: filepath.Join(dir, "proc"), Sys: filepath.Join(dir, "sys")})
			if err != nil || got != tt.want {
				t.Fatalf("ReadHardware = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// An unreadable device tree is an error naming it, not an empty identity.
func TestReadHardwareUnreadable(t *testing.T) {
	dir := t.TempDir()
	copyTree(t, "testdata/pi5", dir)
	model := filepath.Join(dir, "proc/device-tree/model")
	if err := os.Remove(model); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(model, 0o755); err != nil { // reading a directory fails
		t.Fatal(err)
	}
	if _, err := ReadHardware(Roots{Proc: filepath.Join(dir, "proc"), Sys: filepath.Join(dir, "sys")}); err == nil || !strings.Contains(err.Error(), model) {
		t.Fatalf("ReadHardware with an unreadable model = %v, want an error naming %s", err, model)
	}
}

func remove(rel string) func(root string) error {
	return func(root string) error { return os.RemoveAll(filepath.Join(root, rel)) }
}

func TestAddresses(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		ifs     []Interface
		wantMAC string
		wantIPs []string
	}{
		{name: "none"},
		{name: "loopback only", ifs: []Interface{{Name: "lo", MAC: "00:00:00:00:00:01", Loopback: true, IPs: []netip.Addr{a("127.0.0.1")}}}},
		{name: "first non-loopback MAC, IPs sorted and deduplicated", ifs: []Interface{
			{Name: "lo", Loopback: true, IPs: []netip.Addr{a("127.0.0.1")}},
			{Name: "tun0", IPs: []netip.Addr{a("10.9.0.2")}},
			{Name: "eth0", MAC: "d8:3a:dd:00:00:01", IPs: []netip.Addr{a("192.168.1.5"), a("10.9.0.2")}},
			{Name: "wlan0", MAC: "d8:3a:dd:00:00:02", IPs: []netip.Addr{a("::1"), a("2001:db8::5")}},
		}, wantMAC: "d8:3a:dd:00:00:01", wantIPs: []string{"10.9.0.2", "192.168.1.5", "2001:db8::5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mac, ips := Addresses(tt.ifs)
			if mac != tt.wantMAC || !reflect.DeepEqual(ips, tt.wantIPs) {
				t.Fatalf("Addresses = %q, %q; want %q, %q", mac, ips, tt.wantMAC, tt.wantIPs)
			}
		})
	}
}

func TestSystemStatfsAndInterfaces(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("statfs is implemented on Linux only")
	}
	du, err := Statfs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if du.TotalBytes == 0 || du.UsedBytes > du.TotalBytes {
		t.Fatalf("Statfs = %+v: want a positive total and used <= total", du)
	}
	ifs, err := SystemInterfaces{}.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var sawLoopback bool
	for _, i := range ifs {
		sawLoopback = sawLoopback || i.Loopback
	}
	if !sawLoopback {
		t.Fatalf("no loopback interface among %+v", ifs)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatalf("copy fixture %s: %v", src, err)
	}
}
