package bmap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const MiB = 1 << 20

func TestScan(t *testing.T) {
	type want struct{ first, last int64 }
	tests := []struct {
		name    string
		size    int64
		extents []extent
		opts    ScanOptions
		want    []want
	}{
		{
			name:    "one region at the start",
			size:    1 * MiB,
			extents: []extent{{off: 0, len: 8192}},
			want:    []want{{0, 1}},
		},
		{
			name:    "unaligned data maps every block it touches",
			size:    1 * MiB,
			extents: []extent{{off: 5000, len: 10}, {off: 40960 - 1, len: 2}},
			want:    []want{{1, 1}, {9, 10}},
		},
		{
			name: "several regions and holes",
			size: 4 * MiB,
			extents: []extent{
				{off: 0, len: 4096},
				{off: 1 * MiB, len: 256 << 10},
				{off: 3 * MiB, len: 4096 * 3},
			},
			want: []want{{0, 0}, {256, 319}, {768, 770}},
		},
		{
			name:    "partial last block",
			size:    2*MiB + 100,
			extents: []extent{{off: 2 * MiB, len: 100}},
			want:    []want{{512, 512}},
		},
		{
			name:    "written zeros are data by default (bmaptool semantics)",
			size:    1 * MiB,
			extents: []extent{{off: 0, len: 4096}, {off: 4096, len: 8192, zeros: true}, {off: 12288, len: 4096}},
			want:    []want{{0, 3}},
		},
		{
			name:    "written zeros split ranges with SkipZeroBlocks",
			size:    1 * MiB,
			extents: []extent{{off: 0, len: 4096}, {off: 4096, len: 8192, zeros: true}, {off: 12288, len: 4096}},
			opts:    ScanOptions{SkipZeroBlocks: true},
			want:    []want{{0, 0}, {3, 3}},
		},
		{
			name:    "all-zero region vanishes with SkipZeroBlocks",
			size:    1 * MiB,
			extents: []extent{{off: 64 << 10, len: 64 << 10, zeros: true}},
			opts:    ScanOptions{SkipZeroBlocks: true},
			want:    nil,
		},
		{
			name:    "64 KiB blocks",
			size:    8 * MiB,
			extents: []extent{{off: 100, len: 10}, {off: 5 * MiB, len: 65537}},
			opts:    ScanOptions{BlockSize: 64 << 10},
			want:    []want{{0, 0}, {80, 81}},
		},
		{
			name:    "region larger than one read chunk",
			size:    16 * MiB,
			extents: []extent{{off: 1 * MiB, len: 9*MiB + 4096}},
			want:    []want{{256, 256 + 9*256}},
		},
		{
			name:    "no data at all",
			size:    1 * MiB,
			extents: nil,
			want:    nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := makeSparse(t, t.TempDir(), "img", tc.size, tc.extents)
			m := scanPath(t, path, tc.opts)
			bs := tc.opts.BlockSize
			if bs == 0 {
				bs = DefaultBlockSize
			}
			var got []want
			var mapped int64
			for _, r := range m.Ranges {
				got = append(got, want{r.First, r.Last})
				mapped += r.Last - r.First + 1
				if h := hashFileRange(t, path, r.First, r.Last, bs); r.SHA256 != h {
					t.Errorf("range %d-%d: sha256 %s, want %s", r.First, r.Last, r.SHA256, h)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ranges = %v, want %v", got, tc.want)
			}
			if m.ImageSize != tc.size || m.BlockSize != bs || m.BlocksCount != (tc.size+int64(bs)-1)/int64(bs) || m.MappedBlocks != mapped {
				t.Errorf("header = size %d, block %d, blocks %d, mapped %d", m.ImageSize, m.BlockSize, m.BlocksCount, m.MappedBlocks)
			}
			if err := m.Validate(); err != nil {
				t.Errorf("scanned map invalid: %v", err)
			}
		})
	}
}

