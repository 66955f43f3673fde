package collect

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets feed arbitrary bytes to the parsers of files read from
// disk. Besides "does not panic" each checks what a caller relies on. The
// kept corpus lives in testdata/fuzz/<target>/; run one with e.g.
//
//	go test ./agent/collect -run '^$' -fuzz '^FuzzParseStat$' -fuzztime 30s

func addFixtures(f *testing.F, names ...string) {
	for _, tree := range []string{"testdata/pi5", "testdata/vm"} {
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(tree, n)); err == nil {
				f.Add(b)
			}
		}
	}
}

func FuzzParseStat(f *testing.F) {
	addFixtures(f, "proc/stat")
	f.Fuzz(func(t *testing.T, b []byte) {
		ct, err := ParseStat(b)
		if err != nil {
			return
		}
		if ct.Idle > ct.Total {
			t.Fatalf("idle %d > total %d", ct.Idle, ct.Total)
		}
		if pct, ok := CPUPercent(CPUTimes{}, ct); ok && (pct < 0 || pct > 100 || math.IsNaN(pct)) {
			t.Fatalf("CPU percent %v outside 0-100", pct)
		}
	})
}

func FuzzParseMeminfo(f *testing.F) {
	addFixtures(f, "proc/meminfo")
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeminfo(b)
		if err != nil {
			return
		}
		if m.TotalBytes == 0 || m.AvailableBytes > m.TotalBytes || m.UsedBytes() > m.TotalBytes {
			t.Fatalf("inconsistent meminfo %+v (used %d)", m, m.UsedBytes())
		}
	})
}

func FuzzParseUptime(f *testing.F) {
	addFixtures(f, "proc/uptime")
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseUptime(b)
		if err == nil && (v < 0 || math.IsNaN(v) || math.IsInf(v, 0)) {
			t.Fatalf("uptime %v accepted", v)
		}
	})
}

func FuzzParseMilliCelsius(f *testing.F) {
	addFixtures(f, "sys/class/thermal/thermal_zone0/temp")
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseMilliCelsius(b)
		if err == nil && (v < -100 || v > 200) {
			t.Fatalf("temperature %v accepted", v)
		}
	})
}

func FuzzParseCPUInfo(f *testing.F) {
	addFixtures(f, "proc/cpuinfo")
	f.Fuzz(func(t *testing.T, b []byte) {
		ci := ParseCPUInfo(b)
		for _, v := range []string{ci.Serial, ci.Revision, ci.Model, ci.Hardware} {
			if strings.ContainsAny(v, "\n") || v != strings.TrimSpace(v) {
				t.Fatalf("field %q is not one trimmed line", v)
			}
		}
	})
}

func FuzzParseOSRelease(f *testing.F) {
	addFixtures(f, "etc/os-release")
	f.Fuzz(func(t *testing.T, b []byte) {
		for k, v := range ParseOSRelease(b) {
			if k == "" || strings.ContainsAny(k, "=\n") || strings.Contains(v, "\n") {
				t.Fatalf("bad pair %q=%q", k, v)
			}
		}
	})
}
