package tftp

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// MaxPathLen bounds the requested file name. The Pi bootloader asks for names
// like "1a2b3c4d/overlays/vc4-kms-v3d-pi5.dtbo"; anything much longer is not a
// boot file and only costs us work.
const MaxPathLen = 255

// ErrInvalidPath is wrapped by every ParsePath rejection.
var ErrInvalidPath = errors.New("invalid TFTP file name")

// ParsePath splits a requested TFTP file name into the board serial and the
// file the board wants. "1a2b3c4d/config.txt" gives ("1a2b3c4d",
// "config.txt"); a bare "bootcode.bin" (the Pi 3 asks without prefix, the Pi
// 4/5 bootloaders fall back to it) gives ("", "bootcode.bin").
//
// The name must already be clean: relative, '/'-separated, no "." or ".."
// component, no empty component, printable ASCII only (no backslash, NUL,
// space or control byte), at most MaxPathLen bytes. Nothing is normalised on
// the caller's behalf, so what the resolver sees is exactly what was asked
// for and can never climb out of wherever the resolver serves from.
func ParsePath(name string) (serial, file string, err error) {
	if name == "" {
		return "", "", fmt.Errorf("%w: empty", ErrInvalidPath)
	}
	if len(name) > MaxPathLen {
		return "", "", fmt.Errorf("%w: %d bytes, longer than %d", ErrInvalidPath, len(name), MaxPathLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == '\\' {
			return "", "", fmt.Errorf("%w: %q has byte 0x%02x at %d (only printable ASCII without backslash is served)", ErrInvalidPath, name, c, i)
		}
	}
	if strings.HasPrefix(name, "/") {
		return "", "", fmt.Errorf("%w: %q is absolute; ask for <serial>/<file> or <file>", ErrInvalidPath, name)
	}
	for _, part := range strings.Split(name, "/") {
		switch part {
		case "":
			return "", "", fmt.Errorf("%w: %q has an empty path component", ErrInvalidPath, name)
		case ".", "..":
			return "", "", fmt.Errorf("%w: %q has a %q component", ErrInvalidPath, name, part)
		}
	}
	if path.Clean(name) != name { // unreachable after the checks above; kept as the invariant they exist for
		return "", "", fmt.Errorf("%w: %q is not clean", ErrInvalidPath, name)
	}
	first, rest, found := strings.Cut(name, "/")
	if found && IsSerial(first) {
		return first, rest, nil
	}
	return "", name, nil
}

// IsSerial reports whether s is a Pi board serial as the bootloader uses it in
// TFTP paths: exactly 8 lowercase hex digits.
func IsSerial(s string) bool {
	if len(s) != 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// File kinds: the low-cardinality label used in metrics and transfer reports.
const (
	KindConfig    = "config"    // config.txt
	KindCmdline   = "cmdline"   // cmdline.txt
	KindFirmware  = "firmware"  // bootcode.bin, start*.elf, fixup*.dat
	KindEEPROM    = "eeprom"    // pieeprom.*, recovery*.bin, recover*.elf
	KindKernel    = "kernel"    // kernel*.img, vmlinuz*, Image*
	KindInitramfs = "initramfs" // initramfs*, initrd*, *.cpio*
	KindDTB       = "dtb"       // *.dtb, *.dtbo (device trees and overlays)
	KindOther     = "other"     // anything else the resolver chose to serve
	KindInvalid   = "invalid"   // names ParsePath rejected
)

// KindOf classifies a file (as returned by ParsePath) into one of the Kind
// constants, by its base name only.
func KindOf(file string) string {
	base := strings.ToLower(path.Base(file))
	switch {
	case base == "config.txt":
		return KindConfig
	case base == "cmdline.txt":
		return KindCmdline
	case base == "bootcode.bin",
		strings.HasPrefix(base, "start") && strings.HasSuffix(base, ".elf"),
		strings.HasPrefix(base, "fixup") && strings.HasSuffix(base, ".dat"):
		return KindFirmware
	case strings.HasPrefix(base, "pieeprom"), strings.HasPrefix(base, "recover"):
		return KindEEPROM
	case strings.HasPrefix(base, "kernel"), strings.HasPrefix(base, "vmlinuz"), strings.HasPrefix(base, "image"):
		return KindKernel
	case strings.HasPrefix(base, "initramfs"), strings.HasPrefix(base, "initrd"), strings.Contains(base, ".cpio"):
		return KindInitramfs
	case strings.HasSuffix(base, ".dtb"), strings.HasSuffix(base, ".dtbo"):
		return KindDTB
	}
	return KindOther
}
