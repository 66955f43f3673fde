package ext4

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
)

// stage builds a directory with one of every kind of inode the reader must
// handle and returns its path.
func stage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "etc/deep/er"), 0o750))
	must(os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("lekiwi\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "suid"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(dir, "suid"), 0o4755|os.ModeSetuid))
	must(syscall.Chmod(filepath.Join(dir, "suid"), 0o4755))
	must(os.Symlink("etc/hostname", filepath.Join(dir, "fast")))
	must(os.Symlink(strings.Repeat("long/", 30)+"target", filepath.Join(dir, "slow")))
	must(os.Link(filepath.Join(dir, "etc/hostname"), filepath.Join(dir, "hard")))
	must(os.Lchown(filepath.Join(dir, "etc/hostname"), 1000, 1001))
	// A sparse file: 4 KiB of data after a 5 MiB hole needs indirect
	// blocks (block maps) or a multi-extent file (extents).
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("z"), 4096), 5<<20)
	must(err)
	must(f.Close())
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	must(os.WriteFile(filepath.Join(dir, "big"), big, 0o600))
	for i := 0; i < 80; i++ { // enough names for an htree directory
		must(os.WriteFile(filepath.Join(dir, "etc/deep", strings.Repeat("n", 40)+string(rune('A'+i%26))+string(rune('a'+i/26))), nil, 0o644))
	}
	must(syscall.Setxattr(filepath.Join(dir, "suid"), "user.note", []byte("hello"), 0))
	// More than an inode holds: mke2fs puts these in an attribute block.
	must(syscall.Setxattr(filepath.Join(dir, "big"), "user.big", bytes.Repeat([]byte("v"), 300), 0))
	acl := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // user::rwx group::r-x
		8, 0, 5, 0, 4, 0, 0, 0, 0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff} // group:4:r-x mask::r-x other::r-x
	must(syscall.Setxattr(filepath.Join(dir, "etc/deep"), "system.posix_acl_access", acl, 0))
	must(syscall.Setxattr(filepath.Join(dir, "etc/deep"), "system.posix_acl_default", acl, 0))
	if os.Geteuid() == 0 {
		must(syscall.Mknod(filepath.Join(dir, "tty"), syscall.S_IFCHR|0o620, int((4<<8)|5)))
		must(syscall.Mknod(filepath.Join(dir, "disk"), syscall.S_IFBLK|0o660, int((259<<8)|(1&0xff)|((300&0xfff00)<<12))))
		must(syscall.Mknod(filepath.Join(dir, "fifo"), syscall.S_IFIFO|0o644, 0))
		must(syscall.Setxattr(filepath.Join(dir, "suid"), "security.capability",
			[]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	}
	return dir
}

func mkfs(t *testing.T, dir string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian e2fsprogs): cannot build ext4 fixtures")
	}
	img := filepath.Join(t.TempDir(), "fs.ext4")
	cmd := exec.Command("mkfs.ext4", append(append([]string{"-q", "-F", "-L", "rootfs", "-d", dir}, args...), img, "32M")...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %v: %v\n%s", args, err, out)
	}
	return img
}

