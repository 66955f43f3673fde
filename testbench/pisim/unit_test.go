package pisim

import (
	"encoding/binary"
	"net"
	"reflect"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/lekiwi/heartbeat/netboot/pi"
)

func TestParseConfigTxt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		text  string
		model int
		want  BootConfig
	}{
		{"empty", "", 4, BootConfig{}},
		{"plain", "kernel=k.img\ninitramfs init.gz followkernel\ndevice_tree=x.dtb\ncmdline=c.txt\n", 5,
			BootConfig{Kernel: "k.img", Initramfs: []string{"init.gz"}, DeviceTree: "x.dtb", Cmdline: "c.txt"}},
		{"sections", "[pi4]\nkernel=k4\n[pi5]\nkernel=k5\n[all]\nauto_initramfs=1\n", 5, BootConfig{Kernel: "k5", AutoInitramfs: true}},
		{"sections pi4", "[pi4]\nkernel=k4\n[pi5]\nkernel=k5\n", 4, BootConfig{Kernel: "k4"}},
		{"unknown filter and none", "[cm4]\nkernel=cm\n[none]\nkernel=no\n[all]\n", 4, BootConfig{}},
		{"comments spaces last wins", "  kernel = a.img # first\n#kernel=b\nkernel=c.img\n", 4, BootConfig{Kernel: "c.img"}},
		{"initramfs list and ramfsfile", "ramfsfile=r1\ninitramfs a,b 0x1000\n", 4, BootConfig{Initramfs: []string{"a", "b"}}},
		{"junk", "\x00\xff[\n=\ninitramfs\nkernel\n", 5, BootConfig{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseConfigTxt(tc.text, tc.model); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseConfigTxt(f *testing.F) {
	f.Add("[pi4]\nkernel=kernel8.img\n[all]\ninitramfs a,b followkernel\n", 4)
	f.Add("device_tree=\ncmdline=c\nauto_initramfs=1\n[pi5]\n", 5)
	f.Fuzz(func(t *testing.T, text string, model int) {
		c := ParseConfigTxt(text, model)
		for _, n := range c.Initramfs {
			if n == "" {
				t.Fatalf("empty initramfs name from %q", text)
			}
		}
	})
}

func TestAutoInitramfs(t *testing.T) {
	for in, want := range map[string]string{"kernel8.img": "initramfs8", "kernel_2712.img": "initramfs_2712", "vmlinuz": ""} {
		got, ok := autoInitramfs(in)
		if got != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", in, got, ok, want)
		}
	}
}

func TestDiscoverAsThePiSendsIt(t *testing.T) {
	p := Pi{Model: 5, MAC: net.HardwareAddr{0x2c, 0xcf, 0x67, 1, 2, 3}, Serial: 0x0badcafe, Revision: 0xd04170}
	m, err := BuildDiscover(p, 0x26f30339)
	if err != nil {
		t.Fatal(err)
	}
	frame := buildDHCPFrame(p.MAC, m.ToBytes())
	// Ethernet: broadcast from the Pi's MAC, IPv4.
	if !reflect.DeepEqual(frame[0:6], []byte{255, 255, 255, 255, 255, 255}) || !reflect.DeepEqual(net.HardwareAddr(frame[6:12]), p.MAC) || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		t.Fatalf("ethernet header % x", frame[:14])
	}
	ip, udp := frame[14:34], frame[34:]
	if checksum(ip, 0) != 0 {
		t.Error("IPv4 header checksum does not verify")
	}
	if !reflect.DeepEqual(ip[12:16], []byte{0, 0, 0, 0}) || !reflect.DeepEqual(ip[16:20], []byte{255, 255, 255, 255}) {
		t.Errorf("addresses % x → % x, want 0.0.0.0 → 255.255.255.255", ip[12:16], ip[16:20])
	}
	if binary.BigEndian.Uint16(udp[0:]) != 68 || binary.BigEndian.Uint16(udp[2:]) != 67 || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		t.Errorf("UDP header % x (len %d)", udp[:8], len(udp))
	}
	if checksum(udp, 0xffff+0xffff+17+uint32(len(udp))) != 0 {
		t.Error("UDP checksum does not verify")
	}
	got, err := dhcpv4.FromBytes(udp[8:])
	if err != nil {
		t.Fatal(err)
	}
	if got.MessageType() != dhcpv4.MessageTypeDiscover || got.TransactionID != (dhcpv4.TransactionID{0x26, 0xf3, 0x03, 0x39}) ||
		got.ClientHWAddr.String() != p.MAC.String() || got.IsBroadcast() {
		t.Errorf("DISCOVER %s", got.Summary())
	}
	if got.ClassIdentifier() != "PXEClient:Arch:00000:UNDI:002001" {
		t.Errorf("option 60 %q", got.ClassIdentifier())
	}
	var prl []uint8
	for _, c := range got.ParameterRequestList() {
		prl = append(prl, c.Code())
	}
	if !reflect.DeepEqual(prl, []uint8{1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135}) {
		t.Errorf("option 55 %v", prl)
	}
	if b := got.Options.Get(dhcpv4.OptionClientSystemArchitectureType); !reflect.DeepEqual(b, []byte{0, 0}) {
		t.Errorf("option 93 % x", b)
	}
	if b := got.Options.Get(dhcpv4.OptionClientNetworkInterfaceIdentifier); !reflect.DeepEqual(b, []byte{1, 2, 1}) {
		t.Errorf("option 94 % x", b)
	}
	c := pi.Identify(got.ClientHWAddr, got.ClassIdentifier(), got.Options.Get(dhcpv4.OptionClientMachineIdentifier))
	if !c.IsPi || c.GUID == nil || c.GUID.FourCC != "RPi5" || c.Serial != p.Serial || c.Revision != p.Revision {
		t.Errorf("the station would see %+v", c)
	}

	req, err := BuildRequest(p, 7, netipMust("10.0.0.9"), netipMust("10.0.0.254"))
	if err != nil {
		t.Fatal(err)
	}
	if req.MessageType() != dhcpv4.MessageTypeRequest || req.ClassIdentifier() != "" ||
		req.RequestedIPAddress().String() != "10.0.0.9" || req.ServerIdentifier().String() != "10.0.0.254" {
		t.Errorf("REQUEST %s", req.Summary())
	}
}

func TestPiRejectsOtherModels(t *testing.T) {
	if _, err := BuildDiscover(Pi{Model: 3, MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}}, 1); err == nil {
		t.Error("a Pi 3 was accepted: its boot ROM is not simulated")
	}
	if _, err := BuildDiscover(Pi{Model: 4, MAC: net.HardwareAddr{1, 2, 3}}, 1); err == nil {
		t.Error("a 3-byte MAC was accepted")
	}
}
