package collect

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/lekiwi/heartbeat/protocol"
)

// Roots are the directories the collector reads instead of /proc, /sys and
// /etc, so tests and simulators can point it at fixture trees.
type Roots struct {
	Proc string // default "/proc"
	Sys  string // default "/sys"
	Etc  string // default "/etc"
}

// WithDefaults fills empty roots with the real system paths.
func (r Roots) WithDefaults() Roots {
	if r.Proc == "" {
		r.Proc = "/proc"
	}
	if r.Sys == "" {
		r.Sys = "/sys"
	}
	if r.Etc == "" {
		r.Etc = "/etc"
	}
	return r
}

// DiskUsage is the size and use of the filesystem holding a path, in bytes.
type DiskUsage struct {
	TotalBytes uint64
	UsedBytes  uint64
}

// StatfsFunc reports the usage of the filesystem holding path.
type StatfsFunc func(path string) (DiskUsage, error)

// Options configure a Collector. The zero value samples the real system.
type Options struct {
	Roots      Roots
	DiskPath   string          // filesystem to report; default "/"
	Statfs     StatfsFunc      // default: statfs(2)
	Interfaces InterfaceLister // default: the kernel's interfaces (net.Interfaces)
}

// Collector samples telemetry. It remembers the previous /proc/stat reading
// so CPU use is measured over the interval between two samples rather than
// since boot. Safe for concurrent use.
type Collector struct {
	roots    Roots
	diskPath string
	statfs   StatfsFunc
	ifaces   InterfaceLister

	mu      sync.Mutex
	prevCPU CPUTimes
	havePrv bool
}

// New returns a Collector with opts' empty fields set to the real system.
func New(opts Options) *Collector {
	c := &Collector{
		roots:    opts.Roots.WithDefaults(),
		diskPath: opts.DiskPath,
		statfs:   opts.Statfs,
		ifaces:   opts.Interfaces,
	}
	if c.diskPath == "" {
		c.diskPath = "/"
	}
	if c.statfs == nil {
		c.statfs = Statfs
	}
	if c.ifaces == nil {
		c.ifaces = SystemInterfaces{}
	}
	return c
}

// Sample reads one telemetry sample. CPU use, memory, disk and uptime are
// required: if one cannot be read Sample fails, naming the file. The SoC
// temperature, hostname, OS version and addresses are optional: a board
// without them (no thermal zone, no os-release) yields empty fields, but a
// file that exists and does not parse is an error.
func (c *Collector) Sample(ctx context.Context) (protocol.Telemetry, error) {
	var t protocol.Telemetry
	if err := ctx.Err(); err != nil {
		return t, err
	}

	stat, err := c.readProc("stat")
	if err != nil {
		return t, err
	}
	cpu, err := ParseStat(stat)
	if err != nil {
		return t, fmt.Errorf("%s: %w", filepath.Join(c.roots.Proc, "stat"), err)
	}
	t.Resources.CPUPercent = c.cpuPercent(cpu)

	mi, err := c.readProc("meminfo")
	if err != nil {
		return t, err
	}
	mem, err := ParseMeminfo(mi)
	if err != nil {
		return t, fmt.Errorf("%s: %w", filepath.Join(c.roots.Proc, "meminfo"), err)
	}
	t.Resources.MemoryTotalBytes = mem.TotalBytes
	t.Resources.MemoryUsedBytes = mem.UsedBytes()

	up, err := c.readProc("uptime")
	if err != nil {
		return t, err
	}
	if t.UptimeSeconds, err = ParseUptime(up); err != nil {
		return t, fmt.Errorf("%s: %w", filepath.Join(c.roots.Proc, "uptime"), err)
	}

	du, err := c.statfs(c.diskPath)
	if err != nil {
		return t, fmt.Errorf("disk usage of %s: %w (set disk_path to a mounted filesystem)", c.diskPath, err)
	}
	if du.UsedBytes > du.TotalBytes {
		return t, fmt.Errorf("disk usage of %s: used %d bytes exceeds total %d", c.diskPath, du.UsedBytes, du.TotalBytes)
	}
	t.Resources.DiskTotalBytes, t.Resources.DiskUsedBytes = du.TotalBytes, du.UsedBytes

	var errs []error
	tempPath := filepath.Join(c.roots.Sys, "class", "thermal", "thermal_zone0", "temp")
	if b, err := readOptional(tempPath); err != nil {
		errs = append(errs, err)
	} else if b != nil {
		if v, err := ParseMilliCelsius(b); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", tempPath, err))
		} else {
			t.Resources.TemperatureC = &v
		}
	}

	hostPath := filepath.Join(c.roots.Proc, "sys", "kernel", "hostname")
	if b, err := readOptional(hostPath); err != nil {
		errs = append(errs, err)
	} else {
		t.Network.Hostname = strings.TrimSpace(string(b))
	}

	osPath := filepath.Join(c.roots.Etc, "os-release")
	if b, err := readOptional(osPath); err != nil {
		errs = append(errs, err)
	} else if b != nil {
		t.OSVersion = PrettyOSName(ParseOSRelease(b))
	}

	ifs, err := c.ifaces.Interfaces()
	if err != nil {
		errs = append(errs, fmt.Errorf("list network interfaces: %w", err))
	} else {
		t.Network.MAC, t.Network.IPs = Addresses(ifs)
	}
	if len(errs) > 0 {
		return t, errors.Join(errs...)
	}
	return t, nil
}

// cpuPercent measures against the previous sample; the first sample (or one
// after the counters went backwards) reports the average since boot, which is
// better than a made-up 0.
func (c *Collector) cpuPercent(cur CPUTimes) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := CPUTimes{}
	if c.havePrv {
		prev = c.prevCPU
	}
	c.prevCPU, c.havePrv = cur, true
	if pct, ok := CPUPercent(prev, cur); ok {
		return pct
	}
	if pct, ok := CPUPercent(CPUTimes{}, cur); ok {
		return pct
	}
	return 0
}

func (c *Collector) readProc(name string) ([]byte, error) {
	p := filepath.Join(c.roots.Proc, name)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w (is proc_root right?)", p, err)
	}
	return b, nil
}

// readOptional returns nil, nil when path does not exist.
func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// Addresses picks the robot's identity addresses from its interfaces: the MAC
// of the first non-loopback interface that has one, and every IP address of
// non-loopback interfaces (sorted, de-duplicated, loopback addresses left out).
func Addresses(ifs []Interface) (mac string, ips []string) {
	for _, ifc := range ifs {
		if ifc.Loopback {
			continue
		}
		if mac == "" && ifc.MAC != "" {
			mac = ifc.MAC
		}
		for _, a := range ifc.IPs {
			if a.IsLoopback() || !a.IsValid() {
				continue
			}
			ips = append(ips, a.String())
		}
	}
	slices.Sort(ips)
	return mac, slices.Compact(ips)
}
