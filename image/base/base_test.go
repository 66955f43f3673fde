package base

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/tree"
)

// fakeELF is the start of an ELF64 little-endian executable for machine.
func fakeELF(machine uint16) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF\x02\x01\x01")
	h[16] = 2 // ET_EXEC
	h[18], h[19] = byte(machine), byte(machine>>8)
	return append(h, []byte("rest of the binary")...)
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian test peer; see the Makefile's DEB_TEST): %v", tool, err)
		}
	}
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// stageRoot builds a small usrmerged root filesystem with every kind of
// entry an import must carry over.
func stageRoot(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"usr/bin", "usr/sbin", "etc/ssh", "dev", "var/empty", "var/log/journal"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(os.Symlink("usr/bin", filepath.Join(dir, "bin")))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/dash"), fakeELF(0xB7), 0o755))
	must(os.Symlink("dash", filepath.Join(dir, "usr/bin/sh")))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/passwd"), []byte("setuid program"), 0o755))
	must(syscall.Chmod(filepath.Join(dir, "usr/bin/passwd"), 0o4755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/ping"), []byte("capable program"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("lekiwi\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "etc/ssh/key"), []byte("secret"), 0o600))
	must(os.Lchown(filepath.Join(dir, "etc/ssh/key"), 0, 101))
	must(os.Link(filepath.Join(dir, "usr/bin/dash"), filepath.Join(dir, "usr/sbin/dash-link")))
	must(os.Chmod(filepath.Join(dir, "var/empty"), 0o1777))
	must(syscall.Chmod(filepath.Join(dir, "var/empty"), 0o1777))
	must(os.Symlink("/etc/hostname", filepath.Join(dir, "etc/absolute-link")))
	// systemd's journal directory ACLs (group 4 may read), and a user
	// attribute next to a label too big for an inode.
	must(syscall.Setxattr(filepath.Join(dir, "var/log/journal"), "system.posix_acl_access", journalACL, 0))
	must(syscall.Setxattr(filepath.Join(dir, "var/log/journal"), "system.posix_acl_default", journalACL, 0))
	must(syscall.Setxattr(filepath.Join(dir, "etc/hostname"), "user.note", []byte("hello"), 0))
	if os.Geteuid() == 0 {
		must(syscall.Setxattr(filepath.Join(dir, "etc/hostname"), "security.selinux", selinuxLabel, 0))
		must(syscall.Mknod(filepath.Join(dir, "dev/null"), syscall.S_IFCHR|0o666, (1<<8)|3))
		must(syscall.Mknod(filepath.Join(dir, "dev/mmcblk0"), syscall.S_IFBLK|0o660, (179<<8)|0))
		must(syscall.Mknod(filepath.Join(dir, "dev/initctl"), syscall.S_IFIFO|0o600, 0))
		must(syscall.Setxattr(filepath.Join(dir, "usr/bin/ping"), "security.capability",
			[]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	}
	stamp := time.Date(2024, 11, 19, 8, 0, 0, 0, time.UTC)
	_ = filepath.WalkDir(dir, func(p string, _ os.DirEntry, _ error) error {
		_ = lutimes(p, stamp)
		return nil
	})
	return dir
}

func lutimes(p string, ts time.Time) error {
	tv := []syscall.Timeval{syscall.NsecToTimeval(ts.UnixNano()), syscall.NsecToTimeval(ts.UnixNano())}
	st, err := os.Lstat(p)
	if err != nil || st.Mode()&os.ModeSymlink != 0 {
		return err // syscall has no lutimes; symlink times are not compared
	}
	return syscall.Utimes(p, tv)
}

// assertMatchesStaged checks that root holds exactly the staged directory
// with the same content and metadata.
func assertMatchesStaged(t *testing.T, root *tree.Tree, dir string) {
	t.Helper()
	inTree := map[string]bool{}
	for _, e := range root.Entries() {
		inTree[e.Path] = true
	}
	err := filepath.WalkDir(dir, func(hp string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, hp)
		p := filepath.ToSlash(rel)
		delete(inTree, p)
		e, ok := root.Get(p)
		if !ok {
			t.Errorf("%s: staged but missing from the tree", p)
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(hp, &st); err != nil {
			return err
		}
		if p != "." {
			if e.UID != st.Uid || e.GID != st.Gid {
				t.Errorf("%s: owner %d:%d, staged %d:%d", p, e.UID, e.GID, st.Uid, st.Gid)
			}
			if st.Mode&syscall.S_IFMT != syscall.S_IFLNK && e.ModTime.Unix() != st.Mtim.Sec {
				t.Errorf("%s: mtime %v, staged %v", p, e.ModTime, time.Unix(st.Mtim.Sec, 0).UTC())
			}
		}
		if got, want := uint32(modeBack(e.Mode)), st.Mode&0o7777; got != want && st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			t.Errorf("%s: mode %#o, staged %#o", p, got, want)
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			want, _ := os.ReadFile(hp)
			if e.Kind == tree.Hardlink {
				if p != "usr/sbin/dash-link" || e.Link != "usr/bin/dash" {
					t.Errorf("%s: unexpected hard link to %s", p, e.Link)
				}
				return nil
			}
			got, err := root.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) || e.Size != int64(len(want)) {
				t.Errorf("%s: content %q (size %d, %v), staged %q", p, got, e.Size, err, want)
			}
		case syscall.S_IFLNK:
			want, _ := os.Readlink(hp)
			if e.Kind != tree.Symlink || e.Link != want {
				t.Errorf("%s: %s to %q, staged symlink to %q", p, e.Kind, e.Link, want)
			}
		case syscall.S_IFCHR, syscall.S_IFBLK:
			kind := tree.CharDevice
			if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
				kind = tree.BlockDevice
			}
			maj, min := uint32(st.Rdev>>8&0xfff), uint32(st.Rdev&0xff|(st.Rdev>>12)&0xfff00)
			if e.Kind != kind || e.Major != maj || e.Minor != min {
				t.Errorf("%s: %s %d:%d, staged %s %d:%d", p, e.Kind, e.Major, e.Minor, kind, maj, min)
			}
		case syscall.S_IFIFO:
			if e.Kind != tree.FIFO {
				t.Errorf("%s: %s, staged fifo", p, e.Kind)
			}
		case syscall.S_IFDIR:
			if e.Kind != tree.Dir {
				t.Errorf("%s: %s, staged directory", p, e.Kind)
			}
		}
		if want := hostXattrs(t, hp); !sameXattrs(e.Xattrs, want) {
			t.Errorf("%s: xattrs %q, staged %q", p, e.Xattrs, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range inTree {
		t.Errorf("%s: in the tree but not staged", p)
	}
}

func modeBack(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// bootFiles go on the synthetic image's bootfs.
var bootFiles = map[string]string{
	"config.txt":  "arm_64bit=1\n[all]\n",
	"cmdline.txt": "console=serial0,115200 root=PARTUUID=1234abcd-02 rootfstype=ext4\n",
	"start4.elf":  strings.Repeat("fake firmware ", 5000),
}

const partSectors = 131072 // 64 MiB

// piImage builds a Raspberry Pi OS-shaped image with standard tools:
// MBR, FAT32 "bootfs" at firstSector, ext4 "rootfs" after it.
func piImage(t *testing.T, root string, firstSector int, bootType, rootType string) string {
	t.Helper()
	need(t, "sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "truncate", "dd")
	dir := t.TempDir()
	img := filepath.Join(dir, "2024-11-19-raspios-bookworm-arm64-lite.img")
	rootStart := firstSector + partSectors
	sh(t, "truncate", "-s", fmt.Sprint((rootStart+partSectors)*512), img)
	script := fmt.Sprintf("label: dos\nlabel-id: 0x1234abcd\nstart=%d, size=%d, type=%s\nstart=%d, size=%d, type=%s\n",
		firstSector, partSectors, bootType, rootStart, partSectors, rootType)
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", img)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	boot := filepath.Join(dir, "boot.fat")
	sh(t, "mkfs.vfat", "-C", "-F", "32", "-n", "bootfs", boot, fmt.Sprint(partSectors/2))
	for name, content := range bootFiles {
		src := filepath.Join(dir, "src")
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		sh(t, "mcopy", "-i", boot, src, "::"+name)
	}
	rootfs := filepath.Join(dir, "root.ext4")
	sh(t, "mkfs.ext4", "-q", "-L", "rootfs", "-d", root, rootfs, fmt.Sprint(partSectors/2)+"k")
	sh(t, "dd", "if="+boot, "of="+img, "bs=512", fmt.Sprint("seek=", firstSector), "conv=notrunc,sparse", "status=none")
	sh(t, "dd", "if="+rootfs, "of="+img, "bs=512", fmt.Sprint("seek=", rootStart), "conv=notrunc,sparse", "status=none")
	return img
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left behind in the temp dir: %s", e.Name())
	}
}

func TestOpenDiskImage(t *testing.T) {
	root := stageRoot(t)
	for _, tc := range []struct {
		first    int
		compress string // "", "xz", "zstd"
	}{
		{8192, ""}, {16384, ""}, {8192, "xz"}, {16384, "zstd"},
	} {
		t.Run(fmt.Sprintf("first sector %d %s", tc.first, tc.compress), func(t *testing.T) {
			img := piImage(t, root, tc.first, "c", "83")
			switch tc.compress {
			case "xz":
				need(t, "xz")
				sh(t, "xz", "-T1", "-0", img)
				img += ".xz"
			case "zstd":
				need(t, "zstd")
				sh(t, "zstd", "-q", "--rm", img)
				img += ".zst"
			}
			tmp := t.TempDir()
			var progress bytes.Buffer
			b, err := Open(context.Background(), img, Options{TempDir: tmp, Progress: &progress})
			if err != nil {
				t.Fatal(err)
			}
			if b.Kind != KindDiskImage || b.Arch != "arm64" || b.Boot == nil {
				t.Errorf("kind %v arch %q boot %v", b.Kind, b.Arch, b.Boot)
			}
			wantDesc := fmt.Sprintf("(MBR: bootfs @%d FAT32 64 MiB, rootfs @%d ext4 64 MiB)", tc.first, tc.first+partSectors)
			if !strings.Contains(b.Description, wantDesc) || !strings.HasPrefix(b.Description, "Raspberry Pi OS image 2024-11-19-raspios") {
				t.Errorf("description %q, want it to contain %q", b.Description, wantDesc)
			}
			for name, want := range bootFiles {
				got, err := b.Boot.ReadFile(name)
				if err != nil || string(got) != want {
					t.Errorf("boot %s: %q, %v", name, got, err)
				}
			}
			if b.Boot.Len() != len(bootFiles)+1 {
				t.Errorf("boot tree has %d entries, want %d", b.Boot.Len(), len(bootFiles)+1)
			}
			assertMatchesStaged(t, b.Root, root)
			if tc.compress != "" && !strings.Contains(progress.String(), "decompressed") {
				t.Errorf("no progress reported: %q", progress.String())
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			assertEmptyDir(t, tmp)
			if _, err := b.Boot.ReadFile("config.txt"); tc.compress != "" && err == nil {
				t.Error("a decompressed image's entries still readable after Close")
			}
		})
	}
}

func TestOpenTarball(t *testing.T) {
	need(t, "tar")
	root := stageRoot(t)
	for _, tc := range []struct{ name, flag string }{
		{"rootfs.tar", ""}, {"rootfs.tar.gz", "--gzip"}, {"rootfs.tar.xz", "--xz"}, {"rootfs.tar.zst", "--zstd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), tc.name)
			args := []string{"--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", root, "-cf", out}
			if tc.flag != "" {
				args = append([]string{tc.flag}, args...)
			}
			sh(t, "tar", append(args, ".")...)
			tmp := t.TempDir()
			b, err := Open(context.Background(), out, Options{TempDir: tmp})
			if err != nil {
				t.Fatal(err)
			}
			if b.Kind != KindTarball || b.Arch != "arm64" || b.Boot != nil {
				t.Errorf("kind %v arch %q boot %v", b.Kind, b.Arch, b.Boot)
			}
			assertMatchesStaged(t, b.Root, root)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			assertEmptyDir(t, tmp)
		})
	}
}

// tarOf writes a tar archive of the given headers; regular files get
// their name as content.
func tarOf(t *testing.T, hdrs ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(h.Name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTarballHardlinksPointAtTheFirstPathInTreeOrder(t *testing.T) {
	// Archive order puts the file after its link's name in path order.
	data := tarOf(t,
		tar.Header{Name: "usr/bin/zz", Typeflag: tar.TypeReg, Mode: 0o755},
		tar.Header{Name: "usr/bin/aa", Typeflag: tar.TypeLink, Linkname: "usr/bin/zz"},
		tar.Header{Name: "usr/bin/mm", Typeflag: tar.TypeLink, Linkname: "usr/bin/aa"},
	)
	p := filepath.Join(t.TempDir(), "links.tar")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := Open(context.Background(), p, Options{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	aa, _ := b.Root.Get("usr/bin/aa")
	mm, _ := b.Root.Get("usr/bin/mm")
	zz, _ := b.Root.Get("usr/bin/zz")
	if aa.Kind != tree.File || mm.Link != "usr/bin/aa" || zz.Link != "usr/bin/aa" || zz.Kind != tree.Hardlink {
		t.Fatalf("aa %v, mm %v -> %s, zz %v -> %s", aa.Kind, mm.Kind, mm.Link, zz.Kind, zz.Link)
	}
	if got, _ := b.Root.ReadFile("usr/bin/aa"); string(got) != "usr/bin/zz" || aa.Mode != 0o755 {
		t.Fatalf("aa content %q mode %v", got, aa.Mode)
	}
}

func TestOpenErrors(t *testing.T) {
	need(t, "sfdisk", "mkfs.vfat", "mkfs.ext4")
	root := stageRoot(t)
	dir := t.TempDir()
	good := piImage(t, root, 8192, "c", "83")
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	truncated := write("truncated.img", nil)
	sh(t, "cp", "--sparse=always", good, truncated)
	sh(t, "truncate", "-s", "100M", truncated)
	xzBad := write("bad.img.xz", []byte("\xfd7zXZ\x00garbage that is not xz at all"))
	zstBad := write("bad.img.zst", []byte("\x28\xb5\x2f\xfdgarbage"))
	cut := filepath.Join(dir, "cut.img.zst")
	sh(t, "zstd", "-q", "-o", cut, good)
	zdata, _ := os.ReadFile(cut)
	cut = write("cut.img.zst", zdata[:len(zdata)/2])

	for _, tc := range []struct {
		name, source, want string
	}{
		{"truncated image", truncated, fmt.Sprintf("image ends at %d bytes but partition 2 ends at %d: truncated download?", 100<<20, (8192+2*partSectors)*512)},
		{"no FAT partition", piImage(t, root, 8192, "83", "83"), "no FAT boot partition"},
		{"no ext4 partition", piImage(t, t.TempDir(), 8192, "c", "7"), "no ext4 root partition"},
		{"corrupt xz", xzBad, "not a valid xz file"},
		{"corrupt zst", zstBad, "decompress .zst"},
		{"incomplete zst", cut, "corrupt or incomplete download"},
		{"tarball with ..", write("evil.tar", tarOf(t, tar.Header{Name: "../etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644})), "climbs out of the root"},
		{"hard link with ..", write("evil2.tar", tarOf(t, tar.Header{Name: "x", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"})), "links outside its root"},
		{"hard link to nothing", write("dangling.tar", tarOf(t, tar.Header{Name: "x", Typeflag: tar.TypeLink, Linkname: "nowhere"})), "not in the tarball"},
		{"unknown extension", write("rootfs.bin", []byte("x")), `unknown kind of base (extension ".bin")`},
		{"missing image", filepath.Join(dir, "missing.img.xz"), "no such file"},
		{"missing other", filepath.Join(dir, "missing.qcow2"), "no such file"},
		{"directory", dir, "is a directory"},
		{"missing layout", "oci-layout:" + filepath.Join(dir, "nope"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			b, err := Open(context.Background(), tc.source, Options{TempDir: tmp})
			if err == nil {
				b.Close()
				t.Fatalf("opened %s", tc.source)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\nwant it to contain %q", err, tc.want)
			}
			assertEmptyDir(t, tmp)
		})
	}
}

func TestLooksLikePath(t *testing.T) {
	for s, want := range map[string]bool{
		"registry:5000/debian:bookworm": false,
		"debian:bookworm":               false,
		"ghcr.io/lekiwi/base@sha256:ab": false,
		"localhost:5000/x":              false,
		"./rootfs":                      true,
		"/srv/base.qcow2":               true,
		"base.qcow2":                    true,
	} {
		if got := looksLikePath(s); got != want {
			t.Errorf("looksLikePath(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestFirmwareDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "overlays"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"start4.elf": "firmware", "fixup4.dat": "fixup", "overlays/disable-bt.dtbo": "dtbo"}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("start4.elf", filepath.Join(dir, "start.elf")); err != nil {
		t.Fatal(err)
	}
	files["start.elf"] = "firmware"
	fw, err := FirmwareDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		e, _ := fw.Get(p)
		got, err := fw.ReadFile(p)
		if err != nil || string(got) != want || e.Kind != tree.File || e.Mode != 0o644 {
			t.Errorf("%s: %q %v", p, got, err)
		}
	}
	if fw.Len() != len(files)+2 {
		t.Errorf("%d entries", fw.Len())
	}
	if _, err := FirmwareDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "holds no files") {
		t.Errorf("empty folder: %v", err)
	}
	if _, err := FirmwareDir(filepath.Join(dir, "nope")); err == nil {
		t.Error("missing folder accepted")
	}
}
