package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/provision/device"
	"github.com/lekiwi/heartbeat/provision/flash"
	"github.com/lekiwi/heartbeat/provision/identity"
	"github.com/lekiwi/heartbeat/provision/progress"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test installs it)", tool)
		}
	}
}

// buildImage builds a small lekiwi A/B image as `provision image build` does.
func buildImage(t *testing.T, dir string) (string, *profiles.Profile) {
	t.Helper()
	img := imagetest.Build(t, dir, imagetest.Options{
		Root: map[string][]byte{"etc/hostname": []byte("x\n"), "usr/share/lekiwi/data.bin": imagetest.Filler(60000)},
	})
	return img.Path, img.Profile
}

func csvBatch(t *testing.T, dir string, n int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("robot_id,enroll_token\n")
	for i := range n {
		fmt.Fprintf(&b, "kiwi-%d,lke_token%d\n", i+1, i+1)
	}
	path := filepath.Join(dir, "batch.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// partition reads partition n of the disk image or device at path.
func partition(t *testing.T, path string, size int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	plan, err := layout.ReadGPT(f, size)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	part := plan.Part(n)
	buf := make([]byte, part.Size)
	if _, err := f.ReadAt(buf, part.Start); err != nil {
		t.Fatal(err)
	}
	return buf
}

// debugfsCat reads a file from an ext4 partition image with debugfs.
func debugfsCat(t *testing.T, part []byte, file string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "part")
	os.WriteFile(p, part, 0o600)
	if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of the persistent partition: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat "+file, p).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", file, err)
	}
	return string(out)
}

