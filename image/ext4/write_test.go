package ext4

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/image/tree"
)

var epoch = time.Unix(1700000000, 0).UTC()

// sampleTree has every kind of entry a root filesystem holds.
func sampleTree(t *testing.T) *tree.Tree {
	t.Helper()
	tr := tree.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tr.AddBytes("etc/hostname", []byte("robot\n"), 0o644, epoch))
	must(tr.Add(tree.Entry{Path: "usr/bin/sudo", Kind: tree.File, Mode: 0o755 | fs.ModeSetuid, UID: 0, GID: 0, ModTime: epoch, Size: 5,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("sudo!")), nil }}))
	must(tr.Add(tree.Entry{Path: "usr/bin/ping", Kind: tree.File, Mode: 0o755, ModTime: epoch, Size: 4,
		Xattrs: map[string][]byte{"security.capability": {1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		Open:   func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("ping")), nil }}))
	must(tr.Add(tree.Entry{Path: "usr/bin/sudoedit", Kind: tree.Hardlink, Link: "usr/bin/sudo", ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "bin", Kind: tree.Symlink, Link: "usr/bin", Mode: 0o777, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "etc/long", Kind: tree.Symlink, Link: strings.Repeat("x/", 50) + "end", Mode: 0o777, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "dev/null", Kind: tree.CharDevice, Mode: 0o666, Major: 1, Minor: 3, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "dev/big", Kind: tree.BlockDevice, Mode: 0o660, Major: 259, Minor: 300, GID: 6, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "run/fifo", Kind: tree.FIFO, Mode: 0o600, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "tmp", Kind: tree.Dir, Mode: 0o777 | fs.ModeSticky, ModTime: epoch}))
	must(tr.Add(tree.Entry{Path: "home/pi", Kind: tree.Dir, Mode: 0o750, UID: 1000, GID: 1000, ModTime: epoch}))
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+7) // 3 MiB + 112 bytes
	must(tr.AddBytes("var/big.bin", big, 0o600, epoch))
	must(tr.AddBytes("var/empty", nil, 0o644, epoch))
	for i := 0; i < 400; i++ { // a directory of several blocks
		must(tr.AddBytes("usr/share/many/file-with-a-rather-long-name-"+strings.Repeat("z", i%40)+string(rune('a'+i%26))+"-"+itoa(i), []byte(itoa(i)), 0o644, epoch))
	}
	return tr
}

func itoa(i int) string {
	return strings.TrimSpace(strings.Replace(string(rune('0'+i/100))+string(rune('0'+i/10%10))+string(rune('0'+i%10)), " ", "", -1))
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v\n%s", req, err, out)
	}
	return string(out)
}

func TestWritePassesE2fsckAndKeepsMetadata(t *testing.T) {
	fsimagetest.NeedTools(t, "e2fsprogs", "e2fsck", "debugfs")
	for _, tc := range []struct {
		name    string
		size    int64
		journal bool
	}{
		{"small-no-journal", 16 << 20, false},
		{"journal", 64 << 20, true},
		{"multi-group", 300 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := fsimagetest.WriteFS(t, Write, tc.size, sampleTree(t), Params{Label: "system_a", UUID: [16]byte{1, 2, 3}, Time: epoch, Journal: tc.journal, ReservedPercent: 5})
			out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
			if err != nil {
				t.Fatalf("e2fsck -fn: %v\n%s", err, out)
			}
			checks := map[string][]string{
				"stat /usr/bin/sudo":     {"Mode:  04755", "Links: 2", "Size: 5"},
				"stat /usr/bin/sudoedit": {"Links: 2"},
				"stat /tmp":              {"Mode:  01777"},
				"stat /home/pi":          {"User:  1000", "Group:  1000", "Mode:  0750"},
				"stat /dev/null":         {"character special", "Device major/minor number: 01:03"},
				"stat /dev/big":          {"block special", "259:300"},
				"stat /run/fifo":         {"FIFO"},
				"stat /bin":              {"symlink", `Fast link dest: "usr/bin"`},
				"stat /etc/long":         {"symlink", "Size: 103"},
				"stat /var/big.bin":      {"Size: 3145840"},
				"ea_list /usr/bin/ping":  {"security.capability"},
				"stat /etc/hostname":     {"mtime: 0x6553f100"},
			}
			for req, wants := range checks {
				got := debugfs(t, img, req)
				for _, w := range wants {
					if !strings.Contains(got, w) {
						t.Errorf("debugfs %q: want %q in\n%s", req, w, got)
					}
				}
			}
			dump := filepath.Join(t.TempDir(), "big")
			debugfs(t, img, "dump /var/big.bin "+dump)
			got, _ := os.ReadFile(dump)
			want := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+7)
			if !bytes.Equal(got, want) {
				t.Errorf("var/big.bin read back differs (%d bytes, want %d)", len(got), len(want))
			}
		})
	}
}

func TestWriteIsReproducible(t *testing.T) {
	sum := func() [32]byte {
		b, err := os.ReadFile(fsimagetest.WriteFS(t, Write, 32<<20, sampleTree(t), Params{UUID: [16]byte{9}, Time: epoch, Journal: true}))
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	if sum() != sum() {
		t.Fatal("two writes of the same tree differ")
	}
}

func TestWriteRefusesWhatDoesNotFit(t *testing.T) {
	tr := tree.New()
	if err := tr.AddBytes("big", make([]byte, 20<<20), 0o644, epoch); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = Write(f, 16<<20, tr, Params{Time: epoch})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("got %v, want ErrNoSpace", err)
	}
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("a refused write wrote %d bytes", st.Size())
	}
}

func TestZeroMetadataRewritesInPlace(t *testing.T) {
	fsimagetest.NeedTools(t, "e2fsprogs", "e2fsck")
	img := fsimagetest.WriteFS(t, Write, 64<<20, sampleTree(t), Params{Time: epoch, Journal: true})
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	small := tree.New()
	if err := small.AddBytes("identity/cert.pem", []byte("cert"), 0o600, epoch); err != nil {
		t.Fatal(err)
	}
	if err := Write(f, 64<<20, small, Params{Time: epoch, Journal: true, ZeroMetadata: true}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after in-place rewrite: %v\n%s", err, out)
	}
}
