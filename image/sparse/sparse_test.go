package sparse

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestDataRegionsAndCopy(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := 256 << 10; i < 320<<10; i++ {
		data[i] = 1
	}
	data[len(data)-1] = 2
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := Copy(context.Background(), f, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("copy: %d %v", n, err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, data) {
		t.Fatal("copy differs")
	}
	regs, err := DataRegions(context.Background(), f, int64(len(data)), 4096)
	if err != nil {
		t.Fatal(err)
	}
	// Zero 64 KiB blocks are holes; the file system may round the data up,
	// but the holes at the start must be seen and both data runs covered.
	if len(regs) == 0 || regs[0].First == 0 || regs[0].First > 64 || regs[len(regs)-1].Last != 255 {
		t.Fatalf("regions %+v", regs)
	}
	if !IsZero(make([]byte, 100)) || IsZero([]byte{0, 0, 1}) || !IsZero(nil) {
		t.Fatal("IsZero")
	}
}

// A truncated compressed stream is an error, not a short image; the whole
// stream decodes to what was compressed.
func TestCopyRefusesTruncatedStream(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i * 31)
	}
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ tool, ext string }{{"zstd", ".zst"}, {"xz", ".xz"}, {"gzip", ".gz"}} {
		if _, err := exec.LookPath(c.tool); err != nil {
			t.Fatalf("%s not installed (Debian package %s, in the Makefile's DEB_TEST)", c.tool, c.tool)
		}
		if out, err := exec.Command(c.tool, "-k", "-q", "-f", raw).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", c.tool, err, out)
		}
		z, err := os.ReadFile(raw + c.ext)
		if err != nil {
			t.Fatal(err)
		}
		for _, cut := range []int{len(z), len(z) / 2} {
			r, closeFn, err := Decompress(bytes.NewReader(z[:cut]), c.ext)
			if err != nil {
				t.Fatalf("%s: %v", c.ext, err)
			}
			f, _ := os.Create(filepath.Join(dir, "out"))
			n, err := Copy(context.Background(), f, r)
			closeFn()
			got, _ := os.ReadFile(f.Name())
			f.Close()
			if cut < len(z) && err == nil {
				t.Fatalf("a truncated %s stream copied without error (%d bytes)", c.ext, n)
			}
			if cut == len(z) && (err != nil || !bytes.Equal(got, b)) {
				t.Fatalf("%s: %d bytes, %v: not the original", c.ext, n, err)
			}
		}
	}
	if _, _, err := Decompress(bytes.NewReader(nil), ".rar"); err == nil {
		t.Fatal("unknown compression accepted")
	}
}