func TestScanRefuses(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	img := makeSparse(t, dir, "img", MiB, []extent{{off: 0, len: 4096}})
	tests := []struct {
		name, path string
		opts       ScanOptions
		ctx        func() context.Context
		wantErr    string
	}{
		{"empty image", empty, ScanOptions{}, t.Context, "empty"},
		{"directory", dir, ScanOptions{}, t.Context, "not a regular file"},
		{"negative block size", img, ScanOptions{BlockSize: -1}, t.Context, "block size"},
		{"canceled context", img, ScanOptions{}, func() context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx
		}, "context canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = Scan(tc.ctx(), f, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Scan error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestWriteXMLParseRoundTrip(t *testing.T) {
	path := makeSparse(t, t.TempDir(), "img", 3*MiB+512, []extent{
		{off: 0, len: 4096}, {off: 100 << 10, len: 300 << 10}, {off: 3 * MiB, len: 512},
	})
	m := scanPath(t, path, ScanOptions{})
	var a, b bytes.Buffer
	if err := m.WriteXML(&a); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteXML(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("WriteXML is not deterministic")
	}
	got, err := Parse(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatalf("Parse(WriteXML(m)): %v\n%s", err, a.String())
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip changed the map:\n got %+v\nwant %+v", got, m)
	}

	// A range without a checksum (bmaptool create --no-checksum) survives too.
	m.Ranges[1].SHA256 = ""
	a.Reset()
	if err := m.WriteXML(&a); err != nil {
		t.Fatal(err)
	}
	if got, err = Parse(&a); err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip without a range checksum: %v, %+v", err, got)
	}
}

