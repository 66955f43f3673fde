package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Streaming a file compressed by the real tools yields the raw image byte for
// byte, with the size found in the file's own metadata.
func TestCompressedFileStreamsEqualRaw(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 9*mib+512, 1)
	cases := []struct {
		tool     string
		args     []string
		sizeFrom string
	}{
		{"xz", []string{"-0"}, "the xz index"},
		{"xz", []string{"-0", "-T2", "--block-size=1MiB"}, "the xz index"}, // many blocks in the index
		{"zstd", []string{"-q", "-1"}, "the zstd frame header"},
		{"gzip", []string{"-1"}, "the gzip trailer"},
	}
	for _, c := range cases {
		t.Run(c.tool+strings.Join(c.args, ""), func(t *testing.T) {
			path := compressFile(t, raw, c.tool, c.args...)
			defer os.Remove(path)
			var progressed int64
			src, err := Open(context.Background(), path, Options{Progress: func(done, total int64) { progressed = done }})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if src.Size() != int64(len(img)) {
				t.Fatalf("size %d, want %d", src.Size(), len(img))
			}
			if s := src.(*stream); s.sizeFrom != c.sizeFrom {
				t.Errorf("size from %q, want %q", s.sizeFrom, c.sizeFrom)
			}
			if src.BlockMap() != nil {
				t.Error("a block map without a sidecar")
			}
			if got := readAll(t, src, 1<<20+123); !bytes.Equal(got, img) {
				t.Fatal("decompressed stream differs from the image")
			}
			fi, _ := os.Stat(path)
			if progressed != fi.Size() {
				t.Errorf("progress reached %d of %d compressed bytes", progressed, fi.Size())
			}
		})
	}
}

// Concatenated xz streams with stream padding: the index walk follows them all.
func TestXZConcatenatedStreams(t *testing.T) {
	dir := t.TempDir()
	a, imgA := makeImage(t, dir, 2*mib, 2)
	b := filepath.Join(dir, "b.img")
	if err := os.Rename(a, b); err != nil {
		t.Fatal(err)
	}
	_, imgC := makeImage(t, dir, 3*mib, 3)
	xa := compressFile(t, b, "xz", "-0")
	xc := compressFile(t, filepath.Join(dir, "robot.img"), "xz", "-0")
	ba, _ := os.ReadFile(xa)
	bc, _ := os.ReadFile(xc)
	joined := append(append(append([]byte{}, ba...), make([]byte, 8)...), bc...)
	path := filepath.Join(dir, "joined.img.xz")
	os.WriteFile(path, joined, 0o644)
	src, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := append(append([]byte{}, imgA...), imgC...)
	if src.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", src.Size(), len(want))
	}
	if !bytes.Equal(readAll(t, src, 1<<20), want) {
		t.Fatal("stream differs")
	}
}

func TestSizeDetection(t *testing.T) {
	dir := t.TempDir()
	raw, _ := makeImage(t, dir, 5*mib, 4)
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, bytes.Repeat([]byte("x"), 5*mib+100), 0o644)
	zstdFile := compressFile(t, raw, "zstd", "-q", "-1")
	zstdPipe := filepath.Join(dir, "pipe.img.zst")
	compress(t, zstdPipe, raw, "zstd", "-q", "-1") // from a pipe: no content size
	gzOdd := compressFile(t, odd, "gzip", "-1")
	xzFile := compressFile(t, raw, "xz", "-0")
	truncatedXZ := filepath.Join(dir, "cut.img.xz")
	b, _ := os.ReadFile(xzFile)
	os.WriteFile(truncatedXZ, b[:len(b)-5], 0o644)
	notXZ := filepath.Join(dir, "plain.img.xz")
	os.WriteFile(notXZ, bytes.Repeat([]byte("not xz"), 100), 0o644)

	cases := []struct {
		name    string
		path    string
		opts    Options
		sidecar string // written as the path's sidecar: "scan" (the raw image's map)
		want    int64
		wantErr string
	}{
		{"zstd header", zstdFile, Options{}, "", 5 * mib, ""},
		{"zstd from a pipe needs a size", zstdPipe, Options{}, "", 0, "give the size explicitly"},
		{"zstd from a pipe with a size", zstdPipe, Options{Size: 5 * mib}, "", 5 * mib, ""},
		{"zstd from a pipe with a sidecar", zstdPipe, Options{}, "scan", 5 * mib, ""},
		{"sidecar and size disagree", zstdPipe, Options{Size: 4 * mib}, "scan", 0, "differs from the 5242880 bytes its block map"},
		{"gzip of a non-sector size", gzOdd, Options{}, "", 0, "not a whole number of 512-byte sectors"},
		{"gzip with a size", gzOdd, Options{Size: 5*mib + 100}, "", 5*mib + 100, ""},
		{"truncated xz", truncatedXZ, Options{}, "", 0, "xz"},
		{"not xz", notXZ, Options{}, "", 0, "not an xz file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			side := sidecarOf(c.path)
			os.Remove(side)
			if c.sidecar == "scan" {
				writeBmap(t, raw, side)
				defer os.Remove(side)
			}
			src, err := Open(context.Background(), c.path, c.opts)
			if c.wantErr != "" {
				if err == nil {
					src.Close()
					t.Fatalf("opened with size %d, want an error containing %q", src.Size(), c.wantErr)
				}
				if !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %q, want it to contain %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if src.Size() != c.want {
				t.Fatalf("size %d, want %d", src.Size(), c.want)
			}
		})
	}
}

