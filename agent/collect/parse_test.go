package collect

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    CPUTimes
		wantErr string
	}{
		{name: "modern kernel", in: "cpu  10 1 5 100 4 0 2 3 7 7\ncpu0 1 1 1 1\n", want: CPUTimes{Idle: 104, Total: 125}},
		{name: "pre-2.6 four counters", in: "cpu 1 2 3 4\n", want: CPUTimes{Idle: 4, Total: 10}},
		{name: "cpu line after others", in: "intr 1\ncpu 1 1 1 1 1\n", want: CPUTimes{Idle: 2, Total: 5}},
		{name: "per-cpu lines only", in: "cpu0 1 2 3 4\n", wantErr: "no aggregate"},
		{name: "empty", in: "", wantErr: "no aggregate"},
		{name: "too few", in: "cpu 1 2 3\n", wantErr: "at least 4"},
		{name: "not a number", in: "cpu 1 x 3 4\n", wantErr: `counter 2 ("x")`},
		{name: "negative", in: "cpu 1 -2 3 4\n", wantErr: "not a number"},
		{name: "overflow", in: "cpu 18446744073709551615 1 0 0\n", wantErr: "overflow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tt.in))
			checkParse(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestCPUPercent(t *testing.T) {
	tests := []struct {
		name      string
		prev, cur CPUTimes
		want      float64
		ok        bool
	}{
		{name: "half busy", prev: CPUTimes{Idle: 100, Total: 200}, cur: CPUTimes{Idle: 150, Total: 300}, want: 50, ok: true},
		{name: "idle", prev: CPUTimes{Idle: 100, Total: 200}, cur: CPUTimes{Idle: 200, Total: 300}, want: 0, ok: true},
		{name: "saturated", prev: CPUTimes{Idle: 100, Total: 200}, cur: CPUTimes{Idle: 100, Total: 300}, want: 100, ok: true},
		{name: "no time passed", prev: CPUTimes{Idle: 1, Total: 2}, cur: CPUTimes{Idle: 1, Total: 2}},
		{name: "counters reset", prev: CPUTimes{Idle: 100, Total: 200}, cur: CPUTimes{Idle: 10, Total: 20}},
		{name: "idle grew more than total", prev: CPUTimes{Idle: 0, Total: 10}, cur: CPUTimes{Idle: 20, Total: 15}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := CPUPercent(tt.prev, tt.cur)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("CPUPercent = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Meminfo
		wantErr string
	}{
		{name: "available", in: "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\n", want: Meminfo{TotalBytes: 1024000, AvailableBytes: 614400}},
		{name: "old kernel fallback", in: "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n", want: Meminfo{TotalBytes: 1024000, AvailableBytes: 409600}},
		{name: "available above total is clamped", in: "MemTotal: 10 kB\nMemAvailable: 20 kB\n", want: Meminfo{TotalBytes: 10240, AvailableBytes: 10240}},
		{name: "unitless lines ignored", in: "HugePages_Total: 0\nMemTotal: 4 kB\nMemAvailable: 1 kB\n", want: Meminfo{TotalBytes: 4096, AvailableBytes: 1024}},
		{name: "no total", in: "MemFree: 1 kB\n", wantErr: "MemTotal"},
		{name: "zero total", in: "MemTotal: 0 kB\n", wantErr: "MemTotal"},
		{name: "bad number", in: "MemTotal: 1x kB\n", wantErr: "not a number"},
		{name: "bad unit", in: "MemTotal: 1 MB\n", wantErr: "unit"},
		{name: "overflow", in: "MemTotal: 18446744073709551615 kB\n", wantErr: "overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMeminfo([]byte(tt.in))
			checkParse(t, got, err, tt.want, tt.wantErr)
		})
	}
	if used := (Meminfo{TotalBytes: 10, AvailableBytes: 4}).UsedBytes(); used != 6 {
		t.Fatalf("UsedBytes = %d, want 6", used)
	}
}

func TestParseUptime(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr string
	}{
		{in: "350735.47 234388.90\n", want: 350735.47},
		{in: "0.00 0.00", want: 0},
		{in: "", wantErr: "empty"},
		{in: "abc 1", wantErr: "not a number"},
		{in: "-1 0", wantErr: "non-negative"},
		{in: "NaN 0", wantErr: "finite"},
		{in: "+Inf 0", wantErr: "finite"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseUptime([]byte(tt.in))
			checkParse(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParseMilliCelsius(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr string
	}{
		{in: "48750\n", want: 48.75},
		{in: "-5000", want: -5},
		{in: "0", want: 0},
		{in: "48.7", wantErr: "not an integer"},
		{in: "", wantErr: "not an integer"},
		{in: "-2147483647", wantErr: "implausible"},
		{in: "250000", wantErr: "implausible"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMilliCelsius([]byte(tt.in))
			checkParse(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParseCPUInfo(t *testing.T) {
	in := "processor\t: 0\nCPU revision\t: 1\n\nHardware\t: BCM2835\nRevision\t: c04170\nSerial\t\t: 00000000abcdef01\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
	want := CPUInfo{Serial: "00000000abcdef01", Revision: "c04170", Model: "Raspberry Pi 5 Model B Rev 1.0", Hardware: "BCM2835"}
	if got := ParseCPUInfo([]byte(in)); got != want {
		t.Fatalf("ParseCPUInfo = %+v, want %+v", got, want)
	}
	if got := ParseCPUInfo([]byte("processor : 0\nvendor_id : GenuineIntel\n")); got != (CPUInfo{}) {
		t.Fatalf("ParseCPUInfo on x86 = %+v, want empty", got)
	}
}

func TestParseOSRelease(t *testing.T) {
	in := `# comment
PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"
NAME='Raspbian'
ID=raspbian
ESCAPED="say \"hi\" \$HOME \\ \n"
BROKEN="unterminated
bad key=1
=novalue
`
	want := map[string]string{
		"PRETTY_NAME": "Raspbian GNU/Linux 12 (bookworm)",
		"NAME":        "Raspbian",
		"ID":          "raspbian",
		"ESCAPED":     `say "hi" $HOME \ \n`,
	}
	if got := ParseOSRelease([]byte(in)); !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseOSRelease = %q, want %q", got, want)
	}
	if got := PrettyOSName(map[string]string{"NAME": "Alpine"}); got != "Alpine" {
		t.Fatalf("PrettyOSName fallback = %q, want Alpine", got)
	}
}

func checkParse[T comparable](t *testing.T, got T, err error, want T, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("got %+v, %v; want error containing %q", got, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
}
