package fat

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/image/tree"
)

var epoch = time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)

func bootTree(t *testing.T) *tree.Tree {
	t.Helper()
	tr := tree.New()
	add := func(p string, b []byte) {
		if err := tr.AddBytes(p, b, 0o644, epoch); err != nil {
			t.Fatal(err)
		}
	}
	add("autoboot.txt", []byte("[all]\ntryboot_a_b=1\nboot_partition=2\n"))
	add("CONFIG.TXT", []byte("arm_64bit=1\n"))
	add("cmdline.txt", []byte("console=serial0,115200 root=PARTUUID=x rootwait\n"))
	add("user-data", []byte("#cloud-config\n"))
	add("kernel_2712.img", bytes.Repeat([]byte{0xAB}, 9<<20+17))
	add("overlays/README", []byte("overlays\n"))
	add("overlays/a-very-long-overlay-name-with-dashes.dtbo", []byte("dtbo"))
	add("overlays/a-very-long-overlay-name-with-dashes2.dtbo", []byte("dtbo2"))
	for i := 0; i < 60; i++ {
		add("overlays/many/o"+strings.Repeat("x", i)+".dtbo", []byte{byte(i)})
	}
	return tr
}

func TestWritePassesFsckAndMtools(t *testing.T) {
	fsimagetest.NeedTools(t, "dosfstools/mtools", "fsck.fat", "mtype", "mdir")
	for _, tc := range []struct {
		name string
		typ  Type
		size int64
	}{{"fat16-32MiB", FAT16, 32 << 20}, {"fat32-256MiB", FAT32, 256 << 20}, {"fat32-64MiB", FAT32, 64 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			img := fsimagetest.WriteFS(t, Write, tc.size, bootTree(t), Params{Type: tc.typ, Label: "BOOT_A", VolumeID: 0x1234abcd, Time: epoch})
			out, err := exec.Command("fsck.fat", "-n", "-V", img).CombinedOutput()
			if err != nil || strings.Contains(string(out), "Reclaim") || strings.Contains(string(out), "differences") {
				t.Fatalf("fsck.fat -n: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "FAT"+map[Type]string{FAT16: "16", FAT32: "32"}[tc.typ]) && tc.typ == FAT32 {
				t.Logf("fsck output: %s", out)
			}
			got, err := exec.Command("mtype", "-i", img, "::autoboot.txt").CombinedOutput()
			if err != nil || string(got) != "[all]\ntryboot_a_b=1\nboot_partition=2\n" {
				t.Fatalf("mtype autoboot.txt: %v %q", err, got)
			}
			got, err = exec.Command("mtype", "-i", img, "::overlays/a-very-long-overlay-name-with-dashes2.dtbo").CombinedOutput()
			if err != nil || string(got) != "dtbo2" {
				t.Fatalf("mtype long name: %v %q", err, got)
			}
			dir, err := exec.Command("mdir", "-i", img, "::").CombinedOutput()
			if err != nil || !strings.Contains(string(dir), "BOOT_A") || !strings.Contains(string(dir), "kernel_2712.img") {
				t.Fatalf("mdir: %v\n%s", err, dir)
			}

			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fsys, err := Open(f, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if fsys.Type() != tc.typ || fsys.Label != "BOOT_A" {
				t.Errorf("Open: type %d label %q", fsys.Type(), fsys.Label)
			}
			k, err := fsys.ReadFile("KERNEL_2712.IMG")
			if err != nil || !bytes.Equal(k, bytes.Repeat([]byte{0xAB}, 9<<20+17)) {
				t.Fatalf("ReadFile kernel: %v (%d bytes)", err, len(k))
			}
			if b, err := fsys.ReadFile("overlays/many/oxxx.dtbo"); err != nil || !bytes.Equal(b, []byte{3}) {
				t.Fatalf("ReadFile nested: %v %v", err, b)
			}
			if err := fsys.Overwrite(f, "user-data", []byte("#cloud-confiG")); err == nil {
				t.Fatal("Overwrite with another length succeeded")
			}
			if err := fsys.Overwrite(f, "user-data", []byte("#CLOUD-CONFIG\n")); err != nil {
				t.Fatal(err)
			}
			got, _ = exec.Command("mtype", "-i", img, "::user-data").CombinedOutput()
			if string(got) != "#CLOUD-CONFIG\n" {
				t.Fatalf("after Overwrite mtype says %q", got)
			}
			if out, err := exec.Command("fsck.fat", "-n", img).CombinedOutput(); err != nil {
				t.Fatalf("fsck.fat after Overwrite: %v\n%s", err, out)
			}
		})
	}
}

func TestWriteRefusesWhatFATCannotHold(t *testing.T) {
	tr := tree.New()
	if err := tr.Add(tree.Entry{Path: "link", Kind: tree.Symlink, Link: "x"}); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
	defer f.Close()
	if err := Write(f, 32<<20, tr, Params{Type: FAT16}); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlink on FAT: %v", err)
	}
	big := tree.New()
	if err := big.AddBytes("big", make([]byte, 40<<20), 0o644, epoch); err != nil {
		t.Fatal(err)
	}
	if err := Write(f, 32<<20, big, Params{Type: FAT16}); err == nil {
		t.Fatal("40 MiB file fit in 32 MiB")
	}
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Errorf("refused writes wrote %d bytes", st.Size())
	}
}

func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	img := filepath.Join(dir, "seed.img")
	fh, _ := os.Create(img)
	fh.Truncate(32 << 20)
	tr := tree.New()
	tr.AddBytes("autoboot.txt", []byte("[all]\n"), 0o644, epoch)
	tr.AddBytes("d/long-name-file.txt", []byte("x"), 0o644, epoch)
	if err := Write(fh, 32<<20, tr, Params{Type: FAT16, Label: "X", Time: epoch}); err != nil {
		f.Fatal(err)
	}
	head := make([]byte, 64<<10)
	fh.ReadAt(head, 0)
	fh.Close()
	f.Add(head)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		fsys, err := Open(r, int64(len(b))+32<<20)
		if err != nil {
			return
		}
		fsys.ReadDir("")
		fsys.ReadFile("autoboot.txt")
		fsys.ReadFile("d/long-name-file.txt")
	})
}
