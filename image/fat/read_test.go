package fat

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (Debian dosfstools/mtools): cannot build FAT fixtures", name)
	}
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestWalkReadsWhatMtoolsWrote(t *testing.T) {
	files := map[string][]byte{
		"config.txt":                    []byte("arm_64bit=1\n"),
		"cmdline.txt":                   []byte("console=serial0,115200 root=PARTUUID=abc\n"),
		"start4.elf":                    bytes.Repeat([]byte{0xEB, 0x7F, 0x00}, 70000),
		"overlays/A Long Name.dtbo":     []byte("dtbo"),
		"overlays/deeper/lowercase.dat": []byte("x"),
		"empty":                         nil,
	}
	for _, tc := range []struct {
		name, fatType, sizeKiB string
	}{
		{"FAT32 like Raspberry Pi OS bootfs", "32", "40000"},
		{"FAT16 like the bootconfig partition", "16", "32768"},
		{"FAT12", "12", "2048"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "fs.img")
			run(t, "mkfs.vfat", "-C", "-F", tc.fatType, "-n", "BOOTFS", img, tc.sizeKiB)
			run(t, "mmd", "-i", img, "::overlays", "::overlays/deeper")
			for name, data := range files {
				src := filepath.Join(dir, "src")
				if err := os.WriteFile(src, data, 0o644); err != nil {
					t.Fatal(err)
				}
				stamp := time.Date(2024, 11, 19, 10, 20, 30, 0, time.Local)
				if err := os.Chtimes(src, stamp, stamp); err != nil {
					t.Fatal(err)
				}
				run(t, "mcopy", "-m", "-i", img, src, "::"+name)
			}
			f, size := fsimagetest.Open(t, img)
			fs, err := NewReader(f, size)
			if err != nil {
				t.Fatal(err)
			}
			if fs.Type().String() != "FAT"+tc.fatType || fs.Label() != "BOOTFS" {
				t.Errorf("type %s label %q", fs.Type(), fs.Label())
			}
			got := map[string][]byte{}
			var order []string
			err = fs.Walk(func(e Entry) error {
				order = append(order, e.Path)
				if e.Dir {
					return nil
				}
				if e.ModTime != time.Date(2024, 11, 19, 10, 20, 30, 0, time.UTC) {
					t.Errorf("%s: mtime %v", e.Path, e.ModTime)
				}
				r, err := fs.Open(e)
				if err != nil {
					return err
				}
				got[e.Path], err = io.ReadAll(r)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range files {
				if !bytes.Equal(got[name], want) {
					t.Errorf("%s: got %d bytes, want %d", name, len(got[name]), len(want))
				}
			}
			if len(got) != len(files) {
				t.Errorf("walk found %v", order)
			}
			want := "cmdline.txt config.txt empty overlays overlays/A Long Name.dtbo overlays/deeper overlays/deeper/lowercase.dat start4.elf"
			if strings.Join(order, " ") != want {
				t.Errorf("order %q\nwant  %q", strings.Join(order, " "), want)
			}
		})
	}
}

func TestNewReaderRejects(t *testing.T) {
	tiny := fsimagetest.ReadFixture(t, "testdata/tiny.fat")
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "only 0 bytes"},
		{"zeros", make([]byte, 4096), "no FAT boot sector"},
		{"truncated", tiny[:8192], "truncated image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.data), int64(len(tc.data)))
			fsimagetest.WantErrorMentioning(t, err, tc.want)
		})
	}
}

func FuzzReadFAT(f *testing.F) {
	fsimagetest.FuzzImage(f, "testdata/tiny.fat", NewReader, func(fs *Reader, enough func() bool) {
		_ = fs.Walk(func(e Entry) error {
			if enough() {
				return io.EOF
			}
			if r, err := fs.Open(e); err == nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<20))
			}
			return nil
		})
	})
}
