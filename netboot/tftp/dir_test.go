package tftp

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	base := t.TempDir()
	tree := filepath.Join(base, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "overlays"), 0o755); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(tree, "start4.elf"), []byte("firmware"), 0o644))
	must(os.WriteFile(filepath.Join(tree, "overlays", "x.dtbo"), []byte("overlay"), 0o644))
	must(os.WriteFile(filepath.Join(base, "secret"), []byte("secret"), 0o644))
	must(os.Symlink("../secret", filepath.Join(tree, "escape")))

	d, err := OpenDir(tree)
	must(err)
	defer d.Close()
	for file, want := range map[string]string{"start4.elf": "firmware", "overlays/x.dtbo": "overlay"} {
		r, n, err := d.Open(context.Background(), "1a2b3c4d", file, netip.AddrPort{})
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		got, _ := io.ReadAll(io.NewSectionReader(r, 0, n))
		r.(io.Closer).Close()
		if string(got) != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	for _, file := range []string{"missing", "overlays", "escape", "../secret"} {
		if r, _, err := d.Open(context.Background(), "", file, netip.AddrPort{}); err == nil {
			r.(io.Closer).Close()
			t.Errorf("%q: opened, want refused", file)
		} else if file == "missing" || file == "overlays" {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%q: %v, want fs.ErrNotExist", file, err)
			}
		}
	}
}
