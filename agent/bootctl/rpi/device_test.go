package rpi

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

// bootconfigFile copies the built image's bootconfig partition to a file.
func bootconfigFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	built := imagetest.Build(t, dir, imagetest.Options{Description: "bootctl test"})
	plan := built.Plan
	img, err := os.Open(built.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	bc := plan.Part(layout.BootConfig)
	p := filepath.Join(dir, "bootconfig.img")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(img, bc.Start, bc.Size)); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// commitOn opens path with OpenDevice and commits slot b from a trial.
func commitOn(t *testing.T, path string) {
	t.Helper()
	dev, err := OpenDevice(path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dt := t.TempDir()
	WriteBootInfo(dt, BootInfo{Tryboot: true, Partition: layout.BootB})
	ctl, err := New(Options{DeviceTree: dt, BootConfig: dev, Reboot: reboot.Func(func(context.Context, string) error { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	before := make([]byte, dev.Size())
	if _, err := dev.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Commit(context.Background(), bootctl.B); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var changed []int
	for s := 0; s < len(after); s += 512 {
		if !bytes.Equal(before[s:s+512], after[s:s+512]) {
			changed = append(changed, s/512)
		}
	}
	if len(changed) != 1 {
		t.Fatalf("sectors changed by the commit: %v, want exactly one", changed)
	}
	fsys, err := fat.Open(bytes.NewReader(after), int64(len(after)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fsys.ReadFile(AutobootPath)
	if want, _ := RenderAutoboot(bootctl.B); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("autoboot.txt after the commit: %v\n%s", err, got)
	}
	if fsck, err := exec.LookPath("fsck.fat"); err == nil {
		if out, err := exec.Command(fsck, "-n", path).CombinedOutput(); err != nil {
			t.Fatalf("fsck.fat -n: %v\n%s", err, out)
		}
	} else {
		t.Log("fsck.fat not installed (Debian dosfstools): fsck check skipped")
	}
}

func TestBlockDeviceCommitOnFile(t *testing.T) {
	commitOn(t, bootconfigFile(t))
}

func TestBlockDeviceCommitOnLoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed (Debian mount)")
	}
	file := bootconfigFile(t)
	out, err := exec.Command(losetup, "--find", "--show", "--sector-size", "512", file).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device available: %v %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", loop).Run() })
	commitOn(t, loop)
}

func TestBlockDeviceUnalignedIO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev.img")
	ref := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if err := os.WriteFile(p, ref, 0o644); err != nil {
		t.Fatal(err)
	}
	dev, err := OpenDevice(p)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, w := range []struct {
		off  int64
		data string
	}{{0, "A"}, {511, "BC"}, {4095, strings.Repeat("D", 4098)}, {65535, "E"}} {
		if _, err := dev.WriteAt([]byte(w.data), w.off); err != nil {
			t.Fatalf("write at %d: %v", w.off, err)
		}
		copy(ref[w.off:], w.data)
	}
	if _, err := dev.WriteAt([]byte("x"), 65536); err == nil {
		t.Fatal("wrote past the end")
	}
	got := make([]byte, 5000)
	for _, off := range []int64{0, 3, 4090, 61000} {
		n, err := dev.ReadAt(got, off)
		want := ref[off:min(off+5000, int64(len(ref)))]
		if n != len(want) || !bytes.Equal(got[:n], want) || (n < len(got)) != (err == io.EOF) {
			t.Fatalf("read at %d: %d %v", off, n, err)
		}
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
}
