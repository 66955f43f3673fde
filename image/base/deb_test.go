package base

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A package dpkg-deb builds opens as its data tree, named by its control
// file, whatever compression its members use.
func TestOpenDeb(t *testing.T) {
	need(t, "dpkg-deb")
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	for p, content := range map[string]string{
		"DEBIAN/control":             "Package: lekiwi-test\nVersion: 1.2-3\nArchitecture: arm64\nMaintainer: t <t@example.com>\nDescription: test\n two lines\n",
		"usr/lib/test/module.ko":     "a module",
		"usr/lib/firmware/x/fw.bin":  "firmware",
		"boot/vmlinuz-6.1.0-9-arm64": "kernel",
	} {
		if err := os.MkdirAll(filepath.Join(pkg, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pkg, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(pkg, "lib")); err != nil {
		t.Fatal(err)
	}
	for _, z := range []string{"xz", "gzip", "zstd", "none"} {
		deb := filepath.Join(dir, "lekiwi-test_"+z+".deb")
		sh(t, "dpkg-deb", "--root-owner-group", "-Z"+z, "--build", pkg, deb)
		b, err := Open(context.Background(), deb, Options{TempDir: dir})
		if err != nil {
			t.Fatalf("%s: %v", z, err)
		}
		if b.Kind != KindDeb || b.Deb == nil || b.Deb.Package != "lekiwi-test" || b.Deb.Version != "1.2-3" || b.Arch != "arm64" {
			t.Fatalf("%s: %+v %+v", z, b, b.Deb)
		}
		if data, err := b.Root.ReadFile("usr/lib/firmware/x/fw.bin"); err != nil || string(data) != "firmware" {
			t.Fatalf("%s: firmware %q %v", z, data, err)
		}
		if e, err := b.Root.Resolve("lib/test/module.ko"); err != nil || e.Size != int64(len("a module")) {
			t.Fatalf("%s: through the lib symlink: %v", z, err)
		}
		if _, ok := b.Root.Get("DEBIAN/control"); ok {
			t.Fatalf("%s: the control file is in the data tree", z)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	notDeb := filepath.Join(dir, "x.deb")
	os.WriteFile(notDeb, []byte("!<arch>\nnot really\n"), 0o644)
	if _, err := Open(context.Background(), notDeb, Options{TempDir: dir}); err == nil || !strings.Contains(err.Error(), "Debian package") {
		t.Fatalf("a broken .deb: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "base-") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}
