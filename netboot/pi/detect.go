package pi

import (
	"bytes"
	"net"
	"strings"

	"github.com/lekiwi/heartbeat/raspberrypi"
)

// VendorClass is option 60 as every Pi bootloader sends it (3B ROM, Pi 4/5
// EEPROM). Arch 00000 is "x86 BIOS" (RFC 4578), and legacy PC PXE ROMs send
// the very same string, which is why a matching vendor class alone does not
// make a client a Pi (see Identify).
const VendorClass = "PXEClient:Arch:00000:UNDI:002001"

// IsPXEClient reports whether option 60 marks a PXE boot ROM (any arch).
func IsPXEClient(vendorClass string) bool { return strings.HasPrefix(vendorClass, "PXEClient") }

// Signals records which Pi evidence a client showed.
type Signals struct {
	VendorClass bool // option 60 is exactly VendorClass
	GUID        bool // option 97 has a Pi layout
	OUI         bool // MAC has a Raspberry Pi OUI
}

// Client is what a DHCP packet says about the machine that sent it.
type Client struct {
	MAC     net.HardwareAddr
	IsPi    bool
	Signals Signals
	// GUID is the decoded option 97; nil when absent or malformed.
	GUID *ClientGUID
	// Serial and Revision come from the GUID; zero when it does not carry them.
	Serial    raspberrypi.Serial
	HasSerial bool
	Revision  raspberrypi.Revision
	// Board is the decoded Revision; nil when there is no revision or it
	// does not decode.
	Board *raspberrypi.Board
	// Pi3 marks a client that needs BootMenuPi3 (the Pi 3 boot ROM GUID, or
	// a B8:27:EB MAC without a Pi 4/5 GUID).
	Pi3 bool
}

// BootMenu returns the option 43 menu description this client needs.
func (c Client) BootMenu() string {
	if c.Pi3 {
		return BootMenuPi3
	}
	return BootMenu
}

// Identify decides whether a DHCP client is a Raspberry Pi from its hardware
// address (chaddr), option 60 and the raw option 97 payload (nil if absent).
//
// A client is a Pi when its option 97 has a Pi layout (FourCC, repeated
// serial, Pi 3 ROM, or a custom prefix whose MAC bytes match chaddr and whose
// revision decodes) or its MAC has a Raspberry Pi OUI. The vendor class is
// recorded but is not enough on its own: x86 BIOS PXE ROMs send the same
// string, and answering them would hijack PCs on the factory network.
func Identify(mac net.HardwareAddr, vendorClass string, opt97 []byte) Client {
	c := Client{MAC: append(net.HardwareAddr(nil), mac...)}
	c.Signals.VendorClass = vendorClass == VendorClass
	c.Signals.OUI = raspberrypi.HasOUI(mac)
	if opt97 != nil {
		if g, err := ParseClientGUID(opt97); err == nil {
			c.GUID = &g
			switch g.Format {
			case GUIDFourCC:
				c.Signals.GUID = true
				c.Revision, c.Serial, c.HasSerial = g.Revision, g.Serial, true
			case GUIDSerialRepeated:
				c.Signals.GUID = true
				c.Serial, c.HasSerial = g.Serial, true
			case GUIDPi3ROM:
				c.Signals.GUID = true
				c.Pi3 = true
			case GUIDOpaque:
				// A Pi 4/5 with DHCP_OPTION97 set to a custom prefix keeps
				// the layout: trust it only when the MAC bytes agree and the
				// revision is a board we know.
				if len(mac) == 6 && bytes.Equal(g.MACLow[:], mac[2:6]) {
					if _, err := g.Revision.Decode(); err == nil && g.Revision.NewStyle() {
						c.Signals.GUID = true
						c.Revision, c.Serial, c.HasSerial = g.Revision, g.Serial, true
					}
				}
			}
		}
	}
	if c.Revision != 0 {
		if b, err := c.Revision.Decode(); err == nil {
			c.Board = &b
		}
	}
	if c.Signals.OUI && len(mac) >= 3 && mac[0] == 0xb8 && mac[1] == 0x27 && mac[2] == 0xeb && (c.GUID == nil || c.GUID.Format != GUIDFourCC) {
		c.Pi3 = true
	}
	c.IsPi = c.Signals.GUID || c.Signals.OUI
	return c
}
