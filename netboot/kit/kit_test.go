package kit_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/aptfetch/aptfetchtest"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/initramfs"
	"github.com/lekiwi/heartbeat/image/kmod/kmodtest"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/netboot/kit"
)

var epoch = time.Unix(1767225600, 0)

// realAgent builds the static arm64 agent, as make build does.
func realAgent(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool builds the agent: %v", err)
	}
	out := filepath.Join(t.TempDir(), "agent-linux-arm64")
	cmd := exec.Command(goTool, "build", "-o", out, "./cmd/agent")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, b)
	}
	return out
}

// fakeAgent is enough of a static arm64 executable for the agent checks.
func fakeAgent(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4096)
	copy(b, "\x7fELF\x02\x01\x01")
	b[16], b[18], b[20] = 2, 183, 1 // ET_EXEC, EM_AARCH64, EV_CURRENT
	p := filepath.Join(t.TempDir(), "agent-linux-arm64")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readKit(t *testing.T, dir string) *kit.Kit {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, kit.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	var k kit.Kit
	if err := json.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	return &k
}

// checkFiles compares kit.json's file list with the directory: every
// file listed with its size and sha256, nothing unlisted.
func checkFiles(t *testing.T, dir string, k *kit.Kit) {
	t.Helper()
	listed := map[string]bool{kit.Manifest: true}
	for _, f := range k.Files {
		listed[f.Path] = true
		data, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil {
			t.Errorf("kit.json lists %s: %v", f.Path, err)
			continue
		}
		if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != f.SHA256 || int64(len(data)) != f.Size {
			t.Errorf("%s: kit.json says %d bytes sha256 %s", f.Path, f.Size, f.SHA256)
		}
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			if !listed[filepath.ToSlash(rel)] {
				t.Errorf("%s is in the kit but not in kit.json", rel)
			}
		}
		return err
	})
}

