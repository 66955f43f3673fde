package collect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The parsers below read bytes that come from disk (or, on a broken board,
// from a driver that prints garbage). They never panic, reject values that
// cannot be real, and are fuzzed (see parse_fuzz_test.go).

// CPUTimes is the aggregate "cpu" line of /proc/stat, reduced to what a
// utilisation percentage needs. Units are USER_HZ ticks since boot.
type CPUTimes struct {
	Idle  uint64 // idle + iowait: time the CPUs had nothing runnable
	Total uint64 // user + nice + system + idle + iowait + irq + softirq + steal
}

// ParseStat reads the aggregate cpu line of /proc/stat. guest and guest_nice
// are left out of Total because the kernel already counts them in user and
// nice.
func ParseStat(b []byte) (CPUTimes, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "cpu" {
			continue
		}
		vals := fields[1:]
		if len(vals) < 4 {
			return CPUTimes{}, fmt.Errorf("/proc/stat cpu line has %d counters, want at least 4 (user nice system idle)", len(vals))
		}
		vals = vals[:min(len(vals), 8)]
		var t CPUTimes
		for i, f := range vals {
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("/proc/stat cpu counter %d (%q) is not a number: %w", i+1, f, err)
			}
			if t.Total > math.MaxUint64-v {
				return CPUTimes{}, errors.New("/proc/stat cpu counters overflow 64 bits")
			}
			t.Total += v
			if i == 3 || i == 4 { // idle, iowait
				t.Idle += v
			}
		}
		return t, nil
	}
	if err := sc.Err(); err != nil {
		return CPUTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	return CPUTimes{}, errors.New("/proc/stat has no aggregate \"cpu\" line")
}

// CPUPercent is the busy share of the time between two samples, 0-100.
// ok is false when the samples cannot be compared (counters went backwards,
// as after a reboot under a reused state, or no time passed).
func CPUPercent(prev, cur CPUTimes) (pct float64, ok bool) {
	if cur.Total <= prev.Total || cur.Idle < prev.Idle {
		return 0, false
	}
	total := cur.Total - prev.Total
	idle := cur.Idle - prev.Idle
	if idle > total {
		return 0, false
	}
	return 100 * float64(total-idle) / float64(total), true
}

// Meminfo is what the agent reports from /proc/meminfo, in bytes.
type Meminfo struct {
	TotalBytes     uint64
	AvailableBytes uint64
}

// UsedBytes is memory that cannot be handed to a new program without
// swapping: total minus available (the same notion as free(1)'s "used").
func (m Meminfo) UsedBytes() uint64 { return m.TotalBytes - min(m.AvailableBytes, m.TotalBytes) }

// ParseMeminfo reads MemTotal and MemAvailable from /proc/meminfo. Kernels
// older than 3.14 lack MemAvailable; then MemFree + Buffers + Cached stands in.
func ParseMeminfo(b []byte) (Meminfo, error) {
	vals := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch key {
		case "MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached":
		default:
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 || len(fields) > 2 {
			return Meminfo{}, fmt.Errorf("/proc/meminfo %s value %q is not \"<number> kB\"", key, strings.TrimSpace(rest))
		}
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return Meminfo{}, fmt.Errorf("/proc/meminfo %s value %q is not a number: %w", key, fields[0], err)
		}
		if len(fields) == 2 {
			if fields[1] != "kB" {
				return Meminfo{}, fmt.Errorf("/proc/meminfo %s unit %q is not kB", key, fields[1])
			}
			if v > math.MaxUint64/1024 {
				return Meminfo{}, fmt.Errorf("/proc/meminfo %s value %d kB overflows 64 bits", key, v)
			}
			v *= 1024
		}
		vals[key] = v
	}
	if err := sc.Err(); err != nil {
		return Meminfo{}, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	total, ok := vals["MemTotal"]
	if !ok || total == 0 {
		return Meminfo{}, errors.New("/proc/meminfo has no positive MemTotal")
	}
	avail, ok := vals["MemAvailable"]
	if !ok {
		// Saturating sum: these come from disk and may be anything.
		avail = satAdd(satAdd(vals["MemFree"], vals["Buffers"]), vals["Cached"])
	}
	return Meminfo{TotalBytes: total, AvailableBytes: min(avail, total)}, nil
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// ParseUptime reads the first field of /proc/uptime: seconds since boot.
func ParseUptime(b []byte) (float64, error) {
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, errors.New("/proc/uptime is empty")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/uptime value %q is not a number: %w", fields[0], err)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0, fmt.Errorf("/proc/uptime value %q is not a non-negative finite number", fields[0])
	}
	return v, nil
}

// ParseMilliCelsius reads a thermal zone's temp file (millidegrees Celsius,
// e.g. "48750\n") and returns degrees Celsius. Values outside -100..200 °C
// are driver error sentinels, not temperatures, and are rejected.
func ParseMilliCelsius(b []byte) (float64, error) {
	s := strings.TrimSpace(string(b))
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("thermal zone temperature %q is not an integer of millidegrees: %w", s, err)
	}
	if v < -100_000 || v > 200_000 {
		return 0, fmt.Errorf("thermal zone temperature %d m°C is implausible (driver error value?)", v)
	}
	return float64(v) / 1000, nil
}

// CPUInfo holds the board identity lines of /proc/cpuinfo on a Raspberry Pi
// (the kernel prints them after the per-core blocks).
type CPUInfo struct {
	Serial   string // e.g. "3f2a9c1e5b7d8e01"
	Revision string // board revision code, e.g. "d04170" (Pi 5 8GB)
	Model    string // e.g. "Raspberry Pi 5 Model B Rev 1.0"
	Hardware string // SoC, when the kernel prints it (e.g. "BCM2835")
}

// ParseCPUInfo picks the board identity lines out of /proc/cpuinfo. Lines it
// does not know (per-core blocks, "CPU revision" and friends) are skipped;
// missing lines leave their field empty.
func ParseCPUInfo(b []byte) CPUInfo {
	var ci CPUInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch strings.TrimSpace(key) {
		case "Serial":
			ci.Serial = val
		case "Revision":
			ci.Revision = val
		case "Model":
			ci.Model = val
		case "Hardware":
			ci.Hardware = val
		}
	}
	return ci
}

// ParseOSRelease reads os-release(5): KEY=value lines, values optionally in
// single or double quotes with shell-style backslash escapes inside double
// quotes. Malformed lines are skipped, as the format's readers are told to.
func ParseOSRelease(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || key == "" || strings.ContainsAny(key, " \t\"'") {
			continue
		}
		v, ok := unquoteShell(val)
		if !ok {
			continue
		}
		out[key] = v
	}
	return out
}

func unquoteShell(v string) (string, bool) {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1], true
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		inner := v[1 : len(v)-1]
		var sb strings.Builder
		for i := 0; i < len(inner); i++ {
			c := inner[i]
			if c == '\\' && i+1 < len(inner) && strings.IndexByte("\\\"$`", inner[i+1]) >= 0 {
				i++
				c = inner[i]
			}
			sb.WriteByte(c)
		}
		return sb.String(), true
	}
	if strings.ContainsAny(v, "\"'") {
		return "", false
	}
	return v, true
}

// PrettyOSName is the human name os-release gives the OS: PRETTY_NAME, or
// NAME and VERSION when PRETTY_NAME is missing.
func PrettyOSName(osRelease map[string]string) string {
	if p := osRelease["PRETTY_NAME"]; p != "" {
		return p
	}
	return strings.TrimSpace(osRelease["NAME"] + " " + osRelease["VERSION"])
}
