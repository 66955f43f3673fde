package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchImageBuildVsGenimage is the image-build benchmark (LEKIWI_BENCH=1):
// an A/B image from a 1 GiB root filesystem with `provision image build`
// versus the equivalent standard pipeline — mkfs.ext4 -d for the system
// filesystem, mkfs.ext4 for persistent, mkfs.vfat + mcopy for the boot and
// bootconfig filesystems, genimage assembling the GPT image (each system
// and boot filesystem placed in both slots) — then customize on a 4 GiB
// image versus rewriting the same files with mcopy and mkfs.ext4 -d + dd.
// It prints figures; it never asserts a time.
func TestBenchImageBuildVsGenimage(t *testing.T) {
	if os.Getenv("LEKIWI_BENCH") == "" {
		t.Skip("benchmark: set LEKIWI_BENCH=1")
	}
	for _, tool := range []string{"genimage", "mkfs.ext4", "mkfs.vfat", "mcopy", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	// A root filesystem of ~1 GiB: 900 files of 1 MiB of incompressible
	// data and 10,000 small files, staged as a directory and a tarball.
	stage := filepath.Join(dir, "rootfs")
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	for i := range 900 {
		p := filepath.Join(stage, "usr/share/data", fmt.Sprintf("d%02d", i%30), fmt.Sprintf("f%04d.bin", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		rng.Read(buf)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10000 {
		p := filepath.Join(stage, "usr/lib/small", fmt.Sprintf("d%02d", i%100), fmt.Sprintf("s%05d.conf", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat("x", 100+i%900)), 0o644)
	}
	os.MkdirAll(filepath.Join(stage, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(stage, "usr/bin/dash"), arm64ELF(), 0o755)
	os.Symlink("dash", filepath.Join(stage, "usr/bin/sh"))
	tarPath := filepath.Join(dir, "rootfs.tar")
	run("tar", "-C", stage, "-cf", tarPath, ".")
	fw := filepath.Join(dir, "firmware")
	os.MkdirAll(fw, 0o755)
	os.WriteFile(filepath.Join(fw, "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	os.WriteFile(filepath.Join(fw, "cmdline.txt"), []byte(defaultCmdline), 0o644)
	kernel := make([]byte, 24<<20)
	rng.Read(kernel)
	os.WriteFile(filepath.Join(fw, "kernel_2712.img"), kernel, 0o644)
	agent := filepath.Join(dir, "lekiwi-agent")
	os.WriteFile(agent, arm64ELF(), 0o755)
	dropCaches := func() { exec.Command("sync").Run(); os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200) }

	// Ours.
	out := filepath.Join(dir, "ours.img")
	env := map[string]string{"SOURCE_DATE_EPOCH": "1767225600"}
	dropCaches()
	t0 := time.Now()
	if _, stderr, err := execute(env, "image", "build", "--base", tarPath, "--firmware", fw, "--agent", agent, "--out", out,
		"--system-size", "1536", "--boot-size", "256", "--persistent-size", "64", "--temp-dir", dir); err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	ours := time.Since(t0)
	os.Remove(out + ".bmap")

	// The standard pipeline, same sizes.
	in, gout, gtmp, groot := filepath.Join(dir, "in"), filepath.Join(dir, "gout"), filepath.Join(dir, "gtmp"), filepath.Join(dir, "groot")
	for _, d := range []string{in, gout, groot} {
		os.MkdirAll(d, 0o755)
	}
	dropCaches()
	t1 := time.Now()
	run("mkfs.ext4", "-q", "-F", "-L", "system", "-d", stage, filepath.Join(in, "system.ext4"), "1536M")
	run("mkfs.ext4", "-q", "-F", "-L", "persistent", filepath.Join(in, "persistent.ext4"), "64M")
	run("truncate", "-s", "256M", filepath.Join(in, "boot.vfat"))
	run("mkfs.vfat", "-F", "32", "-n", "BOOT", filepath.Join(in, "boot.vfat"))
	run("mcopy", "-s", "-i", filepath.Join(in, "boot.vfat"), filepath.Join(fw, "config.txt"), filepath.Join(fw, "cmdline.txt"), filepath.Join(fw, "kernel_2712.img"), "::")
	run("truncate", "-s", "32M", filepath.Join(in, "bootconfig.vfat"))
	run("mkfs.vfat", "-F", "16", "-n", "BOOTCONFIG", filepath.Join(in, "bootconfig.vfat"))
	auto := filepath.Join(dir, "autoboot.txt")
	os.WriteFile(auto, []byte("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"), 0o644)
	run("mcopy", "-i", filepath.Join(in, "bootconfig.vfat"), auto, "::autoboot.txt")
	const data, linux = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	cfg := fmt.Sprintf(`image genimage.img {
  hdimage { partition-table-type = "gpt" align = 8M }
  partition bootconfig { image = "bootconfig.vfat" partition-type-uuid = "%[1]s" }
  partition boot_a { image = "boot.vfat" partition-type-uuid = "%[1]s" }
  partition boot_b { image = "boot.vfat" partition-type-uuid = "%[1]s" }
  partition system_a { image = "system.ext4" partition-type-uuid = "%[2]s" }
  partition system_b { image = "system.ext4" partition-type-uuid = "%[2]s" }
  partition persistent { image = "persistent.ext4" partition-type-uuid = "%[2]s" }
}
`, data, linux)
	cfgPath := filepath.Join(dir, "genimage.cfg")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	run("genimage", "--config", cfgPath, "--inputpath", in, "--outputpath", gout, "--tmppath", gtmp, "--rootpath", groot)
	peer := time.Since(t1)
	t.Logf("build, 1 GiB root filesystem: provision image build %s (from a tarball: import, both slots, bmap); mkfs.ext4 -d + mkfs.vfat/mcopy + genimage %s; ratio peer/ours %.2f",
		ours.Round(time.Millisecond), peer.Round(time.Millisecond), peer.Seconds()/ours.Seconds())

	// Customize on a 4 GiB image.
	big := filepath.Join(dir, "big.img")
	if _, stderr, err := execute(env, "image", "build", "--base", tarPath, "--firmware", fw, "--agent", agent, "--out", big,
		"--system-size", "1536", "--image-size", "4096", "--temp-dir", dir); err != nil {
		t.Fatalf("build 4 GiB: %v\n%s", err, stderr)
	}
	st, _ := os.Stat(big)
	cert := filepath.Join(dir, "robot.crt")
	os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o644)
	dropCaches()
	t2 := time.Now()
	if _, stderr, err := execute(nil, "image", "customize", big, "--robot-id", "lekiwi-0007", "--hostname", "lekiwi-0007", "--enroll-token", "lkw_enroll_x"); err != nil {
		t.Fatalf("customize: %v\n%s", err, stderr)
	}
	cust := time.Since(t2)
	// Peer: the same files with mtools into both boot filesystems and a
	// fresh persistent ext4 with mkfs.ext4 -d, dd'd into place.
	pers := filepath.Join(dir, "pers")
	os.MkdirAll(filepath.Join(pers, "agent/identity"), 0o755)
	os.WriteFile(filepath.Join(pers, "robot.env"), []byte("LEKIWI_AGENT_ROBOT_ID=lekiwi-0007\n"), 0o644)
	os.WriteFile(filepath.Join(pers, "agent/enrollment-token"), []byte("lkw_enroll_x"), 0o600)
	ud := filepath.Join(dir, "user-data")
	os.WriteFile(ud, []byte("#cloud-config\nhostname: lekiwi-0007\n"), 0o644)
	dropCaches()
	t3 := time.Now()
	for _, fsimg := range []string{filepath.Join(in, "boot.vfat"), filepath.Join(in, "boot.vfat")} {
		run("mcopy", "-o", "-i", fsimg, ud, "::user-data")
		run("mcopy", "-o", "-i", fsimg, ud, "::meta-data")
	}
	run("mkfs.ext4", "-q", "-F", "-L", "persistent", "-d", pers, filepath.Join(in, "persistent.ext4"), "64M")
	run("dd", "if="+filepath.Join(in, "persistent.ext4"), "of="+filepath.Join(gout, "genimage.img"), "bs=4M", "conv=notrunc,fsync", "oflag=seek_bytes", fmt.Sprintf("seek=%d", 4<<30-64<<20), "status=none")
	peerCust := time.Since(t3)
	t.Logf("customize, %d MiB image: provision image customize %s; mcopy ×4 + mkfs.ext4 -d + dd %s; ratio peer/ours %.2f",
		st.Size()>>20, cust.Round(time.Millisecond), peerCust.Round(time.Millisecond), peerCust.Seconds()/cust.Seconds())
}
