package device

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// benchSys is a fake sysfs the test changes as a technician would: cards in
// and out of readers.
type benchSys struct {
	t    *testing.T
	root string
}

func (b benchSys) set(name, attr, value string) {
	b.t.Helper()
	p := filepath.Join(b.root, "class/block", name, attr)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b benchSys) remove(name string) {
	if err := os.RemoveAll(filepath.Join(b.root, "class/block", name)); err != nil {
		b.t.Fatal(err)
	}
}

func TestWatchReportsInsertedCards(t *testing.T) {
	sys := fakeSys(t,
		disk{name: "sda", dev: "8:0", removable: "0", sectors: "1953525168", parts: map[string]string{"sda1": "8:1"}},
		disk{name: "sdb", dev: "8:16", model: "SD/MMC", removable: "1", sectors: "62333952"}, // the card already in at start
		disk{name: "sdc", dev: "8:32", model: "SD/MMC", removable: "1", sectors: "0"},        // an empty reader slot
	)
	b := benchSys{t, sys}
	b.set("sr0", "size", "1000")
	b.set("sr0", "removable", "1")
	b.set("sr0", "dev", "11:0")
	b.set("sr0", "device/type", "5") // a DVD drive with a disc: not a card
	b.set("sdb", "diskseq", "7")

	roots := Roots{Sys: sys, MountInfo: "/nonexistent", Dev: t.TempDir()}
	var seen arrivals
	if added, err := seen.scan(roots); err != nil || len(added) != 0 {
		t.Fatalf("first scan: %v, %v; want nothing reported", added, err)
	}

	for _, tc := range []struct {
		what   string
		change func()
		want   []string
	}{
		{"nothing changed: what was there at start is not reported", func() {}, nil},
		{"a USB reader with a card is plugged in", func() {
			b.set("sdd", "size", "31116288")
			b.set("sdd", "removable", "1")
			b.set("sdd", "dev", "8:48")
			b.set("sdd", "device/model", "Card Reader")
		}, []string{"sdd"}},
		{"reported once only", func() {}, nil},
		{"a card goes into the empty slot", func() { b.set("sdc", "size", "62333952") }, []string{"sdc"}},
		{"its partitions appear", func() {
			b.set("sdc/sdc1", "partition", "1")
			b.set("sdc1", "partition", "1")
			b.set("sdc1", "dev", "8:33")
			b.set("sdc1", "size", "1000")
		}, nil},
		{"the reader is unplugged", func() { b.remove("sdd") }, nil},
		{"and plugged in again", func() {
			b.set("sdd", "size", "31116288")
			b.set("sdd", "removable", "1")
			b.set("sdd", "dev", "8:48")
		}, []string{"sdd"}},
		{"the card is taken out of its slot", func() { b.set("sdc", "size", "0") }, nil},
		{"and put back", func() { b.set("sdc", "size", "62333952") }, []string{"sdc"}},
		{"the card at start is swapped between two looks (new disk sequence number)", func() { b.set("sdb", "diskseq", "8") }, []string{"sdb"}},
		{"an SD card in the MMC slot", func() {
			b.set("mmcblk0", "size", "31116288")
			b.set("mmcblk0", "removable", "0")
			b.set("mmcblk0", "dev", "179:0")
			b.set("mmcblk0", "device/type", "SD")
		}, []string{"mmcblk0"}},
		{"two at once, in name order", func() {
			b.set("sde", "size", "1")
			b.set("sde", "removable", "1")
			b.set("sde", "dev", "8:64")
			b.set("sdd", "diskseq", "99")
		}, []string{"sdd", "sde"}},
		{"a fixed disk is attached", func() {
			b.set("nvme0n1", "size", "1000215216")
			b.set("nvme0n1", "removable", "0")
			b.set("nvme0n1", "dev", "259:0")
		}, nil},
	} {
		tc.change()
		added, err := seen.scan(roots)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, i := range added {
			got = append(got, i.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Fatalf("%s: reported %v, want %v", tc.what, got, tc.want)
		}
	}
}

func TestWatchPollsAndNamesDevices(t *testing.T) {
	sys := fakeSys(t, disk{name: "sdb", dev: "8:16", removable: "1", sectors: "0"})
	dev := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := make(chan Info)
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, Roots{Sys: sys, Dev: dev}, 10*time.Millisecond, out) }()
	time.Sleep(50 * time.Millisecond) // let it see the empty slot first
	benchSys{t, sys}.set("sdb", "size", "62333952")
	select {
	case info := <-out:
		if info.Path != filepath.Join(dev, "sdb") || info.Size != 62333952*512 || !info.Removable {
			t.Fatalf("reported %+v", info)
		}
	case err := <-done:
		t.Fatalf("watch returned %v", err)
	case <-ctx.Done():
		t.Fatal("the inserted card was not reported by polling")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("watch returned %v", err)
	}
	if err := Watch(context.Background(), Roots{Sys: filepath.Join(sys, "nope")}, time.Second, out); err == nil {
		t.Fatal("an unreadable sysfs was accepted")
	}
}

