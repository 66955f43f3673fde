package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/protocol"
)

// Board describes a simulated Raspberry Pi for its fixture /proc tree.
type Board struct {
	Serial     string
	Revision   string // revision code, e.g. d04170 (Pi 5, 4 GB)
	Model      string
	Hostname   string
	MemTotalKB uint64
	MemAvailKB uint64
	TempMilliC int // SoC temperature in millidegrees Celsius
	UptimeSecs float64
	CPUBusy    uint64 // jiffies spent busy since boot
	CPUIdle    uint64 // jiffies idle since boot
	OSPretty   string
}

// Pi5 returns a Raspberry Pi 5 (4 GB) board with serial derived from n.
func Pi5(n int, hostname string) Board {
	return Board{
		Serial:     fmt.Sprintf("%016x", 0x5e1a0000_0000_0000+uint64(n)),
		Revision:   "d04170",
		Model:      "Raspberry Pi 5 Model B Rev 1.0",
		Hostname:   hostname,
		MemTotalKB: 4_148_000,
		MemAvailKB: 3_200_000,
		TempMilliC: 48_300,
		UptimeSecs: 1000,
		CPUBusy:    10_000,
		CPUIdle:    90_000,
		OSPretty:   "Debian GNU/Linux 12 (bookworm)",
	}
}

// WriteTree writes the board as proc/, sys/ and etc/ trees under dir and
// returns the collector roots pointing at them. Calling it again with
// changed values rewrites the files (a board "aging").
func (b Board) WriteTree(dir string) (collect.Roots, error) {
	roots := collect.Roots{Proc: filepath.Join(dir, "proc"), Sys: filepath.Join(dir, "sys"), Etc: filepath.Join(dir, "etc")}
	files := b.TreeFiles()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return roots, fmt.Errorf("fixture %s: %w", p, err)
		}
		// Write via a temp file and rename so a concurrent reader never sees
		// a half-written file.
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			return roots, fmt.Errorf("fixture %s: %w", p, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return roots, fmt.Errorf("fixture %s: %w", p, err)
		}
	}
	return roots, nil
}

// Hardware is what collect.ReadHardware reads from the board's tree.
func (b Board) Hardware() protocol.Hardware {
	return collect.DecodeRevision(protocol.Hardware{Serial: b.Serial, Model: b.Model, Revision: b.Revision})
}

// TreeFiles are the board's fixture files by path under the tree.
func (b Board) TreeFiles() map[string]string {
	user, system := b.CPUBusy*3/4, b.CPUBusy/4
	return map[string]string{
		"proc/cpuinfo": fmt.Sprintf("processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\n"+
			"Revision\t: %s\nSerial\t\t: %s\nModel\t\t: %s\n", b.Revision, b.Serial, b.Model),
		"proc/meminfo": fmt.Sprintf("MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\nBuffers:           1234 kB\n",
			b.MemTotalKB, b.MemAvailKB/2, b.MemAvailKB),
		"proc/stat": fmt.Sprintf("cpu  %d 0 %d %d 0 0 0 0 0 0\ncpu0 %d 0 %d %d 0 0 0 0 0 0\nintr 0\nctxt 0\nbtime 1700000000\n",
			user, system, b.CPUIdle, user, system, b.CPUIdle),
		"proc/uptime":                          fmt.Sprintf("%.2f %.2f\n", b.UptimeSecs, b.UptimeSecs*3.5),
		"proc/sys/kernel/hostname":             b.Hostname + "\n",
		"proc/device-tree/model":               b.Model + "\x00",
		"proc/device-tree/serial-number":       b.Serial + "\x00",
		"sys/class/thermal/thermal_zone0/temp": fmt.Sprintf("%d\n", b.TempMilliC),
		"etc/os-release": fmt.Sprintf("PRETTY_NAME=%q\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
			b.OSPretty),
	}
}

// Hostname makes a robot hostname from an id.
func Hostname(id string) string { return strings.ReplaceAll(id, "_", "-") }
