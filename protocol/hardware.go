package protocol

import (
	"errors"
	"fmt"
)

// HardwareReport is what `agent factory probe` found on a board in the
// provisioning environment; the robot sends it to the netboot station,
// which matches it against the robot profiles. Sizes are bytes. Parts the
// probe could not read are left empty and explained in Warnings, so that
// one unreadable sysfs file does not hide the rest.
type HardwareReport struct {
	Board       BoardInfo       `json:"board"`
	MemoryBytes uint64          `json:"memory_bytes,omitempty"`
	Storage     []StorageDevice `json:"storage,omitempty"`
	USB         []USBDevice     `json:"usb,omitempty"`
	Video       []VideoDevice   `json:"video,omitempty"`
	SerialPorts []SerialPort    `json:"serial_ports,omitempty"`
	ServoBuses  []ServoBus      `json:"servo_buses,omitempty"`
	Warnings    []string        `json:"warnings,omitempty"`
}

// BoardInfo identifies the board and what its revision code says.
type BoardInfo struct {
	Serial   string `json:"serial,omitempty"`
	Revision string `json:"revision,omitempty"` // hex, as /proc/cpuinfo shows it: "d04170"
	// Model is the device tree's model string when there is one
	// ("Raspberry Pi 5 Model B Rev 1.0"), else the decoded name.
	Model         string `json:"model,omitempty"`
	Type          string `json:"type,omitempty"` // "5", "4B", "CM5"
	BoardRevision string `json:"board_revision,omitempty"`
	MemoryMB      int    `json:"memory_mb,omitempty"` // from the revision code
	Manufacturer  string `json:"manufacturer,omitempty"`
	Processor     string `json:"processor,omitempty"`
}

// Storage kinds.
const (
	StorageSD   = "sd"
	StorageEMMC = "emmc"
	StorageNVMe = "nvme"
	StorageUSB  = "usb"
)

// StorageDevice is a whole disk (partitions are not listed).
type StorageDevice struct {
	Name      string `json:"name"` // kernel name: "mmcblk0", "nvme0n1", "sda"
	Kind      string `json:"kind"` // Storage* constant, or "" when unknown
	SizeBytes uint64 `json:"size_bytes"`
	Removable bool   `json:"removable,omitempty"`
	Model     string `json:"model,omitempty"`
}

// USBDevice is one device from /sys/bus/usb/devices.
type USBDevice struct {
	Path         string `json:"path"`   // sysfs name, the port chain: "1-1.2"
	Vendor       string `json:"vendor"` // idVendor, 4 hex digits
	Product      string `json:"product_id"`
	Name         string `json:"name,omitempty"` // product string
	Manufacturer string `json:"manufacturer,omitempty"`
	Serial       string `json:"serial,omitempty"`
	// Class says what the probe recognised: "servo-adapter", "camera" or "".
	Class string `json:"class,omitempty"`
}

// USB device classes the probe recognises.
const (
	USBClassServoAdapter = "servo-adapter"
	USBClassCamera       = "camera"
)

// VideoDevice is a V4L2 node from /sys/class/video4linux.
type VideoDevice struct {
	Device string `json:"device"` // "/dev/video0"
	Name   string `json:"name,omitempty"`
	USB    string `json:"usb,omitempty"` // the USB device's Path, when on USB
}

// SerialPort is a USB serial port (/dev/ttyACM*, /dev/ttyUSB*).
type SerialPort struct {
	Device  string `json:"device"`           // "/dev/ttyACM0"
	USB     string `json:"usb,omitempty"`    // parent USB device's Path
	Vendor  string `json:"vendor,omitempty"` // parent's idVendor
	Product string `json:"product_id,omitempty"`
	Serial  string `json:"serial,omitempty"`
}

// ServoBus is one serial port pinged as a Feetech servo bus.
type ServoBus struct {
	Device string `json:"device"`
	// IDs answered a ping, ascending.
	IDs []int `json:"ids"`
	// Garbled IDs gave a reply with a bad checksum: often two servos
	// sharing that ID (new servos all come set to ID 1).
	Garbled []int `json:"garbled,omitempty"`
	// Error is set when the port could not be used at all.
	Error string `json:"error,omitempty"`
}

// Validate implements Validator.
func (r *HardwareReport) Validate() error {
	var errs []error
	for i, s := range r.Storage {
		if s.Name == "" {
			errs = append(errs, fmt.Errorf("storage[%d]: name is empty", i))
		}
	}
	for i, u := range r.USB {
		if u.Path == "" {
			errs = append(errs, fmt.Errorf("usb[%d]: path is empty", i))
		}
	}
	for i, b := range r.ServoBuses {
		if b.Device == "" {
			errs = append(errs, fmt.Errorf("servo_buses[%d]: device is empty", i))
		}
		for _, id := range append(append([]int(nil), b.IDs...), b.Garbled...) {
			if id < 0 || id > 253 {
				errs = append(errs, fmt.Errorf("servo_buses[%d] (%s): servo ID %d outside 0-253", i, b.Device, id))
			}
		}
	}
	return errors.Join(errs...)
}