// sameDirs reports the first difference between two directories' files.
func sameDirs(t *testing.T, a, b string) {
	t.Helper()
	err := filepath.WalkDir(a, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		x, _ := os.ReadFile(p)
		y, err := os.ReadFile(filepath.Join(b, rel))
		if err != nil || !bytes.Equal(x, y) {
			return fmt.Errorf("%s differs between two builds of the same inputs (%v)", rel, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// manifestOf unpacks an initramfs's manifest with Debian's cpio.
func manifestOf(t *testing.T, initrd string) (*initramfs.Manifest, []string) {
	t.Helper()
	f, err := os.Open(initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", initrd, err)
	}
	root := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = root, bytes.NewReader(raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id %s: %v\n%s", initrd, err, out)
	}
	list := exec.Command("cpio", "-t", "--quiet")
	list.Stdin = bytes.NewReader(raw)
	names, err := list.Output()
	if err != nil {
		t.Fatal(err)
	}
	m, err := initramfs.ReadManifest(os.DirFS(root))
	if err != nil {
		t.Fatal(err)
	}
	return m, strings.Fields(string(names))
}

func noLeftovers(t *testing.T, parent string) {
	t.Helper()
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".partial-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// The kit from Debian's own packages — bookworm's arm64 kernel and
// raspi-firmware — holds the firmware, the Pi 4 device trees, the kernel
// and an initramfs under budget with the default modules, says it does
// not boot the Pi 5, and two builds are the same bytes.
func TestDebianKit(t *testing.T) {
	debs := []string{aptfetchtest.KernelDeb(t), aptfetchtest.FirmwareDeb(t)}
	agent := realAgent(t)
	parent := t.TempDir()
	var progress bytes.Buffer
	o := kit.Options{Debs: debs, Agent: agent, Out: filepath.Join(parent, "boot"), Epoch: epoch, TempDir: t.TempDir(), Progress: &progress}
	start := time.Now()
	if _, err := kit.Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %s:\n%s", time.Since(start).Round(time.Millisecond), progress.String())
	for _, f := range []string{"start4.elf", "fixup4.dat", "bootcode.bin", "bcm2711-rpi-4-b.dtb", "vmlinuz", "initrd.img", "kit.json"} {
		if _, err := os.Stat(filepath.Join(o.Out, f)); err != nil {
			t.Errorf("kit lacks %s: %v", f, err)
		}
	}
	onDisk := readKit(t, o.Out)
	checkFiles(t, o.Out, onDisk)
	if len(onDisk.Boots) != 1 || onDisk.Pi5 || len(onDisk.Sources) != 2 || !onDisk.Built.Equal(epoch) || len(onDisk.Notes) != 1 || !strings.Contains(onDisk.Notes[0], "not the Pi 5") || !strings.Contains(onDisk.Notes[0], "--pios") {
		t.Fatalf("kit.json: %+v", onDisk)
	}
	b := onDisk.Boots[0]
	if b.Kernel != "vmlinuz" || b.Initramfs != "initrd.img" || !strings.HasSuffix(b.KernelRelease, "-arm64") || !strings.Contains(filepath.Base(debs[0]), b.KernelRelease) {
		t.Fatalf("boot %+v", b)
	}
	t.Logf("initrd.img %.1f MiB (%.1f MiB uncompressed), %d modules, kernel %.1f MiB", float64(b.InitramfsSize)/(1<<20), float64(b.InitramfsUncompressed)/(1<<20), len(b.Modules), float64(b.KernelSize)/(1<<20))
	if b.InitramfsSize > kit.SizeBudget {
		t.Errorf("initrd.img is %d bytes, over the %d budget", b.InitramfsSize, kit.SizeBudget)
	}
	for _, s := range onDisk.Sources {
		if s.SHA256 == "" || s.Package == "" || s.Version == "" {
			t.Errorf("source %+v", s)
		}
	}
	m, names := manifestOf(t, filepath.Join(o.Out, "initrd.img"))
	if m.KernelRelease != b.KernelRelease || len(m.Modules) != len(b.Modules) {
		t.Fatalf("initramfs manifest %s with %d modules, kit.json %s with %d", m.KernelRelease, len(m.Modules), b.KernelRelease, len(b.Modules))
	}
	listed := map[string]bool{}
	for _, n := range names {
		listed[n] = true
	}
	at := map[string]int{}
	for i, mod := range m.Modules {
		at[mod.Name] = i
		if !listed[strings.TrimPrefix(mod.Path, "/")] {
			t.Errorf("cpio -t does not list %s", mod.Path)
		}
	}
	for _, want := range []string{"ext4", "genet", "virtio_net", "cdc_acm", "r8152", "usb_storage", "nvme"} {
		if _, ok := at[want]; !ok {
			t.Errorf("initramfs does not load %s", want)
		}
	}
	if at["usbnet"] > at["cdc_ether"] || at["jbd2"] > at["ext4"] || at["usbcore"] > at["usb_storage"] {
		t.Errorf("dependencies after their users: %v", at)
	}
	if agentSum, _ := os.ReadFile(agent); m.AgentSHA256 != fmt.Sprintf("%x", sha256.Sum256(agentSum)) || !listed["init"] || !listed[initramfs.AgentPath] {
		t.Error("the agent is not the initramfs's /init")
	}

	o2 := o
	o2.Out, o2.Progress = filepath.Join(parent, "again"), nil
	if _, err := kit.Build(context.Background(), o2); err != nil {
		t.Fatal(err)
	}
	sameDirs(t, o.Out, o2.Out)
	if _, err := kit.Build(context.Background(), o2); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("an existing kit was overwritten without --force: %v", err)
	}
	noLeftovers(t, parent)
}

// A synthetic Debian pair — kernel package and firmware package built by
// dpkg-deb — for the error cases, which must say what is missing and
// leave nothing behind.
func syntheticDebs(t *testing.T, bannerRelease, modulesRelease string) (kernelDeb, firmwareDeb string) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatalf("dpkg-deb (Debian's dpkg) builds the test packages: %v", err)
	}
	dir := t.TempDir()
	kroot := filepath.Join(dir, "kernel")
	files := kmodtest.Files(t, modulesRelease, "", []string{"kernel/drivers/mmc/core/mmc_block"},
		kmodtest.Module{Dir: "kernel/fs/ext4", Name: "ext4", Depends: []string{"jbd2"}},
		kmodtest.Module{Dir: "kernel/fs/jbd2", Name: "jbd2"},
		kmodtest.Module{Dir: "kernel/drivers/usb/class", Name: "cdc-acm"},
		kmodtest.Module{Dir: "kernel/drivers/net", Name: "broken", Depends: []string{"ghost"}},
	)
	files["boot/vmlinuz-"+modulesRelease] = []byte("MZ\x00arm64 Image ... Linux version " + bannerRelease + " (debian-kernel@lists.debian.org) #1 SMP\x00")
	files["usr/lib/linux-image-"+modulesRelease+"/broadcom/bcm2711-rpi-4-b.dtb"] = []byte("\xd0\x0d\xfe\xed pi 4 device tree")
	files["DEBIAN/control"] = []byte("Package: linux-image-" + modulesRelease + "\nVersion: 6.1.1-1\nArchitecture: arm64\nMaintainer: t <t@example.com>\nDescription: test kernel\n")
	kmodtest.WriteDir(t, kroot, files)
	kernelDeb = filepath.Join(dir, "linux-image-"+modulesRelease+"_6.1.1-1_arm64.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", kroot, kernelDeb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	froot := filepath.Join(dir, "firmware")
	kmodtest.WriteDir(t, froot, map[string][]byte{
		"usr/lib/raspi-firmware/start4.elf":   []byte("start4"),
		"usr/lib/raspi-firmware/fixup4.dat":   []byte("fixup4"),
		"usr/lib/raspi-firmware/bootcode.bin": []byte("bootcode"),
		"DEBIAN/control":                      []byte("Package: raspi-firmware\nVersion: 1.2\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: test firmware\n"),
	})
	firmwareDeb = filepath.Join(dir, "raspi-firmware_1.2_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", froot, firmwareDeb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	return kernelDeb, firmwareDeb
}

func TestBuildErrors(t *testing.T) {
	const rel = "6.1.0-9-arm64"
	kernelDeb, firmwareDeb := syntheticDebs(t, rel, rel)
	otherKernel, _ := syntheticDebs(t, "6.1.0-10-arm64", rel)
	agent := fakeAgent(t)
	for _, c := range []struct {
		name string
		mod  func(*kit.Options)
		want []string
	}{
		{"no kernel", func(o *kit.Options) { o.Debs = []string{firmwareDeb} }, []string{"holds a kernel", "not the linux-image-arm64 metapackage"}},
		{"no firmware", func(o *kit.Options) { o.Debs = []string{kernelDeb} }, []string{"raspi-firmware", "start4.elf"}},
		{"missing module", func(o *kit.Options) { o.Modules = []string{"btrfs"} }, []string{"--modules btrfs", "has no module btrfs"}},
		{"missing dependency", func(o *kit.Options) { o.Modules = []string{"broken"} }, []string{"no module ghost", "which broken needs"}},
		{"release mismatch", func(o *kit.Options) { o.Debs = []string{otherKernel, firmwareDeb} }, []string{"release 6.1.0-10-arm64", "no modules for kernel 6.1.0-10-arm64", rel}},
		{"missing agent", func(o *kit.Options) { o.Agent = filepath.Join(t.TempDir(), "nope") }, []string{"agent", "make build writes bin/agent-linux-arm64"}},
		{"two sources", func(o *kit.Options) { o.PiOS = "x.img" }, []string{"not both"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			o := kit.Options{Debs: []string{kernelDeb, firmwareDeb}, Agent: agent, Out: filepath.Join(parent, "boot"), Epoch: epoch, TempDir: t.TempDir()}
			c.mod(&o)
			_, err := kit.Build(context.Background(), o)
			if err == nil {
				t.Fatal("built")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if _, serr := os.Stat(o.Out); serr == nil {
				t.Error("a failed build left its directory")
			}
			noLeftovers(t, parent)
		})
	}

	// The synthetic pair builds: default modules the kernel lacks are
	// warnings naming them, built-in ones are recorded, --force replaces.
	parent := t.TempDir()
	o := kit.Options{Debs: []string{kernelDeb, firmwareDeb}, Agent: agent, Out: filepath.Join(parent, "boot"), Epoch: epoch, Modules: []string{"cdc_acm"}, TempDir: t.TempDir()}
	if err := os.Mkdir(o.Out, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(o.Out, "stale"), []byte("old kit"), 0o644)
	o.Force = true
	k, err := kit.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(o.Out, "stale")); err == nil {
		t.Error("--force kept the old kit's files")
	}
	b := k.Boots[0]
	if strings.Join(b.Modules, " ") != "jbd2 ext4 cdc_acm" || strings.Join(b.Builtin, " ") != "mmc_block" {
		t.Fatalf("modules %v builtin %v", b.Modules, b.Builtin)
	}
	if len(k.Warnings) == 0 || !strings.Contains(k.Warnings[0], "nvme") || !strings.Contains(k.Warnings[0], "virtio_net") {
		t.Fatalf("warnings %v", k.Warnings)
	}
	checkFiles(t, o.Out, readKit(t, o.Out))
	noLeftovers(t, parent)
}

// A Raspberry Pi OS-like image written with the repo's FAT and ext4
// writers: kernel8.img (gzip, as Pi OS ships it) and kernel_2712.img with
// a module tree each (.ko.xz, modules.dep), device trees and overlays.
// Each generation gets its kernel and its own initramfs.
func TestPiOSKit(t *testing.T) {
	const v8, v2712 = "6.6.51+rpt-rpi-v8", "6.6.51+rpt-rpi-2712"
	img := piOSImage(t, v8, v2712)
	parent := t.TempDir()
	o := kit.Options{PiOS: img, Agent: fakeAgent(t), Out: filepath.Join(parent, "boot"), Epoch: epoch, TempDir: t.TempDir()}
	k, err := kit.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"start4.elf", "bcm2711-rpi-4-b.dtb", "bcm2712-rpi-5-b.dtb", "overlays/vc4-kms-v3d.dtbo", "vmlinuz", "initrd.img", "pi5/vmlinuz", "pi5/initrd.img"} {
		if _, err := os.Stat(filepath.Join(o.Out, f)); err != nil {
			t.Errorf("kit lacks %s: %v", f, err)
		}
	}
	for _, f := range []string{"config.txt", "cmdline.txt", "kernel8.img", "kernel_2712.img"} {
		if _, err := os.Stat(filepath.Join(o.Out, f)); err == nil {
			t.Errorf("kit has %s: the station generates or renames it", f)
		}
	}
	if !k.Pi5 || len(k.Boots) != 2 || k.Boots[0].KernelRelease != v8 || k.Boots[1].KernelRelease != v2712 || k.Boots[1].Initramfs != "pi5/initrd.img" {
		t.Fatalf("kit %+v", k)
	}
	checkFiles(t, o.Out, readKit(t, o.Out))
	for gen, rel := range map[string]string{"": v8, "pi5": v2712} {
		m, _ := manifestOf(t, filepath.Join(o.Out, gen, "initrd.img"))
		if m.KernelRelease != rel || len(m.Modules) != 3 || m.Modules[0].Name != "jbd2" || m.Modules[2].Name != "cdc_acm" {
			t.Errorf("%s initramfs: %+v", rel, m)
		}
	}
	if fw := k.Boots[0].Firmware; len(fw) != 1 || fw[0] != "brcm/test.bin" {
		t.Errorf("firmware %v", fw)
	}
}

func piOSImage(t *testing.T, v8, v2712 string) string {
	t.Helper()
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Fatalf("sfdisk (Debian fdisk) writes the test image's partition table: %v", err)
	}
	mt := epoch
	boot := tree.New()
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	for p, data := range map[string][]byte{
		"kernel8.img":               gz("arm64 Image\x00Linux version " + v8 + " (serge@raspberrypi.com) #1 SMP PREEMPT\x00"),
		"kernel_2712.img":           gz("arm64 Image\x00Linux version " + v2712 + " (serge@raspberrypi.com) #1 SMP PREEMPT\x00"),
		"start4.elf":                []byte("start4"),
		"fixup4.dat":                []byte("fixup4"),
		"bcm2711-rpi-4-b.dtb":       []byte("pi 4"),
		"bcm2712-rpi-5-b.dtb":       []byte("pi 5"),
		"overlays/vc4-kms-v3d.dtbo": []byte("overlay"),
		"config.txt":                []byte("arm_64bit=1\n"),
		"cmdline.txt":               []byte("console=serial0,115200 root=PARTUUID=1234abcd-02\n"),
		"initramfs8":                []byte("Pi OS's own initramfs"),
	} {
		if err := boot.AddBytes(p, data, 0o644, mt); err != nil {
			t.Fatal(err)
		}
	}
	root := tree.New()
	mods := []kmodtest.Module{
		{Dir: "kernel/fs/ext4", Name: "ext4", Depends: []string{"jbd2"}},
		{Dir: "kernel/fs/jbd2", Name: "jbd2", Firmware: []string{"brcm/test.bin"}},
		{Dir: "kernel/drivers/usb/class", Name: "cdc-acm"},
	}
	for _, rel := range []string{v8, v2712} {
		files := kmodtest.Files(t, rel, ".xz", []string{"kernel/drivers/net/ethernet/broadcom/genet/genet"}, mods...)
		files["lib/modules/"+rel+"/modules.dep"] = kmodtest.ModulesDep(".xz", mods...)
		for p, data := range files {
			if err := root.AddBytes("usr/"+p, data, 0o644, mt); err != nil {
				t.Fatal(err)
			}
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(root.AddBytes("usr/lib/firmware/brcm/test.bin", []byte("brcm firmware"), 0o644, mt))
	must(root.Add(tree.Entry{Path: "lib", Kind: tree.Symlink, Link: "usr/lib", Mode: 0o777, ModTime: mt}))

	const sector, first, partSectors = 512, 8192, 131072 // 64 MiB partitions
	img := filepath.Join(t.TempDir(), "2024-11-19-raspios-bookworm-arm64-lite.img")
	f, err := os.Create(img)
	must(err)
	defer f.Close()
	must(f.Truncate((first + 2*partSectors) * sector))
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", img)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("label: dos\nlabel-id: 0x1234abcd\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n", first, partSectors, first+partSectors, partSectors))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	must(fat.Write(io.NewOffsetWriter(f, first*sector), partSectors*sector, boot, fat.Params{Type: fat.FAT32, Label: "bootfs", VolumeID: 0x1234abcd, Time: mt, HiddenSectors: first}))
	must(ext4.Write(io.NewOffsetWriter(f, (first+partSectors)*sector), partSectors*sector, root, ext4.Params{Label: "rootfs", Time: mt}))
	return img
}
