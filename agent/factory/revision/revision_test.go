package revision

import (
	"testing"
)

func TestParse(t *testing.T) {
	// Rows from Raspberry Pi's table of revision codes in use.
	for _, tc := range []struct {
		code, typ, rev, mem, mfr, proc string
	}{
		{"d04170", "5", "1.0", "8GB", "Sony UK", "BCM2712"},
		{"c04170", "5", "1.0", "4GB", "Sony UK", "BCM2712"},
		{"b04170", "5", "1.0", "2GB", "Sony UK", "BCM2712"},
		{"e04171", "5", "1.1", "16GB", "Sony UK", "BCM2712"},
		{"d04180", "CM5", "1.0", "8GB", "Sony UK", "BCM2712"},
		{"d04190", "500", "1.0", "8GB", "Sony UK", "BCM2712"},
		{"c041a0", "CM5 Lite", "1.0", "4GB", "Sony UK", "BCM2712"},
		{"a03111", "4B", "1.1", "1GB", "Sony UK", "BCM2711"},
		{"b03115", "4B", "1.5", "2GB", "Sony UK", "BCM2711"},
		{"c03112", "4B", "1.2", "4GB", "Sony UK", "BCM2711"},
		{"d03114", "4B", "1.4", "8GB", "Sony UK", "BCM2711"},
		{"c03130", "400", "1.0", "4GB", "Sony UK", "BCM2711"},
		{"a020d3", "3B+", "1.3", "1GB", "Sony UK", "BCM2837"},
		{"a22082", "3B", "1.2", "1GB", "Embest", "BCM2837"},
		{"a32082", "3B", "1.2", "1GB", "Sony Japan", "BCM2837"},
		{"a52082", "3B", "1.2", "1GB", "Stadium", "BCM2837"},
		{"a01041", "2B", "1.1", "1GB", "Sony UK", "BCM2836"},
		{"902120", "Zero 2 W", "1.0", "512MB", "Sony UK", "BCM2837"},
		{"9000c1", "Zero W", "1.1", "512MB", "Sony UK", "BCM2835"},
		{"0002", "B", "1.0", "256MB", "Egoman", "BCM2835"},
		{"0005", "B", "2.0", "256MB", "Qisda", "BCM2835"},
		{"0010", "B+", "1.2", "512MB", "Sony UK", "BCM2835"},
		{"0015", "A+", "1.1", "256MB", "Embest", "BCM2835"},
		{"1000002", "B", "1.0", "256MB", "Egoman", "BCM2835"}, // warranty bit
		{"0x00d04170", "5", "1.0", "8GB", "Sony UK", "BCM2712"},
	} {
		b, err := Parse(tc.code)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.code, err)
			continue
		}
		if b.Type != tc.typ || b.Revision != tc.rev || b.Memory() != tc.mem || b.Manufacturer != tc.mfr || b.Processor != tc.proc {
			t.Errorf("Parse(%q) = %s %s %s %s %s; want %s %s %s %s %s", tc.code,
				b.Type, b.Revision, b.Memory(), b.Manufacturer, b.Processor, tc.typ, tc.rev, tc.mem, tc.mfr, tc.proc)
		}
	}
}

func TestModelNames(t *testing.T) {
	for code, want := range map[string]string{
		"d04170": "Raspberry Pi 5 Model B",
		"c03112": "Raspberry Pi 4 Model B",
		"a020d3": "Raspberry Pi 3 Model B+",
		"c03130": "Raspberry Pi 400",
		"d04180": "Raspberry Pi Compute Module 5",
		"0010":   "Raspberry Pi Model B+",
	} {
		if b, _ := Parse(code); b.Model != want {
			t.Errorf("Parse(%q).Model = %q, want %q", code, b.Model, want)
		}
	}
}

func TestWarranty(t *testing.T) {
	for code, want := range map[string]bool{"1000002": true, "0002": false, "2a02082": true, "a02082": false} {
		if b, _ := Parse(code); b.WarrantyVoid != want {
			t.Errorf("Parse(%q).WarrantyVoid = %v", code, b.WarrantyVoid)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", "0x", "xyz", "123456789", "0001", "0016", "d041f0", "f04170", "d0f170", "d08170"} {
		if b, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", s, b)
		}
	}
	// An unknown field still fills in what is known.
	b, err := Parse("d041f0")
	if err == nil || b.Processor != "BCM2712" || b.MemoryMB != 8192 {
		t.Errorf("partial decode: %+v, %v", b, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"d04170", "0002", "0x1000002", "ffffffff", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := Parse(s)
		if err == nil && (b.Type == "" || b.MemoryMB == 0 || b.Processor == "" || b.Manufacturer == "") {
			t.Fatalf("Parse(%q) accepted with empty fields: %+v", s, b)
		}
	})
}
