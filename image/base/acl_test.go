package base

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"archive/tar"

	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/image/posixacl"
	"github.com/lekiwi/heartbeat/image/tree"
)

// journalACL is systemd's ACL on /var/log/journal as getxattr(2) returns
// it: user::rwx group::r-x group:4:r-x mask::r-x other::r-x.
var journalACL, _ = hex.DecodeString("0200000001000700ffffffff04000500ffffffff080005000400000010000500ffffffff20000500ffffffff")

// selinuxLabel is an SELinux-sized security label: more than an inode holds.
var selinuxLabel = []byte("system_u:object_r:" + strings.Repeat("x", 220) + "_t:s0")

// hostXattrs lists every extended attribute of a staged file, as the
// kernel has it (without following a symlink).
func hostXattrs(t *testing.T, p string) map[string][]byte {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := syscall.Listxattr(p, buf)
	if err != nil {
		if _, statErr := os.Lstat(p); statErr == nil && isSymlink(p) {
			return nil // listxattr follows symlinks; symlinks here carry none
		}
		t.Fatalf("listxattr %s: %v", p, err)
	}
	if isSymlink(p) {
		return nil
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := syscall.Getxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		out[name] = v[:m]
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func isSymlink(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.Mode()&os.ModeSymlink != 0
}

// sameXattrs compares attribute sets, POSIX ACLs by their entries (the
// ids of unnamed entries carry nothing).
func sameXattrs(got, want map[string][]byte) bool {
	if len(got) != len(want) {
		return false
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			return false
		}
		if strings.HasPrefix(name, "system.posix_acl_") {
			ga, gerr := posixacl.ParseXattr(g)
			wa, werr := posixacl.ParseXattr(w)
			if gerr != nil || werr != nil || ga.Text() != wa.Text() {
				return false
			}
		} else if !bytes.Equal(g, w) {
			return false
		}
	}
	return true
}

// stageACLRoot is a root with what the ACL and attribute paths of a
// Debian root bring: systemd's journal ACLs, a shared directory whose
// ACLs name users and groups (too big for an inode), a capability, an
// SELinux-sized label and user attributes; etc/passwd and etc/group name
// the ids the ACLs use.
func stageACLRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("setting security.* attributes and capabilities needs root")
	}
	need(t, "tar", "setfacl", "setcap", "setfattr")
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"etc", "usr/bin", "var/log/journal", "srv/team"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/bash\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nadm:x:4:pi\nsudo:x:27:pi\npi:x:1000:\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/ping"), []byte("ping"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/labelled"), []byte("label"), 0o644))
	// Numeric ids throughout: the build host's names are not the root's,
	// and GNU tar's text ACLs carry the host's names for these ids.
	sh(t, "setfacl", "-m", "g:4:r-x", filepath.Join(dir, "var/log/journal"))
	sh(t, "setfacl", "-d", "-m", "g:4:r-x", filepath.Join(dir, "var/log/journal"))
	sh(t, "setfacl", "-m", "u:1000:rwx,u:1234:r-x,g:4:r-x,g:27:rwx", filepath.Join(dir, "srv/team"))
	sh(t, "setfacl", "-d", "-m", "u:1000:rwx,u:1234:r-x,g:4:r-x,g:27:rwx", filepath.Join(dir, "srv/team"))
	sh(t, "setcap", "cap_net_raw+ep", filepath.Join(dir, "usr/bin/ping"))
	sh(t, "setfattr", "-n", "security.selinux", "-v", string(selinuxLabel), filepath.Join(dir, "usr/bin/labelled"))
	sh(t, "setfattr", "-n", "user.note", "-v", "hello", filepath.Join(dir, "usr/bin/labelled"))
	return dir
}

