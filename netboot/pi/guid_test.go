package pi

import (
	"bytes"
	"encoding/hex"
	"net"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/raspberrypi"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(":", "", " ", "").Replace(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseClientGUID(t *testing.T) {
	tests := []struct {
		name     string
		opt      string
		format   GUIDFormat
		fourcc   string
		revision raspberrypi.Revision
		macLow   string
		serial   string
	}{
		// The first 13 bytes are from a dnsmasq log of a Pi 4B whose TFTP
		// prefix was 5b154510; the serial bytes complete it little-endian.
		{"pi4 fourcc", "00:52:50:69:34:11:31:a0:00:32:2e:f8:ed:10:45:15:5b", GUIDFourCC, "RPi4", 0xa03111, "322ef8ed", "5b154510"},
		{"pi5 fourcc", "00 52506935 7041d000 3a ddaa bb 78563412", GUIDFourCC, "RPi5", 0xd04170, "3addaabb", "12345678"},
		{"serial repeated", "00 10451 55b 1045155b 1045155b 1045155b", GUIDSerialRepeated, "\x10\x45\x15\x5b", 0, "00000000", "5b154510"},
		{"pi3 rom", "00" + strings.Repeat("44", 16), GUIDPi3ROM, "DDDD", 0, "00000000", "00000000"},
		{"pc uuid", "00 4c4c4544 0050 3510 8052 b4c04f4b4e32", GUIDOpaque, "LLED", 0x10355000, "8052b4c0", "324e4b4f"},
		{"pc zero uuid", "00" + strings.Repeat("00", 16), GUIDOpaque, "\x00\x00\x00\x00", 0, "00000000", "00000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseClientGUID(mustHex(t, tc.opt))
			if err != nil {
				t.Fatal(err)
			}
			if g.Format != tc.format || g.FourCC != tc.fourcc || g.Revision != tc.revision ||
				hex.EncodeToString(g.MACLow[:]) != tc.macLow || g.Serial.String() != tc.serial {
				t.Errorf("got format %s fourcc %q rev %s mac %x serial %s; want %s %q %s %s %s",
					g.Format, g.FourCC, g.Revision, g.MACLow, g.Serial, tc.format, tc.fourcc, tc.revision, tc.macLow, tc.serial)
			}
		})
	}
}

func TestParseClientGUIDErrors(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":    nil,
		"short":    make([]byte, 16),
		"long":     make([]byte, 18),
		"type one": append([]byte{1}, make([]byte, 16)...),
	} {
		if _, err := ParseClientGUID(b); err == nil {
			t.Errorf("%s: ParseClientGUID succeeded", name)
		}
	}
}

func TestEncodeClientGUIDRoundTrip(t *testing.T) {
	mac := net.HardwareAddr{0x2c, 0xcf, 0x67, 0x01, 0x02, 0x03}
	b, err := EncodeClientGUID(FourCCPi5, 0xd04170, mac, 0x0badcafe)
	if err != nil {
		t.Fatal(err)
	}
	want := mustHex(t, "00 52506935 7041d000 67010203 fecaad0b")
	if !bytes.Equal(b, want) {
		t.Fatalf("EncodeClientGUID = %x, want %x", b, want)
	}
	g, err := ParseClientGUID(b)
	if err != nil || g.Format != GUIDFourCC || g.Revision != 0xd04170 || g.Serial != 0x0badcafe {
		t.Fatalf("round trip: %+v, %v", g, err)
	}
	if _, err := EncodeClientGUID("RPi", 0, mac, 0); err == nil {
		t.Error("3-byte prefix accepted")
	}
	if _, err := EncodeClientGUID(FourCCPi4, 0, mac[:4], 0); err == nil {
		t.Error("short MAC accepted")
	}
}

func FuzzParseClientGUID(f *testing.F) {
	f.Add(mustHex(f, "00:52:50:69:34:11:31:a0:00:32:2e:f8:ed:10:45:15:5b"))
	f.Add(mustHex(f, "00"+strings.Repeat("44", 16)))
	f.Add(mustHex(f, "00 1045155b 1045155b 1045155b 1045155b"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := ParseClientGUID(b)
		if err != nil {
			return
		}
		if len(b) != 17 || b[0] != 0 {
			t.Fatalf("accepted %d bytes with type %d", len(b), b[0])
		}
		if !bytes.Equal(g.Raw[:], b[1:]) {
			t.Fatal("Raw differs from input")
		}
		if g.Format == GUIDFourCC {
			mac := net.HardwareAddr{0, 0, g.MACLow[0], g.MACLow[1], g.MACLow[2], g.MACLow[3]}
			re, err := EncodeClientGUID(g.FourCC, g.Revision, mac, g.Serial)
			if err != nil || !bytes.Equal(re, b) {
				t.Fatalf("FourCC GUID does not round-trip: %x vs %x (%v)", re, b, err)
			}
		}
		// Identify must never panic on whatever parses.
		_ = Identify(net.HardwareAddr{1, 2, 3, 4, 5, 6}, VendorClass, b)
	})
}
