package base

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"

	"github.com/lekiwi/heartbeat/image/tree"
)

func FuzzReadMBR(f *testing.F) {
	sector := make([]byte, 512)
	sector[510], sector[511] = 0x55, 0xAA
	copy(sector[446:], []byte{0, 0, 0, 0, 0x0c, 0, 0, 0, 0x00, 0x20, 0, 0, 0, 0, 0x10, 0})
	f.Add(sector)
	f.Fuzz(func(t *testing.T, data []byte) {
		parts, err := readMBR(data)
		if err != nil {
			return
		}
		for _, p := range parts {
			if p.Start == 0 || p.Size == 0 || p.Index < 1 || p.Index > 4 {
				t.Fatalf("bad partition accepted: %+v", p)
			}
		}
	})
}

func FuzzImportTar(f *testing.F) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{
		"SCHILY.acl.default":                   "user::rwx\ngroup::r-x\ngroup:4:r-x\nmask::r-x\nother::r-x\n",
		"SCHILY.xattr.system.posix_acl_access": string(journalACL)}})
	_ = tw.WriteHeader(&tar.Header{Name: "etc/a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1,
		PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}})
	_, _ = tw.Write([]byte("a"))
	_ = tw.WriteHeader(&tar.Header{Name: "etc/b", Typeflag: tar.TypeLink, Linkname: "etc/a"})
	_ = tw.WriteHeader(&tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"})
	_ = tw.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &cleaner{}
		defer c.run()
		root, _, err := importTar(context.Background(), bytes.NewReader(data), Options{TempDir: t.TempDir()}, c)
		if err != nil {
			return
		}
		for _, e := range root.Entries() {
			if e.Kind == tree.Hardlink { // must name a File earlier in path order
				target, ok := root.Get(e.Link)
				if !ok || target.Kind != tree.File || !pathLess(e.Link, e.Path) {
					t.Fatalf("%s: hard link to %s (%v)", e.Path, e.Link, target)
				}
			}
			_ = DetectArch(root)
		}
	})
}