// TestTarACLsReachTheImage tars a staged root the ways GNU tar and
// mmdebstrap do, imports it, writes the tree as the image builder does and
// checks every attribute on the way: in the imported tree, through e2fsck,
// with this project's ext4 reader and through the kernel (getfattr,
// getfacl, getcap on a loop mount).
func TestTarACLsReachTheImage(t *testing.T) {
	dir := stageACLRoot(t)
	staged := stagedXattrs(t, dir)
	if len(staged["srv/team"]) != 2 || len(staged["usr/bin/ping"]) != 1 || len(staged["usr/bin/labelled"]) != 2 || len(staged["var/log/journal"]) != 2 {
		t.Fatalf("staging did not set the attributes: %q", staged)
	}
	for _, tc := range []struct{ name, flags string }{
		{"GNU tar --xattrs --acls --xattrs-include=*", "--xattrs --acls --xattrs-include=*"},
		{"mmdebstrap (tar --xattrs)", "--xattrs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := importTarOf(t, dir, tc.flags)
			for _, e := range root.Entries() {
				if !sameXattrs(e.Xattrs, staged[e.Path]) {
					t.Errorf("%s: imported %q, want %q", e.Path, e.Xattrs, staged[e.Path])
				}
			}
			checkImage(t, root, staged)
		})
	}
	t.Run("tar --acls (text ACLs only) naming groups", func(t *testing.T) {
		tarball := filepath.Join(t.TempDir(), "root.tar")
		sh(t, "tar", "--numeric-owner", "--format=pax", "--acls", "-C", dir, "-cf", tarball, ".")
		_, err := Open(context.Background(), tarball, Options{TempDir: t.TempDir()})
		for _, w := range []string{"only as text", "names group", "tar --xattrs --xattrs-include='*'"} {
			fsimagetest.WantErrorMentioning(t, err, w)
		}
	})
	t.Run("tar --acls (text ACLs only) with numeric ids", func(t *testing.T) {
		// Ids the build host has no names for: tar writes them as numbers.
		for _, q := range [][]string{{"passwd", "54321"}, {"group", "54322"}} {
			if exec.Command("getent", q...).Run() == nil {
				t.Skipf("the build host names %s %s: tar would write its name", q[0], q[1])
			}
		}
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "srv/numeric"), 0o755); err != nil {
			t.Fatal(err)
		}
		sh(t, "setfacl", "-m", "u:54321:rwx,g:54322:r-x", filepath.Join(dir, "srv/numeric"))
		sh(t, "setfacl", "-d", "-m", "u:54321:rwx,g:54322:r-x", filepath.Join(dir, "srv/numeric"))
		staged := stagedXattrs(t, dir)
		root := importTarOf(t, dir, "--acls")
		for _, e := range root.Entries() {
			if !sameXattrs(e.Xattrs, staged[e.Path]) {
				t.Errorf("%s: imported %q, want %q", e.Path, e.Xattrs, staged[e.Path])
			}
		}
		checkImage(t, root, staged)
	})
}

// stagedXattrs lists the attributes of every path under dir.
func stagedXattrs(t *testing.T, dir string) map[string]map[string][]byte {
	t.Helper()
	staged := map[string]map[string][]byte{}
	_ = filepath.WalkDir(dir, func(hp string, _ os.DirEntry, _ error) error {
		rel, _ := filepath.Rel(dir, hp)
		if x := hostXattrs(t, hp); x != nil {
			staged[filepath.ToSlash(rel)] = x
		}
		return nil
	})
	return staged
}

