package tftp

import (
	"errors"
	"path"
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	long := strings.Repeat("a", MaxPathLen+1)
	tests := []struct {
		name, serial, file string
		ok                 bool
	}{
		{"1a2b3c4d/config.txt", "1a2b3c4d", "config.txt", true},
		{"1a2b3c4d/overlays/vc4-kms-v3d-pi5.dtbo", "1a2b3c4d", "overlays/vc4-kms-v3d-pi5.dtbo", true},
		{"bootcode.bin", "", "bootcode.bin", true},
		{"overlays/foo.dtbo", "", "overlays/foo.dtbo", true},
		{"1A2B3C4D/config.txt", "", "1A2B3C4D/config.txt", true}, // not a serial: uppercase
		{"1a2b3c4/config.txt", "", "1a2b3c4/config.txt", true},   // 7 digits
		{"1a2b3c4d0/config.txt", "", "1a2b3c4d0/config.txt", true},
		{"1a2b3c4g/config.txt", "", "1a2b3c4g/config.txt", true},
		{"1a2b3c4d", "", "1a2b3c4d", true}, // a serial alone is a file name
		{strings.Repeat("a", MaxPathLen), "", strings.Repeat("a", MaxPathLen), true},
		{"", "", "", false},
		{long, "", "", false},
		{"/etc/passwd", "", "", false},
		{"//etc/passwd", "", "", false},
		{"../etc/passwd", "", "", false},
		{"1a2b3c4d/../../etc/passwd", "", "", false},
		{"1a2b3c4d/..", "", "", false},
		{"..", "", "", false},
		{".", "", "", false},
		{"./config.txt", "", "", false},
		{"1a2b3c4d/./config.txt", "", "", false},
		{"1a2b3c4d//config.txt", "", "", false},
		{"1a2b3c4d/", "", "", false},
		{"1a2b3c4d/config.txt/", "", "", false},
		{`..\..\windows`, "", "", false},
		{`1a2b3c4d\config.txt`, "", "", false},
		{"config.txt\x00.png", "", "", false},
		{"config .txt", "", "", false},
		{"config\t.txt", "", "", false},
		{"config\n.txt", "", "", false},
		{"conf\x7fig.txt", "", "", false},
		{"cönfig.txt", "", "", false},
		{"1a2b3c4d/\xff", "", "", false},
	}
	for _, tt := range tests {
		serial, file, err := ParsePath(tt.name)
		if tt.ok {
			if err != nil || serial != tt.serial || file != tt.file {
				t.Errorf("ParsePath(%q) = %q, %q, %v; want %q, %q, nil", tt.name, serial, file, err, tt.serial, tt.file)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrInvalidPath) {
			t.Errorf("ParsePath(%q) = %q, %q, %v; want an ErrInvalidPath", tt.name, serial, file, err)
		}
	}
}

func TestKindOf(t *testing.T) {
	tests := map[string]string{
		"config.txt":                    KindConfig,
		"CONFIG.TXT":                    KindConfig,
		"cmdline.txt":                   KindCmdline,
		"bootcode.bin":                  KindFirmware,
		"start4.elf":                    KindFirmware,
		"start_cd.elf":                  KindFirmware,
		"fixup4cd.dat":                  KindFirmware,
		"pieeprom.sig":                  KindEEPROM,
		"pieeprom.upd":                  KindEEPROM,
		"recovery.bin":                  KindEEPROM,
		"recover4.elf":                  KindEEPROM,
		"kernel8.img":                   KindKernel,
		"kernel_2712.img":               KindKernel,
		"vmlinuz-6.6":                   KindKernel,
		"Image":                         KindKernel,
		"initramfs8":                    KindInitramfs,
		"initrd.img":                    KindInitramfs,
		"provision.cpio.zst":            KindInitramfs,
		"bcm2712-rpi-5-b.dtb":           KindDTB,
		"overlays/vc4-kms-v3d-pi5.dtbo": KindDTB,
		"overlays/README":               KindOther,
		"hello.txt":                     KindOther,
	}
	for file, want := range tests {
		if got := KindOf(file); got != want {
			t.Errorf("KindOf(%q) = %q, want %q", file, got, want)
		}
	}
}

// FuzzParsePath checks the invariants the server relies on: whatever is
// accepted is relative, clean, short, printable, and cannot leave the
// directory it is joined to.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"1a2b3c4d/config.txt", "bootcode.bin", "../x", "/x", `a\b`, "a//b", "a/./b", "1a2b3c4d/..", "x\x00y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		serial, file, err := ParsePath(name)
		if err != nil {
			if serial != "" || file != "" {
				t.Fatalf("ParsePath(%q) returned %q, %q with error %v", name, serial, file, err)
			}
			return
		}
		if serial != "" && !IsSerial(serial) {
			t.Fatalf("ParsePath(%q) serial %q is not a serial", name, serial)
		}
		joined := file
		if serial != "" {
			joined = serial + "/" + file
		}
		if joined != name {
			t.Fatalf("ParsePath(%q) = %q + %q, which does not rebuild the name", name, serial, file)
		}
		if file == "" || len(name) > MaxPathLen || path.IsAbs(file) || path.Clean(file) != file ||
			strings.ContainsAny(name, "\\\x00") || file == ".." || strings.HasPrefix(file, "../") ||
			!strings.HasPrefix(path.Join("/root", file), "/root/") {
			t.Fatalf("ParsePath(%q) accepted unsafe file %q", name, file)
		}
		for _, c := range []byte(name) {
			if c <= ' ' || c >= 0x7f {
				t.Fatalf("ParsePath(%q) accepted byte 0x%02x", name, c)
			}
		}
		if k := KindOf(file); k == KindInvalid || k == "" {
			t.Fatalf("KindOf(%q) = %q", file, k)
		}
	})
}
