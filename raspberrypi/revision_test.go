package raspberrypi

import (
	"errors"
	"testing"
)

func TestRevisionDecode(t *testing.T) {
	tests := []struct {
		code                  string
		model                 string
		memMB                 int
		maker, processor, pcb string
		generation            int
	}{
		{"a02082", "3B", 1024, "Sony UK", "BCM2837", "1.2", 3},
		{"a22082", "3B", 1024, "Embest", "BCM2837", "1.2", 3},
		{"a020d3", "3B+", 1024, "Sony UK", "BCM2837", "1.3", 3},
		{"a03111", "4B", 1024, "Sony UK", "BCM2711", "1.1", 4},
		{"b03112", "4B", 2048, "Sony UK", "BCM2711", "1.2", 4},
		{"c03114", "4B", 4096, "Sony UK", "BCM2711", "1.4", 4},
		{"d03114", "4B", 8192, "Sony UK", "BCM2711", "1.4", 4},
		{"c03130", "400", 4096, "Sony UK", "BCM2711", "1.0", 4},
		{"a03140", "CM4", 1024, "Sony UK", "BCM2711", "1.0", 4},
		{"d03140", "CM4", 8192, "Sony UK", "BCM2711", "1.0", 4},
		{"c04170", "5", 4096, "Sony UK", "BCM2712", "1.0", 5},
		{"d04170", "5", 8192, "Sony UK", "BCM2712", "1.0", 5},
		{"e04171", "5", 16384, "Sony UK", "BCM2712", "1.1", 5},
		{"d04190", "500", 8192, "Sony UK", "BCM2712", "1.0", 5},
		{"d04180", "CM5", 8192, "Sony UK", "BCM2712", "1.0", 5},
		{"b041a0", "CM5 Lite", 2048, "Sony UK", "BCM2712", "1.0", 5},
		{"0x00c03111", "4B", 4096, "Sony UK", "BCM2711", "1.1", 4}, // option 97 doc example
		// High flag bits (overvoltage, OTP, warranty) do not change the board.
		{"2a02082", "3B", 1024, "Sony UK", "BCM2837", "1.2", 3},
		// Old-style sequential codes, all BCM2835.
		{"0002", "B", 256, "Egoman", "BCM2835", "1.0", 1},
		{"000e", "B", 512, "Sony UK", "BCM2835", "2.0", 1},
		{"0010", "B+", 512, "Sony UK", "BCM2835", "1.0", 1},
		{"0015", "A+", 256, "Embest", "BCM2835", "1.1", 1},
		{"1000002", "B", 256, "Egoman", "BCM2835", "1.0", 1}, // warranty bit on an old code
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			r, err := ParseRevision(tc.code)
			if err != nil {
				t.Fatal(err)
			}
			b, err := r.Decode()
			if err != nil {
				t.Fatalf("Decode(%s): %v", r, err)
			}
			if b.Model != tc.model || b.MemoryMB != tc.memMB || b.Manufacturer != tc.maker || b.Processor != tc.processor || b.PCBRevision != tc.pcb {
				t.Errorf("Decode(%s) = %+v, want model %q %d MB %q %q pcb %q", r, b, tc.model, tc.memMB, tc.maker, tc.processor, tc.pcb)
			}
			if g := b.Generation(); g != tc.generation {
				t.Errorf("Generation = %d, want %d", g, tc.generation)
			}
		})
	}
}

func TestRevisionDecodeUnknown(t *testing.T) {
	for _, tc := range []struct {
		code      Revision
		wantModel string // what is still known
	}{
		{0x0001, ""},    // below the old-style table
		{0x0016, ""},    // above it
		{0xa03ff0, ""},  // new-style, type 0xff
		{0xf04170, "5"}, // memory size 7 not defined yet
		{0xa0f170, "5"}, // processor 15
	} {
		b, err := tc.code.Decode()
		if !errors.Is(err, ErrUnknownRevision) {
			t.Errorf("Decode(%s) error = %v, want ErrUnknownRevision", tc.code, err)
		}
		if b.Model != tc.wantModel {
			t.Errorf("Decode(%s).Model = %q, want %q", tc.code, b.Model, tc.wantModel)
		}
	}
}

func TestParseRevisionErrors(t *testing.T) {
	for _, s := range []string{"", "0x", "xyz", "123456789"} {
		if _, err := ParseRevision(s); err == nil {
			t.Errorf("ParseRevision(%q) succeeded", s)
		}
	}
}

func TestBoardName(t *testing.T) {
	for code, want := range map[Revision]string{
		0xd04170: "Raspberry Pi 5 8GB",
		0x000e:   "Raspberry Pi B 512MB",
	} {
		b, err := code.Decode()
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Name(); got != want {
			t.Errorf("%s: Name = %q, want %q", code, got, want)
		}
	}
}

func TestSerial(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"5b154510", "5b154510", true},
		{"0BADCAFE", "0badcafe", true},
		{"10000000abcd1234", "abcd1234", true},
		{"00000000765fc593", "765fc593", true},
		{" 0x765fc593\n", "765fc593", true},
		{"765fc59", "", false},
		{"zzzzzzzz", "", false},
		{"", "", false},
	} {
		s, err := ParseSerial(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSerial(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && s.String() != tc.want {
			t.Errorf("ParseSerial(%q) = %s, want %s", tc.in, s, tc.want)
		}
	}
	if got := Serial(0xabc).String(); got != "00000abc" {
		t.Errorf("Serial(0xabc) = %q, want zero-padded 00000abc", got)
	}
}