// importTarOf tars dir with GNU tar and the given flags and imports it.
func importTarOf(t *testing.T, dir, flags string) *tree.Tree {
	t.Helper()
	tarball := filepath.Join(t.TempDir(), "root.tar")
	sh(t, "tar", append(append([]string{"--numeric-owner", "--format=pax"}, strings.Fields(flags)...), "-C", dir, "-cf", tarball, ".")...)
	b, err := Open(context.Background(), tarball, Options{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Root
}

// checkImage writes root as the image builder does and checks its
// attributes through e2fsck, the ext4 reader and the kernel.
func checkImage(t *testing.T, root *tree.Tree, want map[string]map[string][]byte) {
	t.Helper()
	fsimagetest.NeedTools(t, "e2fsprogs", "e2fsck")
	img := fsimagetest.WriteFS(t, ext4.Write, 32<<20, root, ext4.Params{Time: time.Unix(1700000000, 0), Journal: true})
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	f, size := fsimagetest.Open(t, img)
	fsys, err := ext4.Open(f, size)
	if err != nil {
		t.Fatal(err)
	}
	err = fsys.Walk(func(p string, in *ext4.Inode) error {
		x, err := fsys.Xattrs(in)
		if err != nil {
			return err
		}
		if !sameXattrs(x, want[p]) {
			t.Errorf("%s: the ext4 reader finds %q, want %q", p, x, want[p])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	need(t, "getfattr", "getfacl", "getcap")
	mnt, _ := fsimagetest.Mount(t, img, "ro")
	for p, x := range want {
		mp := filepath.Join(mnt, p)
		if got := hostXattrs(t, mp); !sameXattrs(got, x) {
			t.Errorf("%s: the kernel reads %q, want %q", p, got, x)
		}
		var acl strings.Builder
		for _, kind := range []struct{ xattr, prefix string }{{"system.posix_acl_access", ""}, {"system.posix_acl_default", "default:"}} {
			if v, ok := x[kind.xattr]; ok {
				a, err := posixacl.ParseXattr(v)
				if err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.SplitAfter(a.Text(), "\n") {
					if line != "" {
						acl.WriteString(kind.prefix + line)
					}
				}
			}
		}
		if acl.Len() > 0 {
			out, err := exec.Command("getfacl", "-n", "-c", "-E", mp).Output()
			if err != nil || strings.TrimSpace(string(out)) != strings.TrimSpace(acl.String()) {
				t.Errorf("getfacl %s: %v\n%s\nwant\n%s", p, err, out, acl.String())
			}
		}
		if _, ok := x["security.capability"]; ok {
			if caps, err := exec.Command("getcap", mp).Output(); err != nil || !strings.Contains(string(caps), "cap_net_raw=ep") {
				t.Errorf("getcap %s: %q (%v), want cap_net_raw=ep", p, caps, err)
			}
		}
	}
}

// TestTarTextACLs checks the conversion of text ACLs against handmade
// archives: numeric ids convert, the binary form wins over the text, and
// what cannot be converted is refused saying what to do.
func TestTarTextACLs(t *testing.T) {
	archive := func(hdrs ...tar.Header) string {
		p := filepath.Join(t.TempDir(), "root.tar")
		if err := os.WriteFile(p, tarOf(t, hdrs...), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dirWith := func(name string, pax map[string]string) tar.Header {
		return tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: pax, Format: tar.FormatPAX}
	}
	aclOf := func(text string) []byte {
		a, err := posixacl.ParseText(text, nil)
		if err != nil {
			t.Fatal(err)
		}
		return a.Xattr()
	}
	t.Run("numeric ids convert", func(t *testing.T) {
		const text = "user::rwx\ngroup::r-x\ngroup:4:r-x\nmask::r-x\nother::r-x\n"
		b, err := Open(context.Background(), archive(
			dirWith("var/log/journal/", map[string]string{"SCHILY.acl.access": text, "SCHILY.acl.default": text}),
			dirWith("srv/joe/", map[string]string{"SCHILY.acl.access": "user::rwx,user:1001:rw-,group::---,mask::rw-,other::---"}),
			// A later entry of the same path replaces the earlier's ACLs.
			dirWith("srv/replaced/", map[string]string{"SCHILY.acl.access": "user::rwx,user:7:rw-,group::---,mask::rw-,other::---"}),
			dirWith("srv/replaced/", nil),
		), Options{TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		want := map[string]map[string][]byte{
			"var/log/journal": {"system.posix_acl_access": journalACL, "system.posix_acl_default": journalACL},
			"srv/joe":         {"system.posix_acl_access": aclOf("u::rwx,u:1001:rw-,g::---,m::rw-,o::---")},
		}
		for _, e := range b.Root.Entries() {
			if !sameXattrs(e.Xattrs, want[e.Path]) {
				t.Errorf("%s: %q, want %q", e.Path, e.Xattrs, want[e.Path])
			}
		}
	})
	t.Run("binary wins over text", func(t *testing.T) {
		b, err := Open(context.Background(), archive(
			dirWith("var/log/journal/", map[string]string{"SCHILY.acl.access": "user::rwx\ngroup::r-x\ngroup:adm:r-x\nmask::r-x\nother::r-x\n",
				"SCHILY.xattr.system.posix_acl_access": string(journalACL)}),
		), Options{TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if e, _ := b.Root.Get("var/log/journal"); !bytes.Equal(e.Xattrs["system.posix_acl_access"], journalACL) || len(e.Xattrs) != 1 {
			t.Errorf("got %q, want the binary ACL alone", e.Xattrs)
		}
	})
	for _, tc := range []struct {
		name string
		pax  map[string]string
		want []string
	}{
		{"named group", map[string]string{"SCHILY.acl.access": "user::rwx\ngroup::r-x\ngroup:adm:r-x\nmask::r-x\nother::r-x\n"},
			[]string{"srv/x", "system.posix_acl_access", "only as text", `"adm"`, "tar --xattrs --xattrs-include='*'"}},
		{"text the kernel refuses", map[string]string{"SCHILY.acl.default": "user::rwx,user:0:r-x,group::r-x,other::---"},
			[]string{"srv/x", "system.posix_acl_default", "without a mask"}},
		{"malformed binary ACL", map[string]string{"SCHILY.xattr.system.posix_acl_access": "\x01\x00\x00\x00"},
			[]string{"srv/x", "SCHILY.xattr.system.posix_acl_access", "version 2"}},
		{"NFSv4 ACL", map[string]string{"SCHILY.acl.ace": "owner@:rwxp::allow"},
			[]string{"srv/x", "SCHILY.acl.ace", "NFSv4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(context.Background(), archive(dirWith("srv/x/", tc.pax)), Options{TempDir: t.TempDir()})
			if err == nil {
				b.Close()
			}
			for _, w := range tc.want {
				fsimagetest.WantErrorMentioning(t, err, w)
			}
		})
	}
}
