package tree

import (
	"io/fs"
	"testing"
	"testing/fstest"
	"time"
)

// A tree read through FS behaves as io/fs requires (fstest.TestFS) and
// follows symlinks the way a mounted root would: usrmerge's absolute
// lib -> /usr/lib, relative links, links climbing above the root, and
// hard links.
func TestFS(t *testing.T) {
	tr := New()
	mt := time.Unix(1700000000, 0)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tr.AddBytes("usr/lib/modules/6.1/kernel/a.ko", []byte("module a"), 0o644, mt))
	must(tr.AddBytes("usr/lib/modules/6.1/modules.dep", []byte("kernel/a.ko:\n"), 0o644, mt))
	must(tr.Add(Entry{Path: "lib", Kind: Symlink, Link: "/usr/lib", Mode: 0o777, ModTime: mt}))
	must(tr.Add(Entry{Path: "usr/lib/modules/current", Kind: Symlink, Link: "6.1", Mode: 0o777, ModTime: mt}))
	must(tr.Add(Entry{Path: "usr/escape", Kind: Symlink, Link: "../../../usr/lib", Mode: 0o777, ModTime: mt}))
	must(tr.Add(Entry{Path: "usr/lib/modules/6.1/kernel/b.ko", Kind: Hardlink, Link: "usr/lib/modules/6.1/kernel/a.ko", ModTime: mt}))
	fsys := tr.FS()

	for _, p := range []string{"lib/modules/6.1/kernel/a.ko", "lib/modules/current/kernel/a.ko", "usr/escape/modules/6.1/kernel/a.ko", "lib/modules/6.1/kernel/b.ko"} {
		data, err := fs.ReadFile(fsys, p)
		if err != nil || string(data) != "module a" {
			t.Errorf("ReadFile(%s) = %q, %v", p, data, err)
		}
	}
	if l, err := fsys.ReadLink("lib"); err != nil || l != "/usr/lib" {
		t.Errorf("ReadLink(lib) = %q, %v", l, err)
	}
	loop := New()
	must(loop.Add(Entry{Path: "loop", Kind: Symlink, Link: "loop", Mode: 0o777, ModTime: mt}))
	if _, err := fs.ReadFile(loop.FS(), "loop"); err == nil {
		t.Error("a symlink loop was read")
	}
	if _, err := fs.ReadFile(fsys, "lib/modules/6.1/kernel/a.ko/x"); err == nil {
		t.Error("a path under a file was read")
	}
	if _, err := fsys.Open("/lib"); err == nil {
		t.Error("an absolute name was accepted")
	}
	var walked []string
	must(fs.WalkDir(fsys, "lib/modules/6.1", func(p string, d fs.DirEntry, err error) error {
		walked = append(walked, p)
		return err
	}))
	if len(walked) != 5 || walked[2] != "lib/modules/6.1/kernel/a.ko" || walked[4] != "lib/modules/6.1/modules.dep" {
		t.Errorf("WalkDir through the lib symlink: %v", walked)
	}
	if err := fstest.TestFS(fsys, "usr/lib/modules/6.1/kernel/a.ko", "usr/lib/modules/6.1/modules.dep"); err != nil {
		t.Error(err)
	}
}
