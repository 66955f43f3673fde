package raspberrypi

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Revision is a board revision code as /proc/cpuinfo "Revision" and the Pi 4/5
// option 97 report it.
//
// New-style codes (bit 23 set) are bit fields, per raspberrypi/documentation
// "Raspberry Pi revision codes":
//
//	NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR
//	N 31 overvoltage disallowed   O 30 OTP program disallowed
//	Q 29 OTP read disallowed      W 25 warranty voided
//	F 23 new-style flag           MMM 22-20 memory size
//	CCCC 19-16 manufacturer       PPPP 15-12 processor
//	TTTTTTTT 11-4 type            RRRR 3-0 PCB revision (1.R)
//
// Old-style codes are the sequential 0002..0015 of the first boards; bit 24
// may be set on them when the warranty bit was blown (e.g. 1000002).
type Revision uint32

// ErrUnknownRevision is wrapped by Decode when a field has no known meaning
// (a board newer than this table, or a corrupted code).
var ErrUnknownRevision = errors.New("unknown revision code")

// ParseRevision parses the hex form /proc/cpuinfo prints ("a03111",
// "0xd04170", "1000002").
func ParseRevision(s string) (Revision, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimPrefix(strings.TrimPrefix(t, "0x"), "0X")
	if t == "" || len(t) > 8 {
		return 0, fmt.Errorf("pi: revision %q: want 1 to 8 hex digits as in /proc/cpuinfo", s)
	}
	v, err := strconv.ParseUint(t, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("pi: revision %q is not hexadecimal: %w", s, err)
	}
	return Revision(v), nil
}

// NewStyle reports whether the code uses the bit-field layout.
func (r Revision) NewStyle() bool { return r&(1<<23) != 0 }

// String prints the code as /proc/cpuinfo does (lowercase hex, at least 4 digits).
func (r Revision) String() string { return fmt.Sprintf("%04x", uint32(r)) }

// Board is what a revision code says about the hardware.
type Board struct {
	Revision Revision
	// Model is the short model name used by Raspberry Pi: "3B", "3B+", "4B",
	// "400", "CM4", "5", "500", "CM5", "CM5 Lite", … ("" when unknown).
	Model string
	// MemoryMB is the RAM size (the smaller size when a code covers two).
	MemoryMB int
	// Manufacturer is the factory that built the board.
	Manufacturer string
	// Processor is the SoC: BCM2835, BCM2836, BCM2837, BCM2711, BCM2712.
	Processor string
	// PCBRevision is the board revision, e.g. "1.4".
	PCBRevision string
}

// Generation is the boot-protocol family of the board: 5 for BCM2712 boards
// (Pi 5, 500, CM5), 4 for BCM2711 (Pi 4, 400, CM4), 3 for BCM2837, 2 for
// BCM2836, 1 for BCM2835, 0 when the processor is unknown. The station picks
// boot files by it (start4.elf for 4, none for 5: its firmware is in EEPROM).
func (b Board) Generation() int {
	switch b.Processor {
	case "BCM2712":
		return 5
	case "BCM2711":
		return 4
	case "BCM2837":
		return 3
	case "BCM2836":
		return 2
	case "BCM2835":
		return 1
	}
	return 0
}

// Name is a human-readable board name, e.g. "Raspberry Pi 4B 8GB".
func (b Board) Name() string {
	model := b.Model
	if model == "" {
		model = "unknown model (revision " + b.Revision.String() + ")"
	}
	if b.MemoryMB >= 1024 {
		return fmt.Sprintf("Raspberry Pi %s %dGB", model, b.MemoryMB/1024)
	}
	if b.MemoryMB > 0 {
		return fmt.Sprintf("Raspberry Pi %s %dMB", model, b.MemoryMB)
	}
	return "Raspberry Pi " + model
}

func newStyleType(t uint32) string {
	switch t {
	case 0x00:
		return "A"
	case 0x01:
		return "B"
	case 0x02:
		return "A+"
	case 0x03:
		return "B+"
	case 0x04:
		return "2B"
	case 0x05:
		return "Alpha"
	case 0x06:
		return "CM1"
	case 0x08:
		return "3B"
	case 0x09:
		return "Zero"
	case 0x0a:
		return "CM3"
	case 0x0c:
		return "Zero W"
	case 0x0d:
		return "3B+"
	case 0x0e:
		return "3A+"
	case 0x10:
		return "CM3+"
	case 0x11:
		return "4B"
	case 0x12:
		return "Zero 2 W"
	case 0x13:
		return "400"
	case 0x14:
		return "CM4"
	case 0x15:
		return "CM4S"
	case 0x17:
		return "5"
	case 0x18:
		return "CM5"
	case 0x19:
		return "500"
	case 0x1a:
		return "CM5 Lite"
	}
	return ""
}

