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

// A truncated compressed stream is an error, not a short image.
func TestCopyRefusesTruncatedStream(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd not installed")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i * 31)
	}
	os.WriteFile(raw, b, 0o644)
	if out, err := exec.Command("zstd", "-q", raw, "-o", raw+".zst").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	z, _ := os.ReadFile(raw + ".zst")
	r, closeFn, err := Decompress(bytes.NewReader(z[:len(z)/2]), ".zst")
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	f, _ := os.Create(filepath.Join(dir, "out"))
	defer f.Close()
	if _, err := Copy(context.Background(), f, r); err == nil {
		t.Fatal("a truncated zstd stream copied without error")
	}
	if _, _, err := Decompress(bytes.NewReader(nil), ".rar"); err == nil {
		t.Fatal("unknown compression accepted")
	}
}
