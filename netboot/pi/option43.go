package pi

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Option 43 carries PXE vendor sub-options (PXE specification 2.1, table
// 2-1) when option 60 is "PXEClient". The Pi bootloaders look for a boot
// menu entry whose description is "Raspberry Pi Boot". We send exactly what
// dnsmasq sends for `pxe-service=0,"Raspberry Pi Boot"`, the configuration
// Raspberry Pi documents and every Pi bootloader is tested against:
//
//	06 01 03              PXE_DISCOVERY_CONTROL = 3 (no broadcast/multicast discovery)
//	0a 04 00 'P' 'X' 'E'  PXE_MENU_PROMPT: timeout 0, prompt "PXE"
//	09 n  00 00 len desc  PXE_BOOT_MENU: one item, type 0, description
//	ff                    end
//
// The Pi 3B boot ROM compares a fixed 20 bytes, so it only accepts the
// description with three trailing spaces, "Raspberry Pi Boot   "; Pi 4/5
// EEPROM bootloaders do a substring match and accept both.

// Sub-option codes used in option 43.
const (
	PXEDiscoveryControl = 6
	PXEBootServers      = 8
	PXEBootMenu         = 9
	PXEMenuPrompt       = 10
	PXEBootItem         = 71
)

// Boot menu descriptions the bootloaders match.
const (
	BootMenu    = "Raspberry Pi Boot"
	BootMenuPi3 = "Raspberry Pi Boot   "
)

// BuildOption43 returns the option 43 payload announcing one boot menu item
// with the given description (normally BootMenu or BootMenuPi3).
func BuildOption43(description string) ([]byte, error) {
	item := 2 + 1 + len(description)
	if item > 255 {
		return nil, fmt.Errorf("pi: PXE boot menu description is %d bytes, at most 252 fit in a sub-option", len(description))
	}
	b := make([]byte, 0, 3+6+2+item+1)
	b = append(b, PXEDiscoveryControl, 1, 3)
	b = append(b, PXEMenuPrompt, 4, 0, 'P', 'X', 'E')
	b = append(b, PXEBootMenu, byte(item), 0, 0, byte(len(description)))
	b = append(b, description...)
	return append(b, 0xff), nil
}

// MenuItem is one PXE_BOOT_MENU entry.
type MenuItem struct {
	Type        uint16
	Description string
}

// SubOption is a sub-option this package does not interpret.
type SubOption struct {
	Code uint8
	Data []byte
}

// PXEOptions is a decoded option 43.
type PXEOptions struct {
	DiscoveryControl    uint8
	HasDiscoveryControl bool
	Menu                []MenuItem
	PromptTimeout       uint8
	Prompt              string
	HasPrompt           bool
	Other               []SubOption
}

// HasPiBoot reports whether a boot menu item would satisfy a Pi bootloader
// (its description contains "Raspberry Pi Boot").
func (o PXEOptions) HasPiBoot() bool {
	for _, m := range o.Menu {
		if bytes.Contains([]byte(m.Description), []byte(BootMenu)) {
			return true
		}
	}
	return false
}

// ParseOption43 decodes PXE vendor sub-options. It is strict about lengths
// (a sub-option running past the end is an error) and stops at 0xff; pad
// bytes (0) are skipped.
func ParseOption43(b []byte) (PXEOptions, error) {
	var o PXEOptions
	for i := 0; i < len(b); {
		code := b[i]
		if code == 0 {
			i++
			continue
		}
		if code == 0xff {
			return o, nil
		}
		if i+1 >= len(b) {
			return o, fmt.Errorf("pi: option 43 sub-option %d at offset %d has no length byte", code, i)
		}
		n := int(b[i+1])
		data := b[i+2:]
		if n > len(data) {
			return o, fmt.Errorf("pi: option 43 sub-option %d at offset %d claims %d bytes, %d remain", code, i, n, len(data))
		}
		data = data[:n]
		i += 2 + n
		switch code {
		case PXEDiscoveryControl:
			if n != 1 {
				return o, fmt.Errorf("pi: option 43 PXE_DISCOVERY_CONTROL is %d bytes, want 1", n)
			}
			o.DiscoveryControl, o.HasDiscoveryControl = data[0], true
		case PXEMenuPrompt:
			if n < 1 {
				return o, fmt.Errorf("pi: option 43 PXE_MENU_PROMPT is empty, want a timeout byte")
			}
			o.PromptTimeout, o.Prompt, o.HasPrompt = data[0], string(data[1:]), true
		case PXEBootMenu:
			for j := 0; j < len(data); {
				if len(data)-j < 3 {
					return o, fmt.Errorf("pi: option 43 PXE_BOOT_MENU item at %d is truncated (%d bytes)", j, len(data)-j)
				}
				typ := binary.BigEndian.Uint16(data[j:])
				dl := int(data[j+2])
				if j+3+dl > len(data) {
					return o, fmt.Errorf("pi: option 43 PXE_BOOT_MENU item at %d claims a %d-byte description, %d remain", j, dl, len(data)-j-3)
				}
				o.Menu = append(o.Menu, MenuItem{Type: typ, Description: string(data[j+3 : j+3+dl])})
				j += 3 + dl
			}
		default:
			o.Other = append(o.Other, SubOption{Code: code, Data: append([]byte(nil), data...)})
		}
	}
	return o, nil
}