// A real kernel uevent (a loop device appearing) wakes the watcher early.
func TestUeventsWake(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a loop device")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wake, err := listenUevents(ctx)
	if err != nil {
		t.Skipf("no uevent socket here: %v", err)
	}
	img := filepath.Join(t.TempDir(), "img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command(losetup, "-d", loop).Run()
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Skip("no block uevent arrived within 5 s (uevents are not delivered to this network namespace?)")
	}
}

func TestInspect(t *testing.T) {
	sys := fakeSys(t,
		disk{name: "sdc", dev: "8:32", model: "SD/MMC", removable: "1", sectors: "62333952"},
		disk{name: "sdd", dev: "8:48", model: "SD/MMC", removable: "1", sectors: "62333952"},
	)
	benchSys{t, sys}.set("sdd", "ro", "1")
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(mountTable), 0o644)
	roots := Roots{Sys: sys, MountInfo: mi}

	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "dev/disk/by-id"), 0o755)
	os.WriteFile(filepath.Join(dir, "dev/sdc"), nil, 0o644)
	byID := filepath.Join(dir, "dev/disk/by-id/usb-Generic_SD_MMC_1234-0:0")
	if err := os.Symlink("../../sdc", byID); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(byID, roots, Policy{MaxSize: 64e9})
	if err != nil || info.Name != "sdc" || info.Size != 62333952*512 {
		t.Fatalf("Inspect(by-id link) = %+v, %v", info, err)
	}
	info, err = Inspect("/dev/sdd", roots, Policy{Force: true})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "write-protected") || !info.ReadOnly || info.Name != "sdd" {
		t.Fatalf("read-only card: %+v, %v", info, err)
	}
	if !strings.Contains(info.String(), "read-only") {
		t.Errorf("shown as %q", info.String())
	}
	if _, err := Inspect("/dev/sdc", roots, Policy{MaxSize: 1e9}); !errors.Is(err, ErrRefused) {
		t.Errorf("oversized card accepted: %v", err)
	}
	if _, err := Inspect("/dev/sdz", roots, Policy{}); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("unknown device: %v", err)
	}
}

func TestParseUevent(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uevent
		ok   bool
	}{
		{"add@/devices/virtual/block/loop0\x00ACTION=add\x00DEVPATH=/devices/virtual/block/loop0\x00SUBSYSTEM=block\x00DEVNAME=loop0\x00DEVTYPE=disk\x00SEQNUM=1",
			uevent{"add", "/devices/virtual/block/loop0", "block", "loop0", "disk"}, true},
		{"change@/devices/x/block/sdb\x00SUBSYSTEM=block\x00DISK_MEDIA_CHANGE=1\x00",
			uevent{"change", "/devices/x/block/sdb", "block", "", ""}, true},
		{"libudev\x00\xfe\xed\xca\xfe", uevent{}, false},
		{"", uevent{}, false},
		{"@", uevent{}, false},
		{"add@", uevent{}, false},
	} {
		got, ok := parseUevent([]byte(tc.in))
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseUevent(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add([]byte("add@/devices/virtual/block/loop0\x00ACTION=add\x00SUBSYSTEM=block\x00DEVNAME=loop0"))
	f.Add([]byte("libudev\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, ok := parseUevent(b)
		if ok && (ev.Action == "" || ev.DevPath == "") {
			t.Fatalf("accepted %q without action or path: %+v", b, ev)
		}
	})
}
