package collect

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/lekiwi/heartbeat/protocol"
)

// ReadHardware identifies the board from the proc tree at procRoot. The
// device tree is preferred (it is what the firmware saw); /proc/cpuinfo is
// the fallback, and the only source of the revision code in text form. A
// field nobody provides stays empty: a laptop running the agent in a
// simulator has neither.
func ReadHardware(procRoot string) (protocol.Hardware, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	var hw protocol.Hardware
	dt := filepath.Join(procRoot, "device-tree")

	serial, err := readOptional(filepath.Join(dt, "serial-number"))
	if err != nil {
		return hw, err
	}
	hw.Serial = dtString(serial)
	model, err := readOptional(filepath.Join(dt, "model"))
	if err != nil {
		return hw, err
	}
	hw.Model = dtString(model)

	cpuinfo, err := readOptional(filepath.Join(procRoot, "cpuinfo"))
	if err != nil {
		return hw, err
	}
	ci := ParseCPUInfo(cpuinfo)
	if hw.Serial == "" {
		hw.Serial = ci.Serial
	}
	if hw.Model == "" {
		hw.Model = ci.Model
	}
	hw.Revision = ci.Revision
	if hw.Revision == "" {
		rev, err := readOptional(filepath.Join(dt, "system", "linux,revision"))
		if err != nil {
			return hw, err
		}
		if len(rev) == 4 {
			hw.Revision = fmt.Sprintf("%x", binary.BigEndian.Uint32(rev))
		}
	}
	return hw, nil
}

// dtString turns a device-tree string property (NUL-terminated) into text.
func dtString(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\x00")
	return strings.TrimSpace(s)
}
