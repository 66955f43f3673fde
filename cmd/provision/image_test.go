package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/inspect"
)

// arm64ELF is enough of an ELF header for architecture detection.
func arm64ELF() []byte {
	b := make([]byte, 4096)
	copy(b, "\x7fELF\x02\x01\x01")
	b[18] = 183 // EM_AARCH64
	return b
}

// tarballInputs writes a root filesystem tarball (every entry dated
// 2026-01-01), a firmware folder and an agent binary into dir.
func tarballInputs(t *testing.T, dir string) (tarPath, firmware, agent string) {
	t.Helper()
	tarPath = filepath.Join(dir, "rootfs.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	mt := time.Unix(1767225600, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = mt
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	add(&tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/dash", Typeflag: tar.TypeReg, Mode: 0o755}, arm64ELF())
	add(&tar.Header{Name: "usr/bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash", Mode: 0o777}, nil)
	add(&tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin", Mode: 0o777}, nil)
	add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("debian\n"))
	tw.Close()
	f.Close()
	firmware = filepath.Join(dir, "firmware")
	os.MkdirAll(firmware, 0o755)
	os.WriteFile(filepath.Join(firmware, "start4.elf"), []byte(strings.Repeat("F", 5000)), 0o644)
	os.WriteFile(filepath.Join(firmware, "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	agent = filepath.Join(dir, "lekiwi-agent")
	os.WriteFile(agent, arm64ELF(), 0o755)
	return tarPath, firmware, agent
}

// The technician's path end to end through the CLI: a root filesystem
// tarball and a firmware folder become an A/B image with sidecars, which
// inspect reads back, customize personalises in place, and a second build
// reproduces byte for byte.
func TestImageBuildInspectCustomizeCLI(t *testing.T) {
	dir := t.TempDir()
	tarPath, fw, agent := tarballInputs(t, dir)

	env := map[string]string{"SOURCE_DATE_EPOCH": "1767225600"}
	build := func(out string) {
		t.Helper()
		_, stderr, err := execute(env, "image", "build", "--base", tarPath, "--firmware", fw, "--profile", "lekiwi", "--agent", agent,
			"--control-url", "wss://control.lan:8443", "--version", "1.2.3", "--boot-size", "64", "--out", out, "--temp-dir", dir)
		if err != nil {
			t.Fatalf("build: %v\n%s", err, stderr)
		}
	}
	img := filepath.Join(dir, "a.img")
	build(img)
	if _, err := os.Stat(img + ".bmap"); err != nil {
		t.Fatalf("sidecar: %v", err)
	}
	if _, err := os.Stat(img + ".partial"); !os.IsNotExist(err) {
		t.Fatalf("partial output left behind: %v", err)
	}
	if _, err := exec.LookPath("bmaptool"); err == nil {
		if out, err := exec.Command("bmaptool", "copy", "--bmap", img+".bmap", img, filepath.Join(dir, "copy.img")).CombinedOutput(); err != nil {
			t.Fatalf("bmaptool copy with our bmap: %v\n%s", err, out)
		}
	}
	img2 := filepath.Join(dir, "b.img")
	build(img2)
	if sum(t, img) != sum(t, img2) {
		t.Fatal("two builds of the same inputs differ")
	}

	stdout, stderr, err := execute(nil, "image", "inspect", img, "--output", "json")
	if err != nil {
		t.Fatalf("inspect: %v\n%s%s", err, stdout, stderr)
	}
	var r inspect.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	if r.Autoboot == nil || r.Autoboot.ActiveSlot != "a" || len(r.Slots) != 2 || r.Slots[1].Info == nil || r.Slots[1].Info.Version != "1.2.3" {
		t.Fatalf("inspect report: %s", stdout)
	}
	userData := func() string {
		for _, f := range r.Slots[0].Files {
			if strings.HasSuffix(f.Path, ":user-data") {
				return f.SHA256
			}
		}
		t.Fatal("no user-data in the report")
		return ""
	}
	before := userData()

	start := time.Now()
	if _, stderr, err := execute(nil, "image", "customize", img, "--robot-id", "lekiwi-0042", "--hostname", "lekiwi-0042", "--enroll-token", "lkw_enroll_x", "--refresh-sidecars"); err != nil {
		t.Fatalf("customize: %v\n%s", err, stderr)
	}
	t.Logf("customize took %s", time.Since(start).Round(time.Millisecond))
	// The sidecars describe the customized image: bmaptool verifies every
	// range's hash while copying.
	if _, err := exec.LookPath("bmaptool"); err == nil {
		if out, err := exec.Command("bmaptool", "copy", "--bmap", img+".bmap", img, filepath.Join(dir, "copy2.img")).CombinedOutput(); err != nil {
			t.Fatalf("bmaptool copy of the customized image with its refreshed bmap: %v\n%s", err, out)
		}
	}
	stdout, _, err = execute(nil, "image", "inspect", img, "--output", "json")
	if err != nil {
		t.Fatalf("inspect after customize: %v\n%s", err, stdout)
	}
	r = inspect.Report{}
	json.Unmarshal([]byte(stdout), &r)
	if userData() == before {
		t.Fatal("customize did not change the cloud-init seed")
	}
	if _, _, err := execute(nil, "image", "inspect", tarPath); err == nil {
		t.Fatal("inspect accepted a tarball")
	}
	if _, stderr, err := execute(env, "image", "build", "--base", tarPath, "--profile", "lekiwi", "--agent", agent, "--out", filepath.Join(dir, "c.img")); err == nil {
		t.Fatal("a tarball base without --firmware built an image with no boot files")
	} else if _, serr := os.Stat(filepath.Join(dir, "c.img")); serr == nil {
		t.Fatalf("failed build left its output: %s", stderr)
	}
}

// Without SOURCE_DATE_EPOCH the build stamps the newest file time of its
// inputs, says so, and two builds of the same inputs are identical; with
// the variable, its value is the image's timestamp.
func TestImageBuildTimestamp(t *testing.T) {
	dir := t.TempDir()
	tarPath, fw, agent := tarballInputs(t, dir)
	newest := time.Unix(1767300000, 0) // later than every tarball entry
	for _, name := range []string{"start4.elf", "config.txt"} {
		if err := os.Chtimes(filepath.Join(fw, name), newest, newest); err != nil {
			t.Fatal(err)
		}
	}
	build := func(env map[string]string, out string) string {
		t.Helper()
		_, stderr, err := execute(env, "image", "build", "--base", tarPath, "--firmware", fw, "--profile", "lekiwi", "--agent", agent,
			"--boot-size", "64", "--out", out, "--temp-dir", dir)
		if err != nil {
			t.Fatalf("build: %v\n%s", err, stderr)
		}
		return stderr
	}
	created := func(img string) int64 {
		t.Helper()
		stdout, _, err := execute(nil, "image", "inspect", img, "--output", "json")
		if err != nil {
			t.Fatalf("inspect: %v\n%s", err, stdout)
		}
		var r inspect.Report
		if err := json.Unmarshal([]byte(stdout), &r); err != nil || len(r.Slots) == 0 || r.Slots[0].Info == nil {
			t.Fatalf("inspect report: %v\n%s", err, stdout)
		}
		return r.Slots[0].Info.Created
	}

	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	stderr := build(map[string]string{}, a)
	if want := "timestamp 2026-01-01T20:40:00Z (newest file time in the base; set SOURCE_DATE_EPOCH to override)"; !strings.Contains(stderr, want) {
		t.Errorf("build without SOURCE_DATE_EPOCH did not say %q:\n%s", want, stderr)
	}
	build(map[string]string{"SOURCE_DATE_EPOCH": ""}, b)
	if sum(t, a) != sum(t, b) {
		t.Error("two builds of the same inputs without SOURCE_DATE_EPOCH differ")
	}
	if got := created(a); got != newest.Unix() {
		t.Errorf("image.json created = %d, want the newest input file time %d", got, newest.Unix())
	}

	c := filepath.Join(dir, "c.img")
	stderr = build(map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}, c)
	if !strings.Contains(stderr, "timestamp 2023-11-14T22:13:20Z (SOURCE_DATE_EPOCH)") {
		t.Errorf("build with SOURCE_DATE_EPOCH did not say so:\n%s", stderr)
	}
	if got := created(c); got != 1700000000 {
		t.Errorf("image.json created = %d, want SOURCE_DATE_EPOCH 1700000000", got)
	}
	if _, stderr, err := execute(map[string]string{"SOURCE_DATE_EPOCH": "yesterday"}, "image", "build", "--base", tarPath, "--firmware", fw,
		"--agent", agent, "--out", filepath.Join(dir, "d.img")); err == nil || !strings.Contains(err.Error(), "want seconds since 1970") {
		t.Errorf("SOURCE_DATE_EPOCH=yesterday: got %v\n%s", err, stderr)
	}
}

func sum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// Importing a Raspberry Pi OS image end to end: a Raspberry Pi OS-shaped image made
// with the standard tools (MBR, FAT bootfs and ext4 rootfs, the first
// partition at sector 8192 or 16384) becomes an A/B image whose system
// slots hold the original files and whose boot slots hold the original
// boot files.
func TestImageBuildFromRaspberryPiOSImage(t *testing.T) {
	for _, tool := range []string{"sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (DEB_TEST in the Makefile has it)", tool)
		}
	}
	for _, start := range []int{8192, 16384} {
		t.Run(fmt.Sprint("bootfs at ", start), func(t *testing.T) {
			dir := t.TempDir()
			run := func(name string, args ...string) {
				t.Helper()
				if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
					t.Fatalf("%s %v: %v\n%s", name, args, err, out)
				}
			}
			// Boot and root filesystems, staged with standard tools.
			bootImg, rootImg := filepath.Join(dir, "boot.fat"), filepath.Join(dir, "root.ext4")
			run("truncate", "-s", "64M", bootImg)
			run("mkfs.vfat", "-F", "32", "-n", "bootfs", bootImg)
			for name, body := range map[string]string{"config.txt": "arm_64bit=1\n", "cmdline.txt": "console=serial0,115200 console=tty1 root=PARTUUID=abcd-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n", "start4.elf": strings.Repeat("S", 3000)} {
				p := filepath.Join(dir, name)
				os.WriteFile(p, []byte(body), 0o644)
				run("mcopy", "-i", bootImg, p, "::"+name)
			}
			stage := filepath.Join(dir, "stage")
			os.MkdirAll(filepath.Join(stage, "usr/bin"), 0o755)
			os.MkdirAll(filepath.Join(stage, "etc"), 0o755)
			os.WriteFile(filepath.Join(stage, "usr/bin/dash"), arm64ELF(), 0o755)
			os.Symlink("dash", filepath.Join(stage, "usr/bin/sh"))
			os.Symlink("usr/bin", filepath.Join(stage, "bin"))
			os.WriteFile(filepath.Join(stage, "etc/os-release"), []byte("PRETTY_NAME=\"Raspberry Pi OS test\"\n"), 0o644)
			os.WriteFile(filepath.Join(stage, "usr/bin/passwd"), []byte("setuid"), 0o755)
			os.Chmod(filepath.Join(stage, "usr/bin/passwd"), 0o755|os.ModeSetuid)
			run("truncate", "-s", "64M", rootImg)
			run("mkfs.ext4", "-q", "-L", "rootfs", "-d", stage, rootImg)
			// The disk: MBR, FAT32 LBA at start, Linux after it.
			img := filepath.Join(dir, "raspios.img")
			run("truncate", "-s", fmt.Sprint((start+2*131072+2048)*512), img)
			cmd := exec.Command("sfdisk", "--quiet", img)
			cmd.Stdin = strings.NewReader(fmt.Sprintf("label: dos\nstart=%d, size=131072, type=c\nstart=%d, size=131072, type=83\n", start, start+131072))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v\n%s", err, out)
			}
			run("dd", "if="+bootImg, "of="+img, "bs=512", fmt.Sprintf("seek=%d", start), "conv=notrunc,sparse", "status=none")
			run("dd", "if="+rootImg, "of="+img, "bs=512", fmt.Sprintf("seek=%d", start+131072), "conv=notrunc,sparse", "status=none")

			agent := filepath.Join(dir, "lekiwi-agent")
			os.WriteFile(agent, arm64ELF(), 0o755)
			out := filepath.Join(dir, "ab.img")
			if _, stderr, err := execute(map[string]string{"SOURCE_DATE_EPOCH": "1767225600"}, "image", "build", "--base", img, "--profile", "xle",
				"--agent", agent, "--boot-size", "64", "--out", out, "--temp-dir", dir); err != nil {
				t.Fatalf("build from the Raspberry Pi OS image: %v\n%s", err, stderr)
			}
			stdout, _, err := execute(nil, "image", "inspect", out, "--output", "json")
			if err != nil {
				t.Fatalf("inspect: %v\n%s", err, stdout)
			}
			var r inspect.Report
			json.Unmarshal([]byte(stdout), &r)
			for _, s := range r.Slots {
				if !strings.Contains(s.Cmdline, "console=serial0,115200") || strings.Contains(s.Cmdline, "firstboot") || !s.RootOK {
					t.Errorf("slot %s cmdline.txt %q: want the base's arguments, root= its own slot, no firstboot", s.Name, s.Cmdline)
				}
			}
			// The original root files, in system_a, seen by debugfs.
			sysA := r.Layout[3]
			part := filepath.Join(dir, "system_a.ext4")
			run("dd", "if="+out, "of="+part, "bs=1M", fmt.Sprintf("skip=%d", sysA.Start>>20), fmt.Sprintf("count=%d", sysA.Size>>20), "status=none")
			run("e2fsck", "-fn", part)
			got, err := exec.Command("debugfs", "-R", "cat /etc/os-release", part).Output()
			if err != nil || !strings.Contains(string(got), "Raspberry Pi OS test") {
				t.Fatalf("system_a /etc/os-release: %v %q", err, got)
			}
			stat, _ := exec.Command("debugfs", "-R", "stat /usr/bin/passwd", part).Output()
			if !strings.Contains(string(stat), "Mode:  04755") {
				t.Fatalf("setuid bit lost on /usr/bin/passwd:\n%s", stat)
			}
			link, _ := exec.Command("debugfs", "-R", "stat /bin", part).Output()
			if !strings.Contains(string(link), `Fast link dest: "usr/bin"`) {
				t.Fatalf("symlink /bin lost:\n%s", link)
			}
		})
	}
}

