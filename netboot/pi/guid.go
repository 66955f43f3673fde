package pi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"

	"github.com/lekiwi/heartbeat/raspberrypi"
)

// Option 97 (RFC 4578 §2.3, "Client Machine Identifier") is one type byte
// (0 = GUID, the only type defined) followed by a 16-byte identifier. The
// Raspberry Pi bootloaders fill the 16 bytes in one of these layouts:
//
//	FourCC (Pi 4 EEPROM since 2020-03, Pi 400, CM4, Pi 5, 500, CM5):
//	  [0:4]   FourCC "RPi4" or "RPi5" as ASCII (= little-endian 0x34695052 for "RPi4")
//	  [4:8]   board revision code, little-endian uint32
//	  [8:12]  the 4 least significant bytes of the Ethernet MAC, wire order
//	  [12:16] serial number, little-endian uint32
//	Custom prefix (EEPROM DHCP_OPTION97=<non-zero hex>): the FourCC layout
//	  with the configured 4 bytes in place of the FourCC.
//	Serial repeated (Pi 4 EEPROM before 2020-03, or DHCP_OPTION97=0):
//	  the little-endian serial four times.
//	Pi 3 boot ROM (3B, 3B+, 2B v1.2; not updatable): sixteen 0x44 bytes.
//
// Sources: raspberrypi/documentation bcm2711-bootloader.adoc, DHCP_OPTION97
// ("the concatenation of the fourcc for RPi4 (0x34695052 - little endian),
// the board revision (e.g. 0x00c03111) (4-bytes), the least significant 4
// bytes of the mac address and the 4-byte serial number"; "In earlier
// releases the client GUID (Option97) was just the serial number repeated 4
// times"); raspberrypi/documentation issue 3586 (the FourCC is "RPi5" on the
// Pi 5); a dnsmasq log of a Pi 4B (revision a03111, TFTP prefix 5b154510)
// showing "client-machine-id 00:52:50:69:34:11:31:a0:00:32:2e:f8:ed:10…",
// which fixes the byte order of each field (revision and serial little-endian,
// MAC in wire order); and dnsmasq configurations that recognise the Pi 3 ROM
// by "client-machine-id 00:44:44:…:44".

// GUIDFormat says which Pi layout an option 97 identifier has.
type GUIDFormat uint8

const (
	// GUIDOpaque is an identifier in none of the Pi layouts (a PC's SMBIOS
	// UUID, or a Pi 4 with a custom DHCP_OPTION97 prefix: see Identify).
	GUIDOpaque GUIDFormat = iota
	// GUIDFourCC is "RPi4"/"RPi5" + revision + MAC low bytes + serial.
	GUIDFourCC
	// GUIDSerialRepeated is the serial number four times (old Pi 4 EEPROMs).
	GUIDSerialRepeated
	// GUIDPi3ROM is the constant sixteen 0x44 bytes of the Pi 3 boot ROM.
	GUIDPi3ROM
)

func (f GUIDFormat) String() string {
	switch f {
	case GUIDFourCC:
		return "fourcc"
	case GUIDSerialRepeated:
		return "serial-repeated"
	case GUIDPi3ROM:
		return "pi3-rom"
	default:
		return "opaque"
	}
}

// FourCCs the bootloaders put in the first four GUID bytes.
const (
	FourCCPi4 = "RPi4"
	FourCCPi5 = "RPi5"
)

// OptionClientGUID is the DHCP option code of the client machine identifier.
const OptionClientGUID = 97

// ClientGUID is a decoded option 97.
type ClientGUID struct {
	Raw    [16]byte
	Format GUIDFormat
	// FourCC is Raw[0:4] as text; "RPi4" or "RPi5" when Format is GUIDFourCC.
	FourCC string
	// Revision, MACLow and Serial are read with the FourCC layout whatever
	// the format, because a custom DHCP_OPTION97 prefix keeps that layout;
	// trust them only for GUIDFourCC, or after Identify matched MACLow.
	// For GUIDSerialRepeated, Serial is the repeated word and Revision and
	// MACLow are zero.
	Revision raspberrypi.Revision
	MACLow   [4]byte
	Serial   raspberrypi.Serial
}

// HasSerial reports whether the GUID carries the board serial.
func (g ClientGUID) HasSerial() bool {
	return g.Format == GUIDFourCC || g.Format == GUIDSerialRepeated
}

// ParseClientGUID decodes the payload of option 97 (without code and length).
func ParseClientGUID(b []byte) (ClientGUID, error) {
	var g ClientGUID
	if len(b) != 17 {
		return g, fmt.Errorf("pi: option 97 is %d bytes, RFC 4578 defines 17 (type 0 + 16-byte GUID)", len(b))
	}
	if b[0] != 0 {
		return g, fmt.Errorf("pi: option 97 identifier type %d, only type 0 (GUID) is defined", b[0])
	}
	copy(g.Raw[:], b[1:])
	r := g.Raw[:]
	g.FourCC = string(r[0:4])
	w0 := binary.LittleEndian.Uint32(r[0:4])
	switch {
	case g.FourCC == FourCCPi4 || g.FourCC == FourCCPi5:
		g.Format = GUIDFourCC
	case bytes.Equal(r, bytes.Repeat([]byte{0x44}, 16)):
		g.Format = GUIDPi3ROM
		return g, nil
	case bytes.Equal(r[0:4], r[4:8]) && bytes.Equal(r[0:8], r[8:16]) && w0 != 0 && w0 != 0xffffffff:
		// All-zero and all-ones are what PCs without a UUID send; they are
		// "repeated" too but carry no serial.
		g.Format = GUIDSerialRepeated
		g.Serial = raspberrypi.Serial(w0)
		return g, nil
	}
	g.Revision = raspberrypi.Revision(binary.LittleEndian.Uint32(r[4:8]))
	copy(g.MACLow[:], r[8:12])
	g.Serial = raspberrypi.Serial(binary.LittleEndian.Uint32(r[12:16]))
	return g, nil
}

// EncodeClientGUID builds the option 97 payload a Pi 4/5 bootloader sends
// (FourCC layout), for simulated clients and tests. prefix is normally
// FourCCPi4 or FourCCPi5; it must be 4 bytes. mac must be an Ethernet MAC.
func EncodeClientGUID(prefix string, rev raspberrypi.Revision, mac net.HardwareAddr, serial raspberrypi.Serial) ([]byte, error) {
	if len(prefix) != 4 {
		return nil, fmt.Errorf("pi: GUID prefix %q must be 4 bytes", prefix)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("pi: MAC %v must be 6 bytes", mac)
	}
	b := make([]byte, 17)
	copy(b[1:5], prefix)
	binary.LittleEndian.PutUint32(b[5:9], uint32(rev))
	copy(b[9:13], mac[2:6])
	binary.LittleEndian.PutUint32(b[13:17], uint32(serial))
	return b, nil
}