func newStyleManufacturer(c uint32) string {
	switch c {
	case 0:
		return "Sony UK"
	case 1:
		return "Egoman"
	case 2, 4:
		return "Embest"
	case 3:
		return "Sony Japan"
	case 5:
		return "Stadium"
	}
	return ""
}

func newStyleProcessor(p uint32) string {
	switch p {
	case 0:
		return "BCM2835"
	case 1:
		return "BCM2836"
	case 2:
		return "BCM2837"
	case 3:
		return "BCM2711"
	case 4:
		return "BCM2712"
	}
	return ""
}

// oldStyle is the table of the sequential codes; all are BCM2835.
func oldStyle(code uint32) (model string, memMB int, maker, pcb string, ok bool) {
	switch code {
	case 0x02, 0x03:
		return "B", 256, "Egoman", "1.0", true
	case 0x04:
		return "B", 256, "Sony UK", "2.0", true
	case 0x05:
		return "B", 256, "Qisda", "2.0", true
	case 0x06:
		return "B", 256, "Egoman", "2.0", true
	case 0x07:
		return "A", 256, "Egoman", "2.0", true
	case 0x08:
		return "A", 256, "Sony UK", "2.0", true
	case 0x09:
		return "A", 256, "Qisda", "2.0", true
	case 0x0d, 0x0f:
		return "B", 512, "Egoman", "2.0", true
	case 0x0e:
		return "B", 512, "Sony UK", "2.0", true
	case 0x10:
		return "B+", 512, "Sony UK", "1.0", true
	case 0x11:
		return "CM1", 512, "Sony UK", "1.0", true
	case 0x12:
		return "A+", 256, "Sony UK", "1.1", true
	case 0x13:
		return "B+", 512, "Embest", "1.2", true
	case 0x14:
		return "CM1", 512, "Embest", "1.0", true
	case 0x15:
		return "A+", 256, "Embest", "1.1", true
	}
	return "", 0, "", "", false
}

// Decode explains the revision code. When a field is unknown the Board still
// carries every field that is known, and the error wraps ErrUnknownRevision
// naming the field, so hardware detection can report a new board instead of
// failing blindly.
func (r Revision) Decode() (Board, error) {
	b := Board{Revision: r}
	v := uint32(r)
	if !r.NewStyle() {
		model, mem, maker, pcb, ok := oldStyle(v &^ (1 << 24))
		if !ok {
			return b, fmt.Errorf("pi: revision %s is neither new-style (bit 23) nor an old-style code 0002-0015: %w", r, ErrUnknownRevision)
		}
		b.Model, b.MemoryMB, b.Manufacturer, b.Processor, b.PCBRevision = model, mem, maker, "BCM2835", pcb
		return b, nil
	}
	var unknown []string
	mem := (v >> 20) & 0x7
	if mem <= 6 {
		b.MemoryMB = 256 << mem // 0=256MB … 6=16GB
	} else {
		unknown = append(unknown, fmt.Sprintf("memory size %d", mem))
	}
	if b.Manufacturer = newStyleManufacturer((v >> 16) & 0xf); b.Manufacturer == "" {
		unknown = append(unknown, fmt.Sprintf("manufacturer %d", (v>>16)&0xf))
	}
	if b.Processor = newStyleProcessor((v >> 12) & 0xf); b.Processor == "" {
		unknown = append(unknown, fmt.Sprintf("processor %d", (v>>12)&0xf))
	}
	if b.Model = newStyleType((v >> 4) & 0xff); b.Model == "" {
		unknown = append(unknown, fmt.Sprintf("type 0x%02x", (v>>4)&0xff))
	}
	b.PCBRevision = fmt.Sprintf("1.%d", v&0xf)
	if len(unknown) > 0 {
		return b, fmt.Errorf("pi: revision %s has %s: %w", r, strings.Join(unknown, ", "), ErrUnknownRevision)
	}
	return b, nil
}
