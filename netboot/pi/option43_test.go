package pi

import (
	"bytes"
	"testing"
)

func TestBuildOption43MatchesDnsmasq(t *testing.T) {
	// What dnsmasq sends for `pxe-service=0,"Raspberry Pi Boot"`: a dnsmasq
	// log of a Pi 4 boot shows "sent size: 32 option: 43 vendor-encap
	// 06:01:03:0a:04:00:50:58:45:09:14:00:00:11...", the rest being the
	// 17-byte description and the end marker.
	want := []byte{6, 1, 3, 10, 4, 0, 80, 88, 69, 9, 20, 0, 0, 17, 82, 97, 115, 112, 98, 101, 114, 114, 121, 32, 80, 105, 32, 66, 111, 111, 116, 255}
	got, err := BuildOption43(BootMenu)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("BuildOption43 =\n%v\nwant\n%v", got, want)
	}
}

func TestOption43RoundTrip(t *testing.T) {
	for _, desc := range []string{BootMenu, BootMenuPi3, ""} {
		b, err := BuildOption43(desc)
		if err != nil {
			t.Fatal(err)
		}
		o, err := ParseOption43(b)
		if err != nil {
			t.Fatal(err)
		}
		if !o.HasDiscoveryControl || o.DiscoveryControl != 3 || !o.HasPrompt || o.Prompt != "PXE" || o.PromptTimeout != 0 {
			t.Errorf("%q: %+v", desc, o)
		}
		if len(o.Menu) != 1 || o.Menu[0].Description != desc || o.Menu[0].Type != 0 {
			t.Errorf("%q: menu %+v", desc, o.Menu)
		}
		if o.HasPiBoot() != (desc != "") {
			t.Errorf("%q: HasPiBoot = %v", desc, o.HasPiBoot())
		}
	}
	if _, err := BuildOption43(string(make([]byte, 253))); err == nil {
		t.Error("253-byte description accepted")
	}
}

func TestParseOption43(t *testing.T) {
	tests := []struct {
		name   string
		in     []byte
		ok     bool
		menu   int
		other  int
		piBoot bool
	}{
		{"empty", nil, true, 0, 0, false},
		{"pad and end", []byte{0, 0, 255, 9, 99}, true, 0, 0, false},
		{"second item overruns", []byte{9, 10, 0, 1, 1, 'x', 0x80, 0, 4, 'a', 'b', 'c'}, false, 0, 0, false},
		{"two items ok", []byte{9, 11, 0, 1, 1, 'x', 0x80, 0, 4, 'a', 'b', 'c', 'd'}, true, 2, 0, false},
		{"unknown sub-option kept", []byte{71, 4, 0, 0, 0, 0, 255}, true, 0, 1, false},
		{"no length", []byte{6}, false, 0, 0, false},
		{"overrun", []byte{9, 30, 0, 0, 3, 'a'}, false, 0, 0, false},
		{"bad discovery control", []byte{6, 2, 3, 3}, false, 0, 0, false},
		{"empty prompt", []byte{10, 0}, false, 0, 0, false},
		{"menu item truncated", []byte{9, 2, 0, 0}, false, 0, 0, false},
		{"raw ISC string", []byte("Raspberry Pi Boot"), false, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseOption43(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if len(o.Menu) != tc.menu || len(o.Other) != tc.other || o.HasPiBoot() != tc.piBoot {
				t.Errorf("got %+v", o)
			}
		})
	}
}

func FuzzParseOption43(f *testing.F) {
	for _, d := range []string{BootMenu, BootMenuPi3} {
		b, _ := BuildOption43(d)
		f.Add(b)
	}
	f.Add([]byte{71, 4, 0, 0, 0, 0, 255})
	f.Add([]byte("Raspberry Pi Boot"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseOption43(b)
		if err != nil {
			return
		}
		for _, m := range o.Menu {
			if len(m.Description) > 255 {
				t.Fatalf("description longer than a sub-option: %d", len(m.Description))
			}
		}
		// Rebuilding a parsed single-item menu must parse back to the same item.
		if len(o.Menu) == 1 && len(o.Menu[0].Description) <= 252 {
			re, err := BuildOption43(o.Menu[0].Description)
			if err != nil {
				t.Fatal(err)
			}
			o2, err := ParseOption43(re)
			if err != nil || len(o2.Menu) != 1 || o2.Menu[0].Description != o.Menu[0].Description {
				t.Fatalf("rebuild mismatch: %+v %v", o2, err)
			}
		}
	})
}
