package raspberrypi

import "net"

// HasOUI reports whether the MAC carries a Raspberry Pi OUI: B8:27:EB
// (Raspberry Pi Foundation; Pi 1-3), DC:A6:32, E4:5F:01, 28:CD:C1, D8:3A:DD,
// 2C:CF:67 (Raspberry Pi Trading; Pi 4/5 family).
func HasOUI(mac net.HardwareAddr) bool {
	if len(mac) < 3 {
		return false
	}
	switch [3]byte{mac[0], mac[1], mac[2]} {
	case [3]byte{0xb8, 0x27, 0xeb}, [3]byte{0xdc, 0xa6, 0x32}, [3]byte{0xe4, 0x5f, 0x01},
		[3]byte{0x28, 0xcd, 0xc1}, [3]byte{0xd8, 0x3a, 0xdd}, [3]byte{0x2c, 0xcf, 0x67}:
		return true
	}
	return false
}
