package raspberrypi

import (
	"net"
	"testing"
)

func TestHasOUI(t *testing.T) {
	for mac, want := range map[string]bool{
		"b8:27:eb:00:00:01": true, "dc:a6:32:00:00:01": true, "e4:5f:01:00:00:01": true,
		"28:cd:c1:00:00:01": true, "d8:3a:dd:00:00:01": true, "2c:cf:67:00:00:01": true,
		"52:54:00:12:34:56": false, "b8:27:ec:00:00:01": false,
	} {
		m, _ := net.ParseMAC(mac)
		if got := HasOUI(m); got != want {
			t.Errorf("HasOUI(%s) = %v", mac, got)
		}
	}
	if HasOUI(net.HardwareAddr{0xb8, 0x27}) {
		t.Error("2-byte MAC matched")
	}
}
