package raspberrypi

import (
	"fmt"
	"strconv"
	"strings"
)

// Serial is the 32-bit board serial number the bootloader uses as its TFTP
// directory prefix. Boards with a 64-bit serial in /proc/cpuinfo (e.g.
// "10000000abcd1234" or "00000000765fc593") use only the low 32 bits for the
// prefix, which is what this type holds.
type Serial uint32

// String is the TFTP prefix form: exactly 8 lowercase hex digits
// ("0badcafe", never "badcafe"), as the bootloader requests "<serial>/config.txt".
func (s Serial) String() string { return fmt.Sprintf("%08x", uint32(s)) }

// ParseSerial accepts the forms a technician or a Pi reports: 8 hex digits
// (the TFTP prefix), or 16 hex digits as /proc/cpuinfo prints them, of which
// the low 32 bits are the prefix. An optional "0x" prefix and surrounding
// space are tolerated; case does not matter.
func ParseSerial(s string) (Serial, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimPrefix(strings.TrimPrefix(t, "0x"), "0X")
	switch len(t) {
	case 8:
	case 16:
		t = t[8:]
	default:
		return 0, fmt.Errorf("pi: serial %q: want 8 or 16 hex digits (the TFTP prefix or the /proc/cpuinfo Serial)", s)
	}
	v, err := strconv.ParseUint(t, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("pi: serial %q is not hexadecimal: %w", s, err)
	}
	return Serial(v), nil
}
