package pi

import (
	"net"
	"testing"
)

func TestIdentify(t *testing.T) {
	piMAC := net.HardwareAddr{0xd8, 0x3a, 0xdd, 0x11, 0x22, 0x33}
	pcMAC := net.HardwareAddr{0x52, 0x54, 0x00, 0x11, 0x22, 0x33}
	pi3MAC := net.HardwareAddr{0xb8, 0x27, 0xeb, 0x11, 0x22, 0x33}
	guid5, _ := EncodeClientGUID(FourCCPi5, 0xd04170, piMAC, 0x0badcafe)
	// A Pi 5 whose MAC was overridden in EEPROM (MAC_ADDRESS) to a non-Pi OUI.
	guidPC, _ := EncodeClientGUID(FourCCPi4, 0xc03114, pcMAC, 0x1234abcd)
	// DHCP_OPTION97=0x11223344: custom prefix, same layout.
	custom, _ := EncodeClientGUID("\x44\x33\x22\x11", 0xc03114, pcMAC, 0x1234abcd)
	customWrongMAC, _ := EncodeClientGUID("\x44\x33\x22\x11", 0xc03114, piMAC, 0x1234abcd)
	pi3 := append([]byte{0}, []byte("DDDDDDDDDDDDDDDD")...)
	repeated := mustHex(t, "00 1045155b 1045155b 1045155b 1045155b")
	pcUUID := mustHex(t, "00 4c4c4544 0050 3510 8052 b4c04f4b4e32")

	tests := []struct {
		name     string
		mac      net.HardwareAddr
		vc       string
		opt97    []byte
		isPi     bool
		signals  Signals
		serial   string // "" = none
		model    string
		bootMenu string
	}{
		{"pi5 everything", piMAC, VendorClass, guid5, true, Signals{true, true, true}, "0badcafe", "5", BootMenu},
		{"pi4 overridden MAC", pcMAC, VendorClass, guidPC, true, Signals{true, true, false}, "1234abcd", "4B", BootMenu},
		{"custom prefix, MAC agrees", pcMAC, VendorClass, custom, true, Signals{true, true, false}, "1234abcd", "4B", BootMenu},
		{"custom prefix, MAC disagrees", pcMAC, VendorClass, customWrongMAC, false, Signals{true, false, false}, "", "", BootMenu},
		{"pi3 rom", pi3MAC, VendorClass, pi3, true, Signals{true, true, true}, "", "", BootMenuPi3},
		{"pi3 by OUI only", pi3MAC, VendorClass, nil, true, Signals{true, false, true}, "", "", BootMenuPi3},
		{"old pi4 eeprom", piMAC, VendorClass, repeated, true, Signals{true, true, true}, "5b154510", "", BootMenu},
		{"x86 bios pxe", pcMAC, VendorClass, pcUUID, false, Signals{true, false, false}, "", "", BootMenu},
		{"pi running linux", piMAC, "dhcpcd-6.11.5:Linux", nil, true, Signals{false, false, true}, "", "", BootMenu},
		{"laptop", pcMAC, "MSFT 5.0", nil, false, Signals{}, "", "", BootMenu},
		{"malformed opt97", pcMAC, VendorClass, []byte{0, 1, 2}, false, Signals{true, false, false}, "", "", BootMenu},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Identify(tc.mac, tc.vc, tc.opt97)
			if c.IsPi != tc.isPi || c.Signals != tc.signals {
				t.Errorf("IsPi %v signals %+v, want %v %+v", c.IsPi, c.Signals, tc.isPi, tc.signals)
			}
			serial := ""
			if c.HasSerial {
				serial = c.Serial.String()
			}
			if serial != tc.serial {
				t.Errorf("serial %q, want %q", serial, tc.serial)
			}
			model := ""
			if c.Board != nil {
				model = c.Board.Model
			}
			if model != tc.model {
				t.Errorf("model %q, want %q", model, tc.model)
			}
			if c.BootMenu() != tc.bootMenu {
				t.Errorf("boot menu %q, want %q", c.BootMenu(), tc.bootMenu)
			}
		})
	}
}