func TestWriteXMLRefusesInvalidMap(t *testing.T) {
	valid := func() *Map {
		return &Map{ImageSize: 10 * 4096, BlockSize: 4096, BlocksCount: 10, MappedBlocks: 3,
			Ranges: []Range{{First: 0, Last: 0}, {First: 5, Last: 6}}}
	}
	tests := []struct {
		name   string
		mutate func(*Map)
		want   string
	}{
		{"valid", func(*Map) {}, ""},
		{"zero block size", func(m *Map) { m.BlockSize = 0 }, "block size"},
		{"empty image", func(m *Map) { m.ImageSize, m.BlocksCount = 0, 0 }, "image size"},
		{"wrong blocks count", func(m *Map) { m.BlocksCount = 11 }, "blocks count"},
		{"overlap", func(m *Map) { m.Ranges[1].First = 0 }, "not after the previous"},
		{"unsorted", func(m *Map) { m.Ranges[0], m.Ranges[1] = m.Ranges[1], m.Ranges[0] }, "not after the previous"},
		{"first after last", func(m *Map) { m.Ranges[1].First = 7 }, "first block after last"},
		{"beyond image", func(m *Map) { m.Ranges[1].Last = 10; m.MappedBlocks = 7 }, "beyond the last block"},
		{"mapped count", func(m *Map) { m.MappedBlocks = 4 }, "mapped blocks count"},
		{"bad checksum", func(m *Map) { m.Ranges[0].SHA256 = strings.Repeat("A", 64) }, "lowercase hex"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.mutate(m)
			err := m.WriteXML(&bytes.Buffer{})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("WriteXML: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteXML error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// resign recomputes a bmap file's checksum after the test edited it, so that the
// edit reaches the checks behind the checksum.
func resign(t *testing.T, b []byte) []byte {
	t.Helper()
	const open, closeTag = "<BmapFileChecksum> ", " </BmapFileChecksum>"
	i := bytes.Index(b, []byte(open))
	j := bytes.Index(b, []byte(closeTag))
	if i < 0 || j < 0 {
		return b
	}
	i += len(open)
	out := append(append(append([]byte{}, b[:i]...), strings.Repeat("0", 64)...), b[j:]...)
	sum := sha256.Sum256(out)
	copy(out[i:], hex.EncodeToString(sum[:]))
	return out
}

func TestParseRejects(t *testing.T) {
	m := &Map{ImageSize: 10*4096 - 1, BlockSize: 4096, BlocksCount: 10, MappedBlocks: 3,
		Ranges: []Range{{First: 0, Last: 0, SHA256: strings.Repeat("ab", 32)}, {First: 5, Last: 6, SHA256: strings.Repeat("cd", 32)}}}
	var buf bytes.Buffer
	if err := m.WriteXML(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.String()
	if _, err := Parse(strings.NewReader(good)); err != nil {
		t.Fatalf("the unedited file must parse: %v", err)
	}
	edit := func(old, new string) func(*testing.T) []byte {
		return func(t *testing.T) []byte {
			if !strings.Contains(good, old) {
				t.Fatalf("test bug: %q not in the file", old)
			}
			return resign(t, []byte(strings.Replace(good, old, new, 1)))
		}
	}
	raw := func(s string) func(*testing.T) []byte { return func(*testing.T) []byte { return []byte(s) } }
	tests := []struct {
		name  string
		input func(*testing.T) []byte
		want  string
	}{
		{"empty input", raw(""), "not a bmap XML document"},
		{"not XML", raw("hello"), "not a bmap XML document"},
		{"other root element", raw(`<?xml version="1.0"?><map version="2.0"></map>`), "not a bmap XML document"},
		{"range checksum byte changed, not resigned", func(*testing.T) []byte {
			return []byte(strings.Replace(good, `chksum="ab`, `chksum="bb`, 1))
		}, "file checksum mismatch"},
		{"file checksum not hex", func(*testing.T) []byte {
			i := strings.Index(good, "<BmapFileChecksum> ") + len("<BmapFileChecksum> ")
			return []byte(good[:i] + "X" + good[i+1:])
		}, "not a lowercase hex sha256"},
		{"version 3.0", edit(`version="2.0"`, `version="3.0"`), "not supported"},
		{"version 1.3 (sha1)", edit(`version="2.0"`, `version="1.3"`), "not supported"},
		{"version garbage", edit(`version="2.0"`, `version="two"`), "not major.minor"},
		{"md5 checksums", edit("<ChecksumType> sha256 ", "<ChecksumType> md5 "), "only sha256"},
		{"blocks count inconsistent", edit("<BlocksCount> 10 ", "<BlocksCount> 11 "), "blocks count 11"},
		{"mapped count inconsistent", edit("<MappedBlocksCount> 3 ", "<MappedBlocksCount> 4 "), "mapped blocks count 4"},
		{"negative image size", edit("<ImageSize> 40959 ", "<ImageSize> -1 "), "non-negative integer"},
		{"zero block size", edit("<BlockSize> 4096 ", "<BlockSize> 0 "), "BlockSize"},
		{"huge block size", edit("<BlockSize> 4096 ", "<BlockSize> 99999999999 "), "BlockSize"},
		{"overlapping ranges", edit("> 5-6 <", "> 0-1 <"), "not after the previous"},
		{"range past the image", edit("> 5-6 <", "> 9-10 <"), "beyond the last block"},
		{"reversed range", edit("> 5-6 <", "> 6-5 <"), "first block after last"},
		{"range not a number", edit("> 5-6 <", "> 5-x <"), "not a non-negative integer"},
		{"duplicate BlockSize", edit("<BlockSize> 4096 </BlockSize>", "<BlockSize> 4096 </BlockSize><BlockSize> 512 </BlockSize>"), "exactly one <BlockSize>"},
		{"missing ImageSize", edit("<ImageSize> 40959 </ImageSize>", ""), "exactly one <ImageSize>"},
		{"uppercase range checksum", edit(`chksum="abab`, `chksum="ABab`), "lowercase hex"},
		{"trailing element", func(t *testing.T) []byte { return resign(t, []byte(good+"<bmap/>")) }, "after </bmap>"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(bytes.NewReader(tc.input(t)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestHumanSize pins humanSize to bmaptool's human_size; the expectations were
// printed by bmaptools.BmapHelpers.human_size (bmap-tools 3.6).
func TestHumanSize(t *testing.T) {
	for size, want := range map[int64]string{
		0: "0 bytes", 1: "1 byte", 2: "2 bytes", 511: "511 bytes", 512: "0.5 KiB",
		1023: "1.0 KiB", 1536: "1.5 KiB", 4096000: "3.9 MiB", 3150728: "3.0 MiB",
		1 << 30: "1.0 GiB", 1<<30 - 1: "1024.0 MiB", 1 << 40: "1.0 TiB", 1 << 50: "1024.0 EiB",
		123456789012: "115.0 GiB",
	} {
		if got := humanSize(size); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", size, got, want)
		}
	}
}

func TestSidecarPath(t *testing.T) {
	if got := SidecarPath("/out/robot.img"); got != "/out/robot.img.bmap" {
		t.Fatalf("SidecarPath = %q", got)
	}
}
