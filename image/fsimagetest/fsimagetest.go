// Package fsimagetest holds what the tests of the filesystem and disk image
// code share: skipping when a Debian tool that builds or checks a fixture is
// missing, running a filesystem writer on a fresh file, making a GPT disk
// to fill, opening an image with its size, loading a testdata fixture,
// fuzzing a reader from a seed, mounting an image to ask the kernel, and
// checking that a refusal says why. Every helper fails the test itself
// instead of returning an error, so that the tests read as what they check.
package fsimagetest

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/lekiwi/heartbeat/image/tree"
)

// NeedTools skips the test unless every one of bins is on PATH; debianPkg
// names the Debian package(s) that provide them, for the skip message.
func NeedTools(t testing.TB, debianPkg string, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (Debian %s): cannot check the filesystem", b, debianPkg)
		}
	}
}

// WriteFS runs a filesystem writer (ext4.Write, fat.Write) with tr and p on
// a file of size bytes in a new temporary directory, as the image builder
// runs it on a partition, and returns the file's path.
func WriteFS[P any](t testing.TB, write func(io.WriterAt, int64, *tree.Tree, P) error, size int64, tr *tree.Tree, p P) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := write(f, size, tr, p); err != nil {
		t.Fatal(err)
	}
	return img
}

// DiskGUID is the GPT disk GUID GPTDisk writes, for tests that check what a
// reader found.
const DiskGUID = "5B1E6A4C-1C8E-4F55-9D2A-0A0B0C0D0E0F"

// GPTDisk creates a disk image of size bytes at path with go-diskfs: a
// protective MBR and a GPT of 512-byte sectors holding parts under
// DiskGUID. It returns the image open for writing the partitions' contents;
// the file is closed when the test ends, if the test has not closed it.
func GPTDisk(t testing.TB, path string, size int64, parts ...*gpt.Partition) *os.File {
	t.Helper()
	d, err := diskfs.Create(path, size, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Partition(&gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: DiskGUID, Partitions: parts})
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Open opens the image at path for reading until the test ends and returns
// it with its size: the two arguments every image reader here takes.
func Open(t testing.TB, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

// ReadFixture returns the contents of the file at path (a testdata fixture).
func ReadFixture(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzImage seeds f with the fixture at seed and opens every input with
// open, a reader's constructor for untrusted bytes; what opens is handed to
// walk, which goes through what it finds. Neither may panic or hang,
// whatever the bytes. walk calls enough once per entry and stops when it
// says true: a corrupt directory can loop forever, and the budget (10000
// entries) is far more than any seed holds.
func FuzzImage[FS any](f *testing.F, seed string, open func(io.ReaderAt, int64) (FS, error), walk func(fs FS, enough func() bool)) {
	f.Helper()
	f.Add(ReadFixture(f, seed))
	f.Fuzz(func(t *testing.T, data []byte) {
		fs, err := open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		entries := 0
		walk(fs, func() bool {
			entries++
			return entries > 10000
		})
	})
}

// Mount mounts the filesystem image at img through a loop device with the
// given mount options ("ro", "rw"), so a test can check what the kernel
// itself makes of an image or have the kernel write one, and returns the
// mount point and a function that unmounts it (before the test reads back
// what the kernel wrote; it is called when the test ends otherwise). It
// skips the test, saying why, only where mounting cannot work at all: not
// root, or no loop device to be had. Any other mount failure (the kernel
// refusing the filesystem) fails the test.
func Mount(t testing.TB, img, options string) (dir string, unmount func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting an image needs root: the kernel's view of it is not checked")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices here (%v): the kernel's view of the image is not checked", err)
	}
	dir = t.TempDir()
	out, err := exec.Command("mount", "-o", "loop,"+options, img, dir).CombinedOutput()
	if err != nil {
		if msg := string(out); strings.Contains(msg, "loop device") || strings.Contains(msg, "permission denied") || strings.Contains(msg, "not permitted") {
			t.Skipf("cannot mount through a loop device here (%v: %s): the kernel's view of the image is not checked", err, strings.TrimSpace(msg))
		}
		t.Fatalf("mount -o loop,%s %s: %v\n%s", options, img, err, out)
	}
	mounted := true
	unmount = func() {
		if !mounted {
			return
		}
		mounted = false
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	}
	t.Cleanup(unmount)
	return dir, unmount
}

// WantErrorMentioning fails the test unless err is an error whose message
// contains want: a refusal must say what is wrong.
func WantErrorMentioning(t testing.TB, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want it to mention %q", err, want)
	}
}
