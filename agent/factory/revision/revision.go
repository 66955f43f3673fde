// Package revision decodes Raspberry Pi board revision codes (the
// "Revision" line of /proc/cpuinfo, /proc/device-tree/system/linux,revision,
// and the board revision in the bootloader's DHCP option 97) into model,
// memory, manufacturer and processor, following Raspberry Pi's
// documentation ("Raspberry Pi revision codes").
//
// New-style codes (bit 23 set) are bit fields:
//
//	NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR
//	N overvoltage, O OTP program, Q OTP read, W warranty void, F new style,
//	M memory, C manufacturer, P processor, T type, R revision
//
// Old-style codes 0002-0015 (Pi 1) are a table.
package revision

import (
	"fmt"
	"strconv"
	"strings"
)

// Board is what a revision code says about a board.
type Board struct {
	Code         uint32
	Model        string // "Raspberry Pi 5 Model B" … as the type table names it
	Type         string // short type name: "5", "4B", "CM5", "3B+"
	Revision     string // board revision, such as "1.0"
	MemoryMB     int
	Manufacturer string
	Processor    string
	// WarrantyVoid is set when the board has been overclocked or
	// over-volted in a way that voids the warranty.
	WarrantyVoid bool
}

var memoryMB = []int{256, 512, 1024, 2048, 4096, 8192, 16384}

var manufacturers = []string{"Sony UK", "Egoman", "Embest", "Sony Japan", "Embest", "Stadium"}

var processors = []string{"BCM2835", "BCM2836", "BCM2837", "BCM2711", "BCM2712"}

// types maps the TTTTTTTT field to the short type name; names elsewhere
// ("internal use only" 0x0f and 0x16, unassigned 0x07 and 0x0b) are unknown.
var types = map[uint32]string{
	0x00: "A", 0x01: "B", 0x02: "A+", 0x03: "B+", 0x04: "2B", 0x05: "Alpha",
	0x06: "CM1", 0x08: "3B", 0x09: "Zero", 0x0a: "CM3", 0x0c: "Zero W",
	0x0d: "3B+", 0x0e: "3A+", 0x10: "CM3+", 0x11: "4B", 0x12: "Zero 2 W",
	0x13: "400", 0x14: "CM4", 0x15: "CM4S", 0x17: "5", 0x18: "CM5",
	0x19: "500", 0x1a: "CM5 Lite",
}

type oldBoard struct {
	typ, rev     string
	memMB        int
	manufacturer string
}

// old are the Pi 1 codes, all BCM2835. 0015 shipped with 256 MB or 512 MB;
// the code cannot tell, so the smaller is reported.
var old = map[uint32]oldBoard{
	0x02: {"B", "1.0", 256, "Egoman"}, 0x03: {"B", "1.0", 256, "Egoman"},
	0x04: {"B", "2.0", 256, "Sony UK"}, 0x05: {"B", "2.0", 256, "Qisda"},
	0x06: {"B", "2.0", 256, "Egoman"}, 0x07: {"A", "2.0", 256, "Egoman"},
	0x08: {"A", "2.0", 256, "Sony UK"}, 0x09: {"A", "2.0", 256, "Qisda"},
	0x0d: {"B", "2.0", 512, "Egoman"}, 0x0e: {"B", "2.0", 512, "Sony UK"},
	0x0f: {"B", "2.0", 512, "Egoman"}, 0x10: {"B+", "1.2", 512, "Sony UK"},
	0x11: {"CM1", "1.0", 512, "Sony UK"}, 0x12: {"A+", "1.1", 256, "Sony UK"},
	0x13: {"B+", "1.2", 512, "Embest"}, 0x14: {"CM1", "1.0", 512, "Embest"},
	0x15: {"A+", "1.1", 256, "Embest"},
}

// modelName spells a type the way the firmware's device-tree model does.
func modelName(typ string) string {
	switch typ {
	case "A", "B", "A+", "B+":
		return "Raspberry Pi Model " + typ
	case "2B", "3B", "3B+", "3A+", "4B":
		return "Raspberry Pi " + typ[:1] + " Model " + typ[1:]
	case "5":
		return "Raspberry Pi 5 Model B"
	case "CM1":
		return "Raspberry Pi Compute Module"
	case "400", "500":
		return "Raspberry Pi " + typ
	}
	if rest, ok := strings.CutPrefix(typ, "CM"); ok {
		return "Raspberry Pi Compute Module " + rest
	}
	return "Raspberry Pi " + typ
}

// Parse decodes a revision code written in hex, as /proc/cpuinfo shows it
// ("d04170", "0x00c03112", "1000002").
func Parse(s string) (Board, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	v, err := strconv.ParseUint(t, 16, 32)
	if err != nil || t == "" {
		return Board{}, fmt.Errorf("revision code %q: want up to 8 hex digits, such as d04170", s)
	}
	return Decode(uint32(v))
}

// Decode decodes a revision code.
func Decode(code uint32) (Board, error) {
	if code&(1<<23) == 0 {
		// Old style: bit 24 is the warranty bit, the low bits index the table.
		o, ok := old[code&0xFFFFFF]
		if !ok {
			return Board{Code: code}, fmt.Errorf("revision code %06x: unknown old-style code (known: 0002-0015)", code)
		}
		return Board{Code: code, Model: modelName(o.typ), Type: o.typ, Revision: o.rev, MemoryMB: o.memMB,
			Manufacturer: o.manufacturer, Processor: "BCM2835", WarrantyVoid: code&(1<<24) != 0}, nil
	}
	b := Board{
		Code:         code,
		Revision:     fmt.Sprintf("1.%d", code&0xF),
		WarrantyVoid: code&(1<<25) != 0,
	}
	var unknown []string
	typ, mem, mfr, proc := code>>4&0xFF, code>>20&0x7, code>>16&0xF, code>>12&0xF
	if name, ok := types[typ]; ok {
		b.Type, b.Model = name, modelName(name)
	} else {
		unknown = append(unknown, fmt.Sprintf("type 0x%02x", typ))
	}
	if int(mem) < len(memoryMB) {
		b.MemoryMB = memoryMB[mem]
	} else {
		unknown = append(unknown, fmt.Sprintf("memory %d", mem))
	}
	if int(mfr) < len(manufacturers) {
		b.Manufacturer = manufacturers[mfr]
	} else {
		unknown = append(unknown, fmt.Sprintf("manufacturer %d", mfr))
	}
	if int(proc) < len(processors) {
		b.Processor = processors[proc]
	} else {
		unknown = append(unknown, fmt.Sprintf("processor %d", proc))
	}
	if len(unknown) > 0 {
		return b, fmt.Errorf("revision code %06x: unknown %s (a board newer than this table? the known fields are filled in)", code, strings.Join(unknown, ", "))
	}
	return b, nil
}

// Memory formats MemoryMB as people write it: "512MB", "8GB".
func (b Board) Memory() string {
	if b.MemoryMB >= 1024 && b.MemoryMB%1024 == 0 {
		return fmt.Sprintf("%dGB", b.MemoryMB/1024)
	}
	return fmt.Sprintf("%dMB", b.MemoryMB)
}
