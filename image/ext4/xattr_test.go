package ext4

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/image/posixacl"
	"github.com/lekiwi/heartbeat/image/tree"
)

// opener is the Open of a file holding s.
func opener(s string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil }
}

// aclXattr is the getxattr(2) value of the ACL written as text.
func aclXattr(t *testing.T, text string) []byte {
	t.Helper()
	a, err := posixacl.ParseText(text, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a.Xattr()
}

// selinuxLabel is a 243-byte security.selinux value: too big for an inode.
var selinuxLabel = []byte("system_u:object_r:" + strings.Repeat("x", 220) + "_t:s0")

// capNetRaw is security.capability for cap_net_raw+ep.
var capNetRaw = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// sharedFiles is how many files carry the same big attribute set: more than
// the kernel lets one attribute block be shared by.
const sharedFiles = xattrRefcountMax + 76

// xattrTree holds the attribute sets a root filesystem brings, and returns
// the attributes every path must read back with.
func xattrTree(t *testing.T) (*tree.Tree, map[string]map[string][]byte) {
	t.Helper()
	tr := tree.New()
	want := map[string]map[string][]byte{}
	add := func(e tree.Entry) {
		t.Helper()
		e.ModTime = epoch
		if e.Kind == tree.File {
			e.Mode |= 0o644
		}
		if err := tr.Add(e); err != nil {
			t.Fatal(err)
		}
		if len(e.Xattrs) > 0 {
			want[e.Path] = e.Xattrs
		}
	}
	// systemd's /var/log/journal: two 44-byte ACLs, which ext4 stores in
	// 28 bytes each, in the inode.
	journal := aclXattr(t, "user::rwx,group::r-x,group:4:r-x,mask::r-x,other::r-x")
	if len(journal) != 44 {
		t.Fatalf("journal ACL is %d bytes, want 44", len(journal))
	}
	add(tree.Entry{Path: "var/log/journal", Kind: tree.Dir, Mode: 0o755 | fs.ModeSetgid, GID: 101,
		Xattrs: map[string][]byte{"system.posix_acl_access": journal, "system.posix_acl_default": journal}})
	// ACLs with named users and groups, and a user attribute: more than
	// the inode holds.
	team := aclXattr(t, "user::rwx,user:1000:rwx,user:1001:r-x,group::r-x,group:4:r-x,group:27:rwx,mask::rwx,other::---")
	add(tree.Entry{Path: "srv/team", Kind: tree.Dir, Mode: 0o770,
		Xattrs: map[string][]byte{"system.posix_acl_access": team, "system.posix_acl_default": team, "user.purpose": []byte("shared")}})
	add(tree.Entry{Path: "usr/bin/ping", Kind: tree.File, Mode: 0o755, Size: 4, Open: opener("ping"),
		Xattrs: map[string][]byte{"security.capability": capNetRaw}})
	add(tree.Entry{Path: "usr/bin/labelled", Kind: tree.File, Size: 5, Open: opener("label"),
		Xattrs: map[string][]byte{"security.selinux": selinuxLabel, "user.note": []byte("hello"), "user.empty": {}, "trusted.origin": []byte("debian")}})
	add(tree.Entry{Path: "usr/bin/labelled-too", Kind: tree.Hardlink, Link: "usr/bin/labelled"})
	want["usr/bin/labelled-too"] = want["usr/bin/labelled"]
	add(tree.Entry{Path: "usr/bin/link", Kind: tree.Symlink, Link: "labelled", Mode: 0o777,
		Xattrs: map[string][]byte{"security.selinux": selinuxLabel}})
	// The largest value one attribute block holds for this name.
	add(tree.Entry{Path: "usr/share/largest", Kind: tree.File, Size: 0, Open: opener(""),
		Xattrs: map[string][]byte{"security.selinux": bytes.Repeat([]byte("L"), xattrBlockSpace-24)}})
	for i := 0; i < sharedFiles; i++ {
		add(tree.Entry{Path: fmt.Sprintf("usr/share/same/f%04d", i), Kind: tree.File, Size: 0, Open: opener(""),
			Xattrs: map[string][]byte{"security.selinux": selinuxLabel, "user.mime_type": []byte("text/plain")}})
	}
	root, _ := tr.Get(".")
	r := *root
	r.Xattrs = map[string][]byte{"security.selinux": selinuxLabel}
	add(r)
	return tr, want
}

func TestWriteStoresExtendedAttributes(t *testing.T) {
	fsimagetest.NeedTools(t, "e2fsprogs", "e2fsck", "debugfs")
	tr, want := xattrTree(t)
	img := fsimagetest.WriteFS(t, Write, 32<<20, tr, Params{UUID: [16]byte{7}, Time: epoch, Journal: true})
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	t.Run("debugfs", func(t *testing.T) { checkDebugfsXattrs(t, img, want) })
	t.Run("reader", func(t *testing.T) { checkReaderXattrs(t, img, want) })
	t.Run("sharing", func(t *testing.T) { checkSharedBlocks(t, img) })
	t.Run("kernel", func(t *testing.T) {
		fsimagetest.NeedTools(t, "acl, attr, libcap2-bin", "getfattr", "getfacl", "getcap")
		mnt, _ := fsimagetest.Mount(t, img, "ro")
		checkKernelXattrs(t, mnt, want)
	})
	t.Run("reproducible", func(t *testing.T) {
		again, _ := xattrTree(t)
		img2 := fsimagetest.WriteFS(t, Write, 32<<20, again, Params{UUID: [16]byte{7}, Time: epoch, Journal: true})
		if fileSum(t, img) != fileSum(t, img2) {
			t.Error("two writes of the same tree differ")
		}
	})
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// sameXattr compares attribute values, POSIX ACLs by their entries:
// e2fsprogs fills the unused ids of the owner, group, mask and other
// entries with 0 where the kernel uses -1.
func sameXattr(name string, got, want []byte) bool {
	if strings.HasPrefix(name, "system.posix_acl_") {
		g, gerr := posixacl.ParseXattr(got)
		w, werr := posixacl.ParseXattr(want)
		return gerr == nil && werr == nil && g.Text() == w.Text()
	}
	return bytes.Equal(got, want)
}

func sortedNames(x map[string][]byte) []string {
	var out []string
	for k := range x {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkDebugfsXattrs asks e2fsprogs for every attribute of every path, in
// one debugfs run: ea_list for the names, ea_get for the values.
func checkDebugfsXattrs(t *testing.T, img string, want map[string]map[string][]byte) {
	dir := t.TempDir()
	var cmds strings.Builder
	type got struct{ path, name, file string }
	var gets []got
	for _, p := range sortedMapKeys(want) {
		fmt.Fprintf(&cmds, "ea_list %s\n", debugfsPath(p))
		for _, name := range sortedNames(want[p]) {
			f := filepath.Join(dir, fmt.Sprint(len(gets)))
			gets = append(gets, got{p, name, f})
			fmt.Fprintf(&cmds, "ea_get -f %s %s %s\n", f, debugfsPath(p), name)
		}
	}
	cmdFile := filepath.Join(dir, "cmds")
	if err := os.WriteFile(cmdFile, []byte(cmds.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-f", cmdFile, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	listed := map[string][]string{}
	var cur string
	entry := regexp.MustCompile(`^  (\S+) \(\d+\)`)
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(line, "debugfs: ea_list "); ok {
			cur = p
		} else if strings.HasPrefix(line, "debugfs: ") {
			cur = ""
		} else if m := entry.FindStringSubmatch(line); m != nil && cur != "" {
			listed[cur] = append(listed[cur], m[1])
		}
	}
	for p, x := range want {
		names := listed[debugfsPath(p)]
		sort.Strings(names)
		if strings.Join(names, " ") != strings.Join(sortedNames(x), " ") {
			t.Errorf("%s: debugfs ea_list shows %v, want %v", p, names, sortedNames(x))
		}
	}
	for _, g := range gets {
		v, err := os.ReadFile(g.file)
		if err != nil {
			t.Errorf("%s %s: debugfs ea_get wrote nothing (%v)", g.path, g.name, err)
			continue
		}
		if !sameXattr(g.name, v, want[g.path][g.name]) {
			t.Errorf("%s %s: debugfs ea_get %q, want %q", g.path, g.name, v, want[g.path][g.name])
		}
	}
}

func sortedMapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func debugfsPath(p string) string {
	if p == "." {
		return "/"
	}
	return "/" + p
}

// checkReaderXattrs reads every attribute back with this package's reader.
func checkReaderXattrs(t *testing.T, img string, want map[string]map[string][]byte) {
	f, size := fsimagetest.Open(t, img)
	fsys, err := Open(f, size)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	err = fsys.Walk(func(p string, in *Inode) error {
		x, err := fsys.Xattrs(in)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		w := want[p]
		if len(x) != len(w) {
			t.Errorf("%s: reader found %v, want %v", p, sortedNames(x), sortedNames(w))
		}
		for name, v := range w {
			if !bytes.Equal(x[name], v) {
				t.Errorf("%s %s: reader %q, want %q", p, name, x[name], v)
			}
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < len(want) {
		t.Errorf("walked %d paths, fewer than the %d with attributes", seen, len(want))
	}
}

// checkSharedBlocks checks that inodes whose attributes beyond the inode
// are the same share blocks, no block more than the kernel's limit, and
// that each block's refcount is the number of inodes using it (e2fsck
// checks that too). The label-only block is the rest of the root's,
// usr/bin/link's and usr/bin/labelled's attributes as well as the shared
// files' (their user.mime_type fits the inode).
func checkSharedBlocks(t *testing.T, img string) {
	f, size := fsimagetest.Open(t, img)
	fsys, err := Open(f, size)
	if err != nil {
		t.Fatal(err)
	}
	users := map[uint64]map[uint32]bool{}
	err = fsys.Walk(func(p string, in *Inode) error {
		if in.fileACL != 0 {
			if users[in.fileACL] == nil {
				users[in.fileACL] = map[uint32]bool{}
			}
			users[in.fileACL][in.Num] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var counts []int
	for blk, inodes := range users {
		b, err := fsys.readBlock(blk)
		if err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint32(b[xhRefcount:]); int(got) != len(inodes) {
			t.Errorf("attribute block %d: refcount %d, used by %d inodes", blk, got, len(inodes))
		}
		counts = append(counts, len(inodes))
	}
	sort.Sort(sort.Reverse(sort.IntSlice(counts)))
	labelled := sharedFiles + 3
	want := []int{xattrRefcountMax, labelled - xattrRefcountMax, 1, 1} // and srv/team's, usr/share/largest's
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("attribute blocks are used by %v inodes, want %v", counts, want)
	}
}

// checkKernelXattrs reads every attribute through the kernel's ext4 and
// asks getfacl and getcap what they make of the ACLs and the capability.
func checkKernelXattrs(t *testing.T, mnt string, want map[string]map[string][]byte) {
	out, err := exec.Command("getfattr", "--absolute-names", "-R", "-h", "-d", "-m", "-", "-e", "hex", mnt).Output()
	if err != nil {
		t.Fatalf("getfattr: %v", err)
	}
	got := map[string]map[string][]byte{}
	var cur string
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(line, "# file: "); ok {
			rel, _ := filepath.Rel(mnt, p)
			cur, got[rel] = rel, map[string][]byte{}
		} else if name, val, ok := strings.Cut(line, "="); ok {
			v, err := hex.DecodeString(strings.TrimPrefix(val, "0x"))
			if err != nil {
				t.Fatalf("getfattr line %q: %v", line, err)
			}
			got[cur][name] = v
		}
	}
	for _, p := range sortedMapKeys(want) {
		if fmt.Sprint(sortedNames(got[p])) != fmt.Sprint(sortedNames(want[p])) {
			t.Errorf("%s: the kernel lists %v, want %v", p, sortedNames(got[p]), sortedNames(want[p]))
		}
		for name, v := range want[p] {
			if !bytes.Equal(got[p][name], v) {
				t.Errorf("%s %s: the kernel reads %x, want %x", p, name, got[p][name], v)
			}
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok && len(got[p]) > 0 {
			t.Errorf("%s: the kernel lists %v, want none", p, sortedNames(got[p]))
		}
	}
	acl, err := exec.Command("getfacl", "-n", "--absolute-names", filepath.Join(mnt, "var/log/journal")).Output()
	if err != nil {
		t.Fatalf("getfacl: %v", err)
	}
	for _, line := range []string{"group:4:r-x", "mask::r-x", "default:group:4:r-x", "default:other::r-x"} {
		if !strings.Contains(string(acl), "\n"+line+"\n") {
			t.Errorf("getfacl /var/log/journal: no %q in\n%s", line, acl)
		}
	}
	caps, err := exec.Command("getcap", filepath.Join(mnt, "usr/bin/ping")).Output()
	if err != nil || !strings.Contains(string(caps), "cap_net_raw=ep") {
		t.Errorf("getcap usr/bin/ping: %q (%v), want cap_net_raw=ep", caps, err)
	}
}

func TestWriteRefusesAttributesThatDoNotFit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		xattrs map[string][]byte
		want   []string
	}{
		{"value larger than a block", map[string][]byte{"security.selinux": make([]byte, xattrBlockSpace-23)},
			[]string{"usr/bin/big", "security.selinux", "4037-byte value", "4036 bytes", "ea_inode"}},
		{"set larger than a block", map[string][]byte{"user.a": make([]byte, 2100), "user.b": make([]byte, 2100)},
			[]string{"usr/bin/big", "user.a, user.b", "need 4240 bytes", "4060"}},
		{"ACL in ext4's own form", map[string][]byte{"system.posix_acl_access": {1, 0, 0, 0, 1, 0, 7, 0}},
			[]string{"usr/bin/big", "system.posix_acl_access", "version 2"}},
		{"ACL the kernel refuses", map[string][]byte{"system.posix_acl_access": aclXattr(t, "user::rwx,group::r-x,other::---")[:12]},
			[]string{"system.posix_acl_access", "no group:: entry"}},
		{"unknown namespace", map[string][]byte{"os2.name": []byte("x")},
			[]string{"usr/bin/big", `"os2.name"`, "namespace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := tree.New()
			if err := tr.Add(tree.Entry{Path: "usr/bin/big", Kind: tree.File, Mode: 0o755, ModTime: epoch, Open: opener(""), Xattrs: tc.xattrs}); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(t.TempDir(), "fs.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = Write(f, 16<<20, tr, Params{Time: epoch})
			for _, w := range tc.want {
				fsimagetest.WantErrorMentioning(t, err, w)
			}
			if st, _ := f.Stat(); st.Size() != 0 {
				t.Errorf("a refused write wrote %d bytes", st.Size())
			}
		})
	}
}

// TestEstimateCountsAttributeBlocks sizes a filesystem the way the image
// builder does, with no headroom at all, for thousands of files that each
// need an attribute block of their own (and more that share): the tree
// must fit, and must not fit in the size the estimate would give without
// its attribute blocks.
func TestEstimateCountsAttributeBlocks(t *testing.T) {
	tr := tree.New()
	const distinct, sharing = 3000, 2000
	for i := 0; i < distinct; i++ {
		label := append([]byte(fmt.Sprintf("system_u:object_r:f%04d_t:s0:", i)), selinuxLabel...)
		if err := tr.Add(tree.Entry{Path: fmt.Sprintf("srv/d%02d/file-%04d", i%30, i), Kind: tree.File, Mode: 0o644, ModTime: epoch,
			Size: 100, Open: opener(strings.Repeat("x", 100)), Xattrs: map[string][]byte{"security.selinux": label}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < sharing; i++ { // one directory of many blocks, two shared attribute blocks
		if err := tr.Add(tree.Entry{Path: fmt.Sprintf("usr/share/same/a-rather-long-file-name-%04d", i), Kind: tree.File, Mode: 0o644, ModTime: epoch,
			Open: opener(""), Xattrs: map[string][]byte{"security.selinux": selinuxLabel}}); err != nil {
			t.Fatal(err)
		}
	}
	data, inodes := Estimate(tr)
	xattrBlocks := int64(distinct + (sharing+xattrRefcountMax-1)/xattrRefcountMax)
	withoutXattrs, _ := Estimate(stripXattrs(t, tr))
	if data-withoutXattrs != xattrBlocks*BlockSize {
		t.Fatalf("Estimate counts %d bytes for attribute blocks, want %d blocks", data-withoutXattrs, xattrBlocks)
	}
	sizeFor := func(data int64) int64 {
		size := data
		for i := 0; i < 10; i++ {
			size = (data + Overhead(size, inodes, true) + BlockSize - 1) / BlockSize * BlockSize
		}
		return size
	}
	write := func(size int64) error {
		f, err := os.Create(filepath.Join(t.TempDir(), "fs.img"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		return Write(f, size, tr, Params{Time: epoch, Journal: true})
	}
	if err := write(sizeFor(data)); err != nil {
		t.Errorf("the tree does not fit the %d bytes its estimate asks for: %v", sizeFor(data), err)
	}
	if err := write(sizeFor(withoutXattrs)); !errors.Is(err, ErrNoSpace) {
		t.Errorf("the tree fits even without its %d attribute blocks (err %v): this test no longer shows they are counted", xattrBlocks, err)
	}
}

func stripXattrs(t *testing.T, tr *tree.Tree) *tree.Tree {
	out := tree.New()
	for _, e := range tr.Entries() {
		c := *e
		c.Xattrs = nil
		if err := out.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestAttributeBlockMatchesMke2fs lays out attributes that each need the
// block and compares the block byte for byte with the one mke2fs -d writes
// for the same attributes: entry order, value placement, entry hashes, the
// block hash and the ACL conversion all as e2fsprogs has them.
func TestAttributeBlockMatchesMke2fs(t *testing.T) {
	fsimagetest.NeedTools(t, "e2fsprogs", "mkfs.ext4")
	acl := aclXattr(t, "user::rwx,user:1000:r-x,user:1001:r-x,user:1002:r-x,user:1003:r-x,user:1004:r-x,user:1005:r-x,"+
		"user:1006:r-x,user:1007:r-x,user:1008:r-x,group::r-x,mask::r-x,other::---")
	attrs := map[string][]byte{
		"user.a":                  bytes.Repeat([]byte("a"), 100),
		"user.bb":                 bytes.Repeat([]byte("b"), 121),
		"user.label":              selinuxLabel,
		"system.posix_acl_access": acl,
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range sortedNames(attrs) {
		if err := syscall.Setxattr(file, name, attrs[name], 0); err != nil {
			t.Skipf("setxattr %s on %s: %v (the temporary directory's filesystem cannot hold it)", name, dir, err)
		}
	}
	img := mkfs(t, dir, "-b", "4096", "-I", "256", "-O", "^metadata_csum")
	f, size := fsimagetest.Open(t, img)
	fsys, err := Open(f, size)
	if err != nil {
		t.Fatal(err)
	}
	var theirs []byte
	err = fsys.Walk(func(p string, in *Inode) error {
		if p == "f" {
			theirs, err = fsys.readBlock(in.fileACL)
		}
		return err
	})
	if err != nil || theirs == nil {
		t.Fatalf("no attribute block for f in the mke2fs image (%v)", err)
	}
	ibody, ours, err := layoutXattrs(attrs)
	if err != nil {
		t.Fatal(err)
	}
	if ibody != nil {
		t.Fatalf("attributes expected all in the block went partly into the inode")
	}
	binary.LittleEndian.PutUint32(ours[xhRefcount:], 1)
	// mke2fs leaves h_hash 0 (the kernel fills it in when it rewrites the
	// block; TestAttributeBlockMatchesTheKernel compares it).
	binary.LittleEndian.PutUint32(ours[xhHash:], 0)
	if !bytes.Equal(ours, theirs) {
		for i := range ours {
			if ours[i] != theirs[i] {
				t.Fatalf("attribute block differs from mke2fs's from byte %d:\nours   %x\nmke2fs %x", i, ours[i:min(i+32, len(ours))], theirs[i:min(i+32, len(theirs))])
			}
		}
	}
}

// TestAttributeBlockMatchesTheKernel has the kernel's ext4 write the same
// attributes as TestAttributeBlockMatchesMke2fs, in the same order, and
// compares its block with ours, h_hash included.
func TestAttributeBlockMatchesTheKernel(t *testing.T) {
	fsimagetest.NeedTools(t, "e2fsprogs", "mkfs.ext4")
	attrs := map[string][]byte{
		"user.a":     bytes.Repeat([]byte("a"), 100),
		"user.bb":    bytes.Repeat([]byte("b"), 121),
		"user.label": selinuxLabel,
		"system.posix_acl_access": aclXattr(t, "user::rwx,user:1000:r-x,user:1001:r-x,user:1002:r-x,user:1003:r-x,user:1004:r-x,user:1005:r-x,"+
			"user:1006:r-x,user:1007:r-x,user:1008:r-x,group::r-x,mask::r-x,other::---"),
	}
	img := mkfs(t, t.TempDir(), "-b", "4096", "-I", "256", "-O", "^metadata_csum,^has_journal")
	mnt, unmount := fsimagetest.Mount(t, img, "rw")
	file := filepath.Join(mnt, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ibody, ours, err := layoutXattrs(attrs)
	if err != nil || ibody != nil {
		t.Fatalf("layout: %v (in-inode part %x)", err, ibody)
	}
	// The kernel places each value below the previous one: set them in
	// the order the block lists them.
	for off := xattrBlockHeader; binary.LittleEndian.Uint32(ours[off:]) != 0; off += (xattrEntryHeader + int(ours[off]) + 3) &^ 3 {
		prefix, _ := xattrPrefix(ours[off+xeNameIndex])
		name := prefix + string(ours[off+xeName:off+xeName+int(ours[off+xeNameLen])])
		if err := syscall.Setxattr(file, name, attrs[name], 0); err != nil {
			t.Fatalf("setxattr %s: %v", name, err)
		}
	}
	unmount()
	f, size := fsimagetest.Open(t, img)
	fsys, err := Open(f, size)
	if err != nil {
		t.Fatal(err)
	}
	var theirs []byte
	err = fsys.Walk(func(p string, in *Inode) error {
		if p == "f" {
			theirs, err = fsys.readBlock(in.fileACL)
		}
		return err
	})
	if err != nil || theirs == nil {
		t.Fatalf("no attribute block for f after the kernel wrote it (%v)", err)
	}
	binary.LittleEndian.PutUint32(ours[xhRefcount:], 1)
	if !bytes.Equal(ours, theirs) {
		for i := range ours {
			if ours[i] != theirs[i] {
				t.Fatalf("attribute block differs from the kernel's from byte %d:\nours   %x\nkernel %x", i, ours[i:min(i+32, len(ours))], theirs[i:min(i+32, len(theirs))])
			}
		}
	}
}