// Plausible mistakes get messages that say what failed and what to do,
// never a bare EOF or a "(<nil>)".
func TestImageMistakesSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	tarPath, fw, _ := tarballInputs(t, dir)
	amd64 := filepath.Join(dir, "agent-amd64")
	b := arm64ELF()
	b[18] = 62 // EM_X86_64
	os.WriteFile(amd64, b, 0o755)
	script := filepath.Join(dir, "agent.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	notImage := filepath.Join(dir, "hostname")
	os.WriteFile(notImage, []byte("robot\n"), 0o644)
	build := func(agent string) []string {
		return []string{"image", "build", "--base", tarPath, "--firmware", fw, "--agent", agent, "--out", filepath.Join(dir, "x.img"), "--temp-dir", dir}
	}
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"amd64 agent", build(amd64), []string{"is built for amd64, profile lekiwi needs arm64", "GOARCH=arm64 go build"}},
		{"agent not an ELF", build(script), []string{"is not an ELF executable", "GOARCH=arm64 go build"}},
		{"agent missing", build(filepath.Join(dir, "nope")), []string{"no such file", "GOARCH=arm64 go build"}},
		{"customize a text file", []string{"image", "customize", notImage, "--robot-id", "lekiwi-1", "--enroll-token", "t"},
			[]string{"no valid GPT: 6 bytes is too small to hold one", "provision image build"}},
		{"inspect a text file", []string{"image", "inspect", notImage}, []string{"no valid GPT: 6 bytes is too small to hold one", "provision image build"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, err := execute(nil, c.args...)
			if err == nil {
				t.Fatalf("succeeded:\n%s", stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "<nil>") || strings.HasSuffix(err.Error(), "EOF") {
				t.Errorf("error %q ends in a nil or bare EOF", err)
			}
		})
	}
}
