package rpi

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// Device tree properties the Pi bootloader sets under /chosen/bootloader
// (Raspberry Pi documentation, "Firmware parameters"): 32-bit big-endian
// integers.
const (
	dtBootloader = "chosen/bootloader"
	dtTryboot    = "tryboot"   // 1 when the one-shot tryboot flag was set for this boot
	dtPartition  = "partition" // the partition the firmware loaded the kernel from
)

// ParseDTU32 decodes a device tree integer property (one big-endian cell).
func ParseDTU32(b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("device tree integer is %d bytes, want 4", len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}

// BootInfo is what the bootloader told the kernel about this boot.
type BootInfo struct {
	Tryboot   bool
	Partition int
}

// ReadBootInfo reads the bootloader properties under root (normally
// /proc/device-tree).
func ReadBootInfo(root string) (BootInfo, error) {
	var bi BootInfo
	read := func(name string) (uint32, error) {
		p := filepath.Join(root, dtBootloader, name)
		b, err := os.ReadFile(p)
		if err != nil {
			return 0, fmt.Errorf("read %s (a bootloader without tryboot support? update the EEPROM with rpi-eeprom-update): %w", p, err)
		}
		v, err := ParseDTU32(b)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		return v, nil
	}
	t, err := read(dtTryboot)
	if err != nil {
		return bi, err
	}
	part, err := read(dtPartition)
	if err != nil {
		return bi, err
	}
	bi.Tryboot = t == 1
	bi.Partition = int(part)
	return bi, nil
}

// WriteBootInfo writes the properties the way the firmware presents them,
// for tests and models that stand in for the bootloader.
func WriteBootInfo(root string, bi BootInfo) error {
	dir := filepath.Join(root, dtBootloader)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("device tree %s: %w", dir, err)
	}
	var t uint32
	if bi.Tryboot {
		t = 1
	}
	for name, v := range map[string]uint32{dtTryboot: t, dtPartition: uint32(bi.Partition)} {
		b := binary.BigEndian.AppendUint32(nil, v)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("device tree %s: %w", name, err)
		}
	}
	return nil
}
