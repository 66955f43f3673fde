package posixacl

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// journalACL is what getxattr(2) returns for system.posix_acl_access of a
// directory after `setfacl -m g:adm:r-x` (adm is gid 4): systemd's
// /var/log/journal on Debian.
const journalACL = "0200000001000700ffffffff04000500ffffffff080005000400000010000500ffffffff20000500ffffffff"

func TestParseXattrAndBack(t *testing.T) {
	raw, _ := hex.DecodeString(journalACL)
	a, err := ParseXattr(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := ACL{{UserObj, 7, 0}, {GroupObj, 5, 0}, {Group, 5, 4}, {Mask, 5, 0}, {Other, 5, 0}}
	if len(a) != len(want) {
		t.Fatalf("got %v, want %v", a, want)
	}
	for i := range a {
		if a[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, a[i], want[i])
		}
	}
	if !bytes.Equal(a.Xattr(), raw) {
		t.Errorf("re-encoded %x, want %s", a.Xattr(), journalACL)
	}
	if got := a.Text(); got != "user::rwx\ngroup::r-x\ngroup:4:r-x\nmask::r-x\nother::r-x\n" {
		t.Errorf("text %q", got)
	}
}

func TestParseTextAsTarWritesIt(t *testing.T) {
	groups := map[string]uint32{"adm": 4}
	resolve := func(tag Tag, name string) (uint32, bool) {
		id, ok := groups[name]
		return id, ok && tag == Group
	}
	raw, _ := hex.DecodeString(journalACL)
	for _, text := range []string{
		"user::rwx\ngroup::r-x\ngroup:adm:r-x\nmask::r-x\nother::r-x\n", // GNU tar --acls
		"u::rwx,g::r-x,g:4:r-x,m::r-x,o::r-x",                           // short form, numeric
		"user::rwx,group:adm:r-x:4,group::r-x,mask::r-x,other::r-x",     // star: id in a 4th field, unsorted
		"# file: x\nuser::rwx\ngroup::r-x\ngroup:adm:r-x\t#effective:r-x\nmask::r-x\nother::r-x\n",
	} {
		a, err := ParseText(text, resolve)
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		if !bytes.Equal(a.Xattr(), raw) {
			t.Errorf("%q gave %x, want %s", text, a.Xattr(), journalACL)
		}
	}
}

func TestRefusesWhatTheKernelRefuses(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"user::rwx,group::r-x", "no other:: entry"},
		{"user::rwx,user:5:r--,group::r-x,other::---", "without a mask"},
		{"user::rwx,user:5:r--,user:5:rw-,group::r-x,mask::rwx,other::---", "out of order or repeated"},
		{"user::rwx,group::r-x,other::---,mask:1:r--", "takes no qualifier"},
		{"user::rwz,group::r-x,other::---", "not r, w, x or -"},
		{"user::rwx,group:staff:r-x,group::r-x,mask::r-x,other::---", `names group "staff", which has no known id`},
		{"owner::rwx", "unknown type"},
	} {
		_, err := ParseText(tc.text, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.text, err, tc.want)
		}
	}
	for _, tc := range []struct{ hex, want string }{
		{"01000000", "no version 2 header"}, // ext4's own on-disk form
		{"0200000001000700", "not a multiple"},
		{"0200000001000700ffffffff20000500ffffffff", "no group:: entry"},
		{"0200000001000800ffffffff04000500ffffffff20000500ffffffff", "beyond rwx"},
		{"0200000040000700ffffffff", "unknown tag"},
	} {
		raw, _ := hex.DecodeString(tc.hex)
		_, err := ParseXattr(raw)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrInvalid mentioning %q", tc.hex, err, tc.want)
		}
	}
}

// TestMatchesTheKernel checks the text parser against what setfacl and the
// kernel make of the same text, when the acl package's tools are here.
func TestMatchesTheKernel(t *testing.T) {
	for _, bin := range []string{"setfacl", "getfattr"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian acl, attr): cannot compare with the kernel", bin)
		}
	}
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	text := "user::rwx,user:1000:r-x,user:7:rw-,group::r-x,group:4:r-x,mask::rwx,other::---"
	for _, args := range [][]string{{"--set", text, dir}, {"-d", "--set", text, dir}} {
		if out, err := exec.Command("setfacl", args...).CombinedOutput(); err != nil {
			t.Skipf("setfacl %v: %v: %s (the temporary directory's filesystem has no ACLs)", args, err, out)
		}
	}
	a, err := ParseText(text, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"system.posix_acl_access", "system.posix_acl_default"} {
		out, err := exec.Command("getfattr", "--only-values", "-n", name, dir).Output()
		if err != nil {
			t.Fatalf("getfattr %s: %v", name, err)
		}
		if !bytes.Equal(out, a.Xattr()) {
			t.Errorf("%s: kernel %x, parsed %x", name, out, a.Xattr())
		}
		if _, err := ParseXattr(out); err != nil {
			t.Errorf("%s from the kernel: %v", name, err)
		}
	}
}