// Four file targets at once. Without identities every target
// equals the source byte for byte; with a CSV batch every card also carries
// its own robot id and token, in the persistent partition, and every other
// partition still equals the source.
func TestFourFileTargets(t *testing.T) {
	need(t, "e2fsck", "debugfs")
	dir := t.TempDir()
	img, prof := buildImage(t, dir)
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	run := func(ids identity.Source, prefix string) []Outcome {
		src, err := flash.OpenImage(img)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		var targets []string
		for i := range 4 {
			targets = append(targets, filepath.Join(dir, fmt.Sprintf("%s%d.img", prefix, i)))
		}
		var lines bytes.Buffer
		outs, err := Run(context.Background(), Job{Source: src, Targets: targets, Identities: ids, DirectFiles: true,
			Reporter: progress.NewLines(&lines, time.Hour, nil)})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range outs {
			if o.Err != nil || o.Phase != flash.PhaseDone {
				t.Fatalf("%s: %v (phase %s)", o.Target, o.Err, o.Phase)
			}
			if !strings.Contains(lines.String(), o.Target+": done") {
				t.Errorf("progress lacks %s's end:\n%s", o.Target, lines.String())
			}
		}
		return outs
	}
	for _, o := range run(nil, "plain") {
		got, err := os.ReadFile(o.Target)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s differs from the source (%v)", o.Target, err)
		}
		if !o.Direct {
			t.Errorf("%s was not written with O_DIRECT", o.Target)
		}
	}
	ids, err := identity.OpenCSV(csvBatch(t, dir, 4), identity.CSVOptions{CAPEM: []byte("FLEET CA\n"), Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	defer ids.Close()
	size := int64(len(want))
	seen := map[string]string{}
	for _, o := range run(ids, "card") {
		if o.RobotID == "" || seen[o.RobotID] != "" {
			t.Fatalf("%s got robot id %q (already on %s)", o.Target, o.RobotID, seen[o.RobotID])
		}
		seen[o.RobotID] = o.Target
		for _, n := range []int{layout.SystemA, layout.SystemB} {
			if !bytes.Equal(partition(t, o.Target, size, n), partition(t, img, size, n)) {
				t.Errorf("%s: partition %d differs from the source", o.Target, n)
			}
		}
		persist := partition(t, o.Target, size, layout.Persistent)
		env := debugfsCat(t, persist, "/robot.env")
		if !strings.Contains(env, "LEKIWI_AGENT_ROBOT_ID="+o.RobotID+"\n") {
			t.Errorf("%s: robot.env = %q, want robot %s", o.Target, env, o.RobotID)
		}
		num := strings.TrimPrefix(o.RobotID, "kiwi-")
		if tok := debugfsCat(t, persist, "/agent/enrollment-token"); !strings.Contains(tok, "lke_token"+num) {
			t.Errorf("%s: enrollment token %q, want lke_token%s", o.Target, tok, num)
		}
	}
	if len(seen) != 4 || ids.Remaining() != 0 {
		t.Fatalf("identities used: %v, %d left", seen, ids.Remaining())
	}
	journal, _ := os.ReadFile(ids.JournalPath())
	if c := strings.Count(string(journal), ",ok,"); c != 4 {
		t.Fatalf("journal records %d good cards, want 4:\n%s", c, journal)
	}
}

// loopDev attaches a loop device over a fresh file of size bytes filled
// with a pattern, so untouched regions are recognisable.
func loopDev(t *testing.T, dir string, size int64) (dev, backing string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	need(t, "losetup")
	backing = filepath.Join(dir, fmt.Sprintf("backing-%d", time.Now().UnixNano()))
	if err := os.WriteFile(backing, bytes.Repeat([]byte("OLD CARD"), int(size/8)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Skipf("losetup: %v (no loop devices here?)", err)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev, backing
}

// fakeSys describes devices as the bench should see them: removable card
// readers with a model and serial (loop devices say nothing of the sort).
func fakeSys(t *testing.T, sizes map[string]int64) string {
	t.Helper()
	root := t.TempDir()
	for dev, size := range sizes {
		name := filepath.Base(dev)
		d := filepath.Join(root, "class/block", name)
		os.MkdirAll(filepath.Join(d, "device"), 0o755)
		num, _ := os.ReadFile(filepath.Join("/sys/class/block", name, "dev"))
		files := map[string]string{"dev": strings.TrimSpace(string(num)), "size": fmt.Sprint(size / 512), "removable": "1", "ro": "0",
			"device/model": "Card Reader " + name, "device/serial": "SN-" + name}
		for f, v := range files {
			os.WriteFile(filepath.Join(d, f), []byte(v+"\n"), 0o644)
		}
	}
	return root
}

func TestBlockDevicesRefusedConfirmedAndFlashed(t *testing.T) {
	need(t, "e2fsck", "debugfs")
	dir := t.TempDir()
	img, prof := buildImage(t, dir)
	want, _ := os.ReadFile(img)
	size := int64(len(want))
	devA, backA := loopDev(t, dir, size+8<<20)
	devB, backB := loopDev(t, dir, size+8<<20)
	sys := fakeSys(t, map[string]int64{devA: size + 8<<20, devB: size + 8<<20})
	noMounts := filepath.Join(dir, "mountinfo")
	os.WriteFile(noMounts, []byte("22 1 254:1 / / rw - ext4 /dev/vda rw\n"), 0o644)
	untouched := func() {
		t.Helper()
		for _, b := range []string{backA, backB} {
			head := make([]byte, 8)
			f, _ := os.Open(b)
			f.ReadAt(head, 0)
			f.Close()
			if string(head) != "OLD CARD" {
				t.Fatalf("%s was written to", b)
			}
		}
	}
	job := func() Job {
		src, err := flash.OpenImage(img)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return Job{Source: src, Targets: []string{devA, devB}, Roots: device.Roots{Sys: sys, MountInfo: noMounts}}
	}

	// One device mounted: the run refuses before writing anything.
	mounted := filepath.Join(dir, "mountinfo-mounted")
	num, _ := os.ReadFile(filepath.Join(sys, "class/block", filepath.Base(devB), "dev"))
	os.WriteFile(mounted, []byte("22 1 254:1 / / rw - ext4 /dev/vda rw\n40 22 "+strings.TrimSpace(string(num))+" / /media/card rw - vfat "+devB+" rw\n"), 0o644)
	j := job()
	j.Roots.MountInfo = mounted
	if _, err := Run(context.Background(), j); err == nil || !strings.Contains(err.Error(), "mounted on /media/card") || !errors.Is(err, device.ErrRefused) {
		t.Fatalf("mounted device: %v", err)
	}
	untouched()

	// Declined at the prompt: nothing written; the prompt showed both.
	j = job()
	var shown []device.Info
	j.Confirm = func(d []device.Info) error { shown = d; return ErrDeclined }
	if _, err := Run(context.Background(), j); !errors.Is(err, ErrDeclined) {
		t.Fatalf("declined: %v", err)
	}
	if len(shown) != 2 || shown[0].Model != "Card Reader "+filepath.Base(devA) || shown[1].Serial != "SN-"+filepath.Base(devB) {
		t.Fatalf("confirmation showed %+v", shown)
	}
	untouched()

	// Confirmed: both cards flashed with O_DIRECT, verified, given identities.
	ids, err := identity.OpenCSV(csvBatch(t, dir, 2), identity.CSVOptions{CAPEM: []byte("CA\n"), Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	defer ids.Close()
	j = job()
	j.Identities = ids
	j.Confirm = func([]device.Info) error { return nil }
	outs, err := Run(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range outs {
		if o.Err != nil || !o.Direct || o.Device == nil || o.RobotID == "" {
			t.Fatalf("%s: %+v", o.Target, o)
		}
		back := []string{backA, backB}[i]
		for _, n := range []int{layout.SystemA, layout.SystemB, layout.BootA} {
			if n == layout.BootA {
				continue // the seed on the boot partition carries the identity
			}
			if !bytes.Equal(partition(t, back, size, n), partition(t, img, size, n)) {
				t.Errorf("%s: partition %d differs from the source", o.Target, n)
			}
		}
		env := debugfsCat(t, partition(t, back, size, layout.Persistent), "/robot.env")
		if !strings.Contains(env, "LEKIWI_AGENT_ROBOT_ID="+o.RobotID) {
			t.Errorf("%s: robot.env %q", o.Target, env)
		}
	}
}

// --watch: a card reader slot that is empty at the start; a card goes in
// and is flashed without anyone typing anything.
func TestWatchFlashesInsertedCard(t *testing.T) {
	dir := t.TempDir()
	img, _ := buildImage(t, dir)
	want, _ := os.ReadFile(img)
	size := int64(len(want))
	dev, back := loopDev(t, dir, size)
	sys := fakeSys(t, map[string]int64{dev: 0}) // empty slot
	noMounts := filepath.Join(dir, "mountinfo")
	os.WriteFile(noMounts, []byte("22 1 254:1 / / rw - ext4 /dev/vda rw\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []Outcome
	done := make(chan struct{})
	open := func() (flash.Source, func(), error) {
		src, err := flash.OpenImage(img)
		if err != nil {
			return nil, nil, err
		}
		return src, func() { src.Close() }, nil
	}
	go func() {
		defer close(done)
		err := Watch(ctx, Job{Roots: device.Roots{Sys: sys, MountInfo: noMounts}}, open, 50*time.Millisecond, func(o Outcome) {
			mu.Lock()
			got = append(got, o)
			mu.Unlock()
			cancel()
		})
		if err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	time.Sleep(200 * time.Millisecond) // the slot is seen empty first
	os.WriteFile(filepath.Join(sys, "class/block", filepath.Base(dev), "size"), []byte(fmt.Sprint(size/512)+"\n"), 0o644)
	<-done
	if len(got) != 1 || got[0].Err != nil || got[0].Target != dev {
		t.Fatalf("outcomes %+v", got)
	}
	f, _ := os.Open(back)
	defer f.Close()
	head := make([]byte, 1<<20)
	io.ReadFull(f, head)
	if !bytes.Equal(head, want[:1<<20]) {
		t.Fatal("the inserted card does not start with the image")
	}
}
