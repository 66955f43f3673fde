package bmap

import (
	"bytes"
	"os"
	"reflect"
	"testing"
)

// TestParseGolden parses a map written by `bmaptool create` (bmap-tools 3.6) that is
// kept in testdata, so the format is pinned even where bmaptool is not installed.
func TestParseGolden(t *testing.T) {
	raw, err := os.ReadFile("testdata/bmaptool-3.6.bmap")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := &Map{ImageSize: 1 << 20, BlockSize: 4096, BlocksCount: 256, MappedBlocks: 7, Ranges: []Range{
		{First: 0, Last: 0, SHA256: "b587010b6dd5587129a084e473458dd701ff88212e5ac406f3025793b9b852ef"},
		{First: 73, Last: 78, SHA256: "2f7bb4ca9521d19745627c0162c48ff25b048f5cbdc56a18bc44f1a0ada920d7"},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Parse = %+v, want %+v", m, want)
	}
	var out bytes.Buffer
	if err := m.WriteXML(&out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), raw) {
		t.Fatalf("WriteXML is not byte-identical to bmaptool's file:\n%s", out.Bytes())
	}
}

// FuzzParse: Parse never panics, and whatever it accepts is a valid map that
// survives WriteXML and Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte(`<?xml version="1.0" ?><bmap version="2.0"></bmap>`))
	m := &Map{ImageSize: 5000, BlockSize: 4096, BlocksCount: 2, MappedBlocks: 2, Ranges: []Range{{First: 0, Last: 1}}}
	var buf bytes.Buffer
	if err := m.WriteXML(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid map: %v", err)
		}
		var out bytes.Buffer
		if err := m.WriteXML(&out); err != nil {
			t.Fatalf("WriteXML of a parsed map: %v", err)
		}
		again, err := Parse(&out)
		if err != nil {
			t.Fatalf("Parse(WriteXML(Parse(x))): %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed the map: %+v -> %+v", m, again)
		}
	})
}