func TestWalkMatchesStagedDirectory(t *testing.T) {
	dir := stage(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ext4 defaults (extents, 64bit, metadata_csum, 4k)", nil},
		{"1k blocks no journal", []string{"-b", "1024", "-O", "^has_journal"}},
		{"block maps (no extents)", []string{"-O", "^extent,^64bit"}},
		{"ext2", []string{"-t", "ext2"}},
		{"128-byte inodes", []string{"-I", "128"}},
		{"inline data", []string{"-O", "inline_data"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, size := fsimagetest.Open(t, mkfs(t, dir, tc.args...))
			fs, err := Open(f, size)
			if err != nil {
				t.Fatal(err)
			}
			if fs.Label() != "rootfs" {
				t.Errorf("label %q", fs.Label())
			}
			seen := map[string]bool{}
			inodeOf := map[uint32]string{}
			err = fs.Walk(func(p string, in *Inode) error {
				seen[p] = true
				if p == "lost+found" || strings.HasPrefix(p, "lost+found/") {
					return nil
				}
				host := filepath.Join(dir, p)
				var hs syscall.Stat_t
				if err := syscall.Lstat(host, &hs); err != nil {
					t.Errorf("%s in image but not staged: %v", p, err)
					return nil
				}
				if uint32(in.Mode) != hs.Mode {
					t.Errorf("%s: mode %#o, staged %#o", p, in.Mode, hs.Mode)
				}
				if p != "." && (in.UID != hs.Uid || in.GID != hs.Gid) {
					t.Errorf("%s: owner %d:%d, staged %d:%d", p, in.UID, in.GID, hs.Uid, hs.Gid)
				}
				if p != "." && in.ModTime.Unix() != hs.Mtim.Sec {
					t.Errorf("%s: mtime %v, staged %d", p, in.ModTime, hs.Mtim.Sec)
				}
				if prev, ok := inodeOf[in.Num]; ok && in.Type() != TypeDir {
					if p != "hard" || prev != "etc/hostname" {
						t.Errorf("%s shares inode %d with %s", p, in.Num, prev)
					}
				}
				inodeOf[in.Num] = p
				switch in.Type() {
				case TypeRegular:
					want, _ := os.ReadFile(host)
					r, err := fs.Reader(in)
					if err != nil {
						t.Fatalf("%s: %v", p, err)
					}
					got, err := io.ReadAll(r)
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s: content differs (%d bytes vs %d staged, err %v)", p, len(got), len(want), err)
					}
				case TypeSymlink:
					want, _ := os.Readlink(host)
					got, err := fs.Readlink(in)
					if err != nil || got != want {
						t.Errorf("%s: link %q, staged %q (%v)", p, got, want, err)
					}
				case TypeChar, TypeBlock:
					maj, min := in.Device()
					if uint64(maj) != uint64(unixMajor(hs.Rdev)) || uint64(min) != uint64(unixMinor(hs.Rdev)) {
						t.Errorf("%s: device %d:%d, staged %d:%d", p, maj, min, unixMajor(hs.Rdev), unixMinor(hs.Rdev))
					}
				}
				x, err := fs.Xattrs(in)
				if err != nil {
					t.Errorf("%s xattrs: %v", p, err)
				}
				for _, name := range []string{"user.note", "security.capability", "user.big", "system.posix_acl_access", "system.posix_acl_default"} {
					want := make([]byte, 512)
					n, herr := syscall.Getxattr(host, name, want)
					if herr != nil {
						if _, ok := x[name]; ok {
							t.Errorf("%s: unexpected xattr %s", p, name)
						}
						continue
					}
					if !bytes.Equal(x[name], want[:n]) {
						t.Errorf("%s: xattr %s = %x, staged %x", p, name, x[name], want[:n])
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			_ = filepath.WalkDir(dir, func(hp string, _ os.DirEntry, _ error) error {
				rel, _ := filepath.Rel(dir, hp)
				if !seen[filepath.ToSlash(rel)] {
					t.Errorf("staged %s missing from image", rel)
				}
				return nil
			})
		})
	}
}

func unixMajor(dev uint64) uint32 { return uint32((dev >> 8) & 0xfff) }
func unixMinor(dev uint64) uint32 { return uint32((dev & 0xff) | ((dev >> 12) & 0xfff00)) }

func TestOpenRejects(t *testing.T) {
	tiny := fsimagetest.ReadFixture(t, "testdata/tiny.ext4")
	recover := append([]byte(nil), tiny...)
	recover[1024+0x60] |= incompatRecover
	for _, tc := range []struct {
		name, data, want string
	}{
		{"empty", "", "too small"},
		{"no magic", string(make([]byte, 4096)), "no ext2/3/4 superblock"},
		{"needs recovery", string(recover), "run e2fsck"},
		{"truncated", string(tiny[:4096]), "past the end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := strings.NewReader(tc.data)
			fs, err := Open(r, int64(len(tc.data)))
			if err == nil {
				err = fs.Walk(func(string, *Inode) error { return nil })
			}
			fsimagetest.WantErrorMentioning(t, err, tc.want)
		})
	}
}

// FuzzReadExt4 feeds mutated filesystems through everything an import
// does: walk, read every file, link and attribute. It must never panic or
// hang. Besides tiny.ext4, it starts from xattr.ext4, whose attributes and
// ACLs sit in inodes and in attribute blocks (1 KiB blocks): made by
// mkfs.ext4 -b 1024 -N 32 -O ^has_journal -d from a directory holding a
// file with user.note and a 300-byte user.big, a second file with the same
// user.big, a symlink, and a directory with access and default ACLs naming
// a user and a group.
func FuzzReadExt4(f *testing.F) {
	f.Add(fsimagetest.ReadFixture(f, "testdata/xattr.ext4"))
	fsimagetest.FuzzImage(f, "testdata/tiny.ext4", Open, func(fs *FS, enough func() bool) {
		_ = fs.Walk(func(p string, in *Inode) error {
			if enough() {
				return io.EOF
			}
			_, _ = fs.Xattrs(in)
			_, _ = in.Device()
			switch in.Type() {
			case TypeRegular:
				if r, err := fs.Reader(in); err == nil {
					_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<20))
				}
			case TypeSymlink:
				_, _ = fs.Readlink(in)
			}
			return nil
		})
	})
}