// A gzip image over 4 GiB has a wrapped ISIZE; simulated here by a gzip of an
// image followed by a second member: the ISIZE of the last member alone is
// plausible but too small, and the stream refuses to end early.
func TestStreamLongerThanSizeFails(t *testing.T) {
	dir := t.TempDir()
	raw, _ := makeImage(t, dir, 2*mib, 5)
	second := filepath.Join(dir, "second.img")
	os.WriteFile(second, bytes.Repeat([]byte{0xAB}, 1*mib), 0o644)
	g1 := compressFile(t, raw, "gzip", "-1")
	g2 := compressFile(t, second, "gzip", "-1")
	b1, _ := os.ReadFile(g1)
	b2, _ := os.ReadFile(g2)
	path := filepath.Join(dir, "two.img.gz")
	os.WriteFile(path, append(b1, b2...), 0o644)
	src, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Size() != 1*mib {
		t.Fatalf("size %d: the test expects the last member's ISIZE", src.Size())
	}
	buf := make([]byte, mib)
	_, err = src.ReadAt(buf, 0)
	if err == nil || !strings.Contains(err.Error(), "more than the 1048576 bytes") {
		t.Fatalf("reading to the announced end: %v, want a 'more than' error", err)
	}
}

func TestForwardOnly(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 6*mib, 6)
	path := compressFile(t, raw, "zstd", "-q", "-1")
	src, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	buf := make([]byte, 4096)
	if _, err := src.ReadAt(buf, 3*mib+4096); err != nil { // skips ahead
		t.Fatal(err)
	}
	if !bytes.Equal(buf, img[3*mib+4096:3*mib+8192]) {
		t.Fatal("read after skipping differs")
	}
	_, err = src.ReadAt(buf, 0)
	if !errors.Is(err, ErrBehind) || !strings.Contains(err.Error(), "behind the stream's position") {
		t.Fatalf("read behind: %v, want ErrBehind", err)
	}
	// The refused read did not disturb the stream.
	if _, err := src.ReadAt(buf, 3*mib+8192); err != nil || !bytes.Equal(buf, img[3*mib+8192:3*mib+12288]) {
		t.Fatalf("read after the refused one: %v", err)
	}
	// A read crossing the end returns what is there and io.EOF.
	big := make([]byte, 2*mib)
	n, err := src.ReadAt(big, 5*mib)
	if n != mib || err != io.EOF || !bytes.Equal(big[:n], img[5*mib:]) {
		t.Fatalf("last read: %d, %v", n, err)
	}
	if _, err := src.ReadAt(buf, 6*mib); err != io.EOF {
		t.Fatalf("read at the end: %v", err)
	}
}

func TestTruncatedStreamFails(t *testing.T) {
	dir := t.TempDir()
	raw, _ := makeImage(t, dir, 4*mib, 8)
	for _, tool := range []string{"zstd", "gzip", "xz"} {
		t.Run(tool, func(t *testing.T) {
			path := compressFile(t, raw, tool, "-1")
			b, _ := os.ReadFile(path)
			cut := filepath.Join(dir, "cut"+filepath.Ext(path))
			os.WriteFile(cut, b[:len(b)*2/3], 0o644)
			// The size comes from the given value: the metadata at the end is gone.
			src, err := Open(context.Background(), cut, Options{Size: 4 * mib})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			buf := make([]byte, 4*mib)
			n, err := src.ReadAt(buf, 0)
			if err == nil {
				t.Fatalf("read %d bytes of a truncated %s without error", n, tool)
			}
			t.Log(err)
		})
	}
}

func TestRawFileAndClassify(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 3*mib, 9)
	m := writeBmap(t, raw, raw+".bmap")
	src, err := Open(context.Background(), raw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.BlockMap() == nil || src.BlockMap().MappedBytes() != m.MappedBytes() {
		t.Fatal("raw image without its sidecar map")
	}
	// A raw file may be read in any order.
	buf := make([]byte, 100)
	src.ReadAt(buf, 2*mib)
	if _, err := src.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, img[:100]) {
		t.Fatalf("re-read of a raw file: %v", err)
	}

	cases := []struct {
		ref     string
		want    Kind
		wantErr string
	}{
		{raw, KindFile, ""},
		{"http://127.0.0.1:1/x.img", KindURL, ""},
		{"https://example.invalid/x.img.xz", KindURL, ""},
		{"localhost:5000/lekiwi:1.4.0", KindOCI, ""},
		{"registry.example.com/lekiwi/image@sha256:" + strings.Repeat("a", 64), KindOCI, ""},
		{"oci://registry.example.com/lekiwi/image:1.0", KindOCI, ""},
		{"oci://not a ref", "", "not a registry reference"},
		{filepath.Join(dir, "missing.img"), "", "no such file"},
		{"out/lekiwi.img", "", "no such file"},
		{"build.d/lekiwi.img", "", "no such file"},
		{"./x/y:1", "", "no such file"},
		{"ftp://host/x.img", "", "unsupported scheme"},
	}
	for _, c := range cases {
		k, err := Classify(c.ref)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Classify(%q) = %q, %v; want error %q", c.ref, k, err, c.wantErr)
			}
			continue
		}
		if err != nil || k != c.want {
			t.Errorf("Classify(%q) = %q, %v; want %q", c.ref, k, err, c.want)
		}
	}
	gz := compressFile(t, raw, "gzip", "-1")
	if k, err := Classify(gz); err != nil || k != KindCompressedFile {
		t.Errorf("Classify(%q) = %q, %v", gz, k, err)
	}
}

// Close stops the read-ahead even when nobody reads.
func TestCloseWithoutReading(t *testing.T) {
	dir := t.TempDir()
	raw, _ := makeImage(t, dir, 8*mib, 10)
	path := compressFile(t, raw, "gzip", "-1")
	for range 5 {
		src, err := Open(context.Background(), path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := src.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
