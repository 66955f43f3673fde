package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestHardwareReportJSON(t *testing.T) {
	r := HardwareReport{
		Board:       BoardInfo{Serial: "10000000a1b2c3d4", Revision: "d04170", Type: "5", MemoryMB: 8192},
		MemoryBytes: 8 << 30,
		Storage:     []StorageDevice{{Name: "mmcblk0", Kind: StorageSD, SizeBytes: 64 << 30, Removable: true}},
		USB:         []USBDevice{{Path: "1-1", Vendor: "1a86", Product: "55d3", Class: USBClassServoAdapter}},
		SerialPorts: []SerialPort{{Device: "/dev/ttyACM0", USB: "1-1"}},
		ServoBuses:  []ServoBus{{Device: "/dev/ttyACM0", IDs: []int{1, 2, 3}, Garbled: []int{4}}},
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"servo_buses"`, `"memory_bytes"`, `"product_id":"55d3"`, `"garbled":[4]`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}
	var back HardwareReport
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, r) {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	if err := back.Validate(); err != nil {
		t.Errorf("valid report rejected: %v", err)
	}
}

func TestHardwareReportValidate(t *testing.T) {
	for name, r := range map[string]HardwareReport{
		"storage without name": {Storage: []StorageDevice{{}}},
		"usb without path":     {USB: []USBDevice{{Vendor: "1a86"}}},
		"bus without device":   {ServoBuses: []ServoBus{{IDs: []int{1}}}},
		"servo ID 254":         {ServoBuses: []ServoBus{{Device: "/dev/ttyACM0", IDs: []int{254}}}},
		"negative garbled ID":  {ServoBuses: []ServoBus{{Device: "/dev/ttyACM0", Garbled: []int{-1}}}},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
