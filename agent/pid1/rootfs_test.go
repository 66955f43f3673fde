package pid1

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/image/layout"
)

// abDisk writes a sparse disk image at path holding the Lekiwi A/B GPT
// (image/layout) and returns its plan.
func abDisk(t *testing.T, path, seed string) *layout.Plan {
	t.Helper()
	plan, err := layout.New(layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}, []byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(plan.Size); err != nil {
		t.Fatal(err)
	}
	if err := layout.WriteGPT(f, plan); err != nil {
		t.Fatal(err)
	}
	return plan
}

// sysDisk adds disk name of size bytes to a sysfs tree under sysRoot, with
// partitions by number, as the kernel lays out /sys/block.
func sysDisk(t *testing.T, sysRoot, name string, size int64, parts map[int]string) {
	t.Helper()
	dir := filepath.Join(sysRoot, "block", name)
	write := func(path, s string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "size"), strconv.FormatInt(size/512, 10))
	for n, p := range parts {
		write(filepath.Join(dir, p, "partition"), strconv.Itoa(n))
		write(filepath.Join(dir, p, "size"), "1")
	}
}

// TestFindPartitionByPARTUUID searches disk image files built with
// image/layout, behind a sysfs tree like the kernel's: a blank disk, an
// empty card reader, and an A/B disk whose system_b is sought.
func TestFindPartitionByPARTUUID(t *testing.T) {
	dir := t.TempDir()
	sysRoot, devRoot := filepath.Join(dir, "sys"), filepath.Join(dir, "dev")
	if err := os.MkdirAll(devRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	plan := abDisk(t, filepath.Join(devRoot, "nvme0n1"), "robot-0042")
	parts := map[int]string{}
	for _, p := range plan.Partitions {
		parts[p.Number] = fmt.Sprintf("nvme0n1p%d", p.Number)
	}
	sysDisk(t, sysRoot, "nvme0n1", plan.Size, parts)
	if err := os.WriteFile(filepath.Join(devRoot, "sda"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sysDisk(t, sysRoot, "sda", 1<<20, nil)
	sysDisk(t, sysRoot, "mmcblk0", 0, nil) // a card reader without a card

	disks, err := listDisks(sysRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 || disks[0].Name != "nvme0n1" || disks[1].Name != "sda" || len(disks[0].Parts) != 6 {
		t.Fatalf("listDisks = %+v, want nvme0n1 with 6 partitions and sda", disks)
	}
	want := plan.Part(layout.SystemB).GUID
	dev, _ := findPartition(disks, devRoot, want)
	if dev != filepath.Join(devRoot, "nvme0n1p5") {
		t.Errorf("found %q, want nvme0n1p5 (system_b)", dev)
	}

	missing := layout.DeriveGUID([]byte("another robot"), "system_a")
	dev, views := findPartition(disks, devRoot, missing)
	if dev != "" {
		t.Fatalf("found %q for a GUID no disk has", dev)
	}
	got := describe(views)
	for _, want := range []string{"nvme0n1 (0.3 GB): GPT 1 bootconfig " + plan.Part(1).GUID.String(), "5 system_b " + want.String(), "sda (0.0 GB): no GPT"} {
		if !strings.Contains(got, want) {
			t.Errorf("the disks are described as %q, which lacks %q", got, want)
		}
	}

	// The GPT has the partition, but the kernel shows no device for it (a
	// partition table the kernel did not re-read).
	delete(disks[0].Parts, layout.SystemB)
	dev, views = findPartition(disks, devRoot, want)
	if dev != "" || !strings.Contains(describe(views), "partition 5 is "+want.String()+" but the kernel shows no device for it") {
		t.Errorf("found %q, described %q: want the missing device named", dev, describe(views))
	}
}

// The switch root test runs in a child process (this test binary again) in
// a mount namespace of its own, so nothing it mounts reaches the host.
const (
	envSwitchDir  = "PID1_TEST_SWITCH_ROOT_DIR"
	envSwitchGUID = "PID1_TEST_SWITCH_ROOT_GUID"
	envOutside    = "PID1_TEST_SWITCH_ROOT_OUTSIDE"
	envFakeSys    = "PID1_TEST_SWITCH_ROOT_FAKE_SYS" // disk:sectors:partition
)

// attachLoop attaches file read-only to a free loop device with the
// losetup options opts, and detaches it when the test ends.
func attachLoop(t *testing.T, opts ...string) string {
	t.Helper()
	args := append([]string{"--find", "--show", "--read-only"}, opts...)
	out, err := exec.Command("losetup", args...).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device for the disk image: losetup %s: %v: %s", strings.Join(args, " "), err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// TestDiskBootSwitchesRoot boots "the robot's disk" for real, short of
// the kernel: an A/B disk image (image/layout GPT, an ext4 system_a made
// by mkfs.ext4 holding busybox and an /sbin/init script) is attached to a
// loop device with its partitions; a child process in its own mount
// namespace lays out an initramfs on a tmpfs, with a directory and a file
// bind-mounted from the host inside it, and runs Run with
// root=PARTUUID=<system_a> ro. It covers: the early mounts, the GPT search
// over the kernel's real /sys/block and devtmpfs, mounting ext4 read-only,
// moving /dev /proc /sys /run into the new root, deleting the initramfs's
// files without touching the bind mounts, and exec'ing /sbin/init as the
// same process with the kernel's arguments for init. Not covered: a real
// PID 1 and rootfs (ramfs) — the lab's QEMU boot does that.
func TestDiskBootSwitchesRoot(t *testing.T) {
	if dir := os.Getenv(envSwitchDir); dir != "" {
		switchRootChild(t, dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for mounts and loop devices (CI runs as root)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "busybox", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian util-linux, e2fsprogs, busybox, libc-bin)", tool)
		}
	}
	work := t.TempDir()
	disk := filepath.Join(work, "disk.img")
	plan := abDisk(t, disk, "switch-root-test")
	sysA := plan.Part(layout.SystemA)
	writeSystem(t, work, disk, sysA)

	loop := attachLoop(t, "--partscan", disk)
	// The partition's device: the kernel's own when it reads GPTs
	// (CONFIG_EFI_PARTITION); else a second loop device over the
	// partition's bytes, which the child's sysfs shows as the disk's
	// partition 4.
	part, fakeSys := filepath.Base(loop)+"p4", ""
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(loop), part)); err != nil {
		t.Logf("this kernel does not partition %s (no GPT support): the partition is a loop device at its offset, and sysfs a tmpfs showing it as partition 4", loop)
		part = filepath.Base(attachLoop(t, "--offset", strconv.FormatInt(sysA.Start, 10), "--sizelimit", strconv.FormatInt(sysA.Size, 10), disk))
		fakeSys = fmt.Sprintf("%s:%d:%s", filepath.Base(loop), plan.Size/512, part)
	}

	outside := t.TempDir()
	for _, f := range []string{"kept-dir/file", "kept-file"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(outside, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, f), []byte("not the initramfs's"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	child.Env = append(os.Environ(), envSwitchDir+"="+dir, envSwitchGUID+"="+sysA.GUID.String(), envOutside+"="+outside, envFakeSys+"="+fakeSys)
	child.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	got, err := child.CombinedOutput()
	t.Logf("the child:\n%s", got)
	if err != nil {
		t.Fatalf("the child: %v", err)
	}
	s := string(got)

	before := regexp.MustCompile(`child pid=(\d+)`).FindStringSubmatch(s)
	after := regexp.MustCompile(`new init pid=(\d+) args=(.*)`).FindStringSubmatch(s)
	if before == nil || after == nil {
		t.Fatal("the child did not reach the new root's init")
	}
	if before[1] != after[1] {
		t.Errorf("the new init runs as pid %s, the init was %s: want exec, not a new process", after[1], before[1])
	}
	if after[2] != "single lekiwi.test" {
		t.Errorf("the new init got arguments %q, want the kernel's for init: %q", after[2], "single lekiwi.test")
	}
	for _, want := range []string{
		"init: root: mounted " + filepath.Join(dir, "dev", part) + " (PARTUUID=" + sysA.GUID.String() + ", ext4, ro)",
		"switch root: exec /sbin/init single lekiwi.test",
		"marker: system_a of the robot's disk",
		"env: TERM=linux",
		// Only the directory holding the bind mounts is left.
		"old root: [mnt]",
		"2 mount points left in it",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`freed the initramfs: (\d+) files`).FindStringSubmatch(s); m == nil || m[1] == "0" {
		t.Errorf("the initramfs's files were not reported freed")
	}
	mounts := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if _, info, ok := strings.Cut(line, "mountinfo: "); ok {
			f := strings.Fields(info)
			if i := indexOf(f, "-"); len(f) > 5 && i > 0 && i+1 < len(f) {
				mounts[f[4]] = f[i+1] + " " + f[5]
			}
		}
	}
	if !strings.HasPrefix(mounts["/"], "ext4 ro") {
		t.Errorf("/ is %q, want the ext4 read-only", mounts["/"])
	}
	sysFS := "sysfs"
	if fakeSys != "" {
		sysFS = "tmpfs"
	}
	for dir, fs := range map[string]string{"/proc": "proc", "/sys": sysFS, "/dev": "devtmpfs", "/dev/pts": "devpts", "/run": "tmpfs"} {
		if !strings.HasPrefix(mounts[dir], fs+" ") {
			t.Errorf("%s in the new root is %q, want %s moved there", dir, mounts[dir], fs)
		}
	}
	if _, ok := mounts["/tmp"]; ok {
		t.Errorf("the initramfs's /tmp followed into the new root")
	}
	for _, f := range []string{"kept-dir/file", "kept-file"} {
		if _, err := os.Stat(filepath.Join(outside, f)); err != nil {
			t.Errorf("%s, bind-mounted into the initramfs, was deleted with it: %v", f, err)
		}
	}
}

// writeSystem makes the system partition: an ext4 (mkfs.ext4 -d) holding
// busybox with its libraries, the mount points, a marker and an init
// script that reports what it sees, copied into part of the disk image.
func writeSystem(t *testing.T, work, disk string, part layout.Partition) {
	t.Helper()
	tree := filepath.Join(work, "system")
	put := func(path string, b []byte, mode os.FileMode) {
		p := filepath.Join(tree, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyIn := func(host string) {
		b, err := os.ReadFile(host)
		if err != nil {
			t.Fatal(err)
		}
		put(host, b, 0o755)
	}
	copyIn("/usr/bin/busybox")
	out, err := exec.Command("ldd", "/usr/bin/busybox").Output()
	if err != nil {
		t.Fatalf("ldd busybox: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			copyIn(f)
		}
	}
	for _, applet := range []string{"sh", "cat", "ls", "echo"} {
		if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/usr/bin/busybox", filepath.Join(tree, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "sbin"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	put("marker", []byte("system_a of the robot's disk\n"), 0o644)
	// /sbin/init links to the script by an absolute path, as Debian's
	// /sbin/init links to systemd: checkInit must resolve it in the new
	// root. Fd 9 is the old root the child left open for this.
	put("lib/init.sh", []byte(`#!/bin/sh
echo "new init pid=$$ args=$*"
echo "marker: $(cat /marker)"
echo "env: TERM=$TERM"
while read -r line; do echo "mountinfo: $line"; done < /proc/self/mountinfo
echo "old root: [$(ls -A /proc/self/fd/9/)]"
`), 0o755)
	if err := os.Symlink("/lib/init.sh", filepath.Join(tree, "sbin", "init")); err != nil {
		t.Fatal(err)
	}
	fsImg := filepath.Join(work, "system.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, fsImg, strconv.FormatInt(part.Size>>10, 10)+"k").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	b, err := os.ReadFile(fsImg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, part.Start); err != nil {
		t.Fatal(err)
	}
}

func indexOf(fields []string, s string) int {
	for i, f := range fields {
		if f == s {
			return i
		}
	}
	return -1
}

// switchRootChild is the child's side: an initramfs on a tmpfs at dir,
// then Run, which ends in the new root's init or fails.
func switchRootChild(t *testing.T, dir string) {
	must := func(err error) {
		if err != nil {
			fmt.Println("child:", err)
			os.Exit(1)
		}
	}
	must(unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"))
	for path, body := range map[string]string{
		"usr/bin/lekiwi-agent": strings.Repeat("the agent ", 100000),
		ManifestPath:           `{"kernel_release": "` + kernelRelease() + `", "agent_sha256": "` + strings.Repeat("ab", 32) + `", "modules": []}`,
		"etc/hostname":         "initramfs\n",
	} {
		must(os.MkdirAll(filepath.Join(dir, filepath.Dir(path)), 0o755))
		must(os.WriteFile(filepath.Join(dir, path), []byte(body), 0o755))
	}
	must(os.Symlink("usr/bin/lekiwi-agent", filepath.Join(dir, "init")))
	outside := os.Getenv(envOutside)
	must(os.MkdirAll(filepath.Join(dir, "mnt", "kept-dir"), 0o755))
	must(unix.Mount(filepath.Join(outside, "kept-dir"), filepath.Join(dir, "mnt", "kept-dir"), "", unix.MS_BIND, ""))
	must(os.WriteFile(filepath.Join(dir, "mnt", "kept-file"), nil, 0o644))
	must(unix.Mount(filepath.Join(outside, "kept-file"), filepath.Join(dir, "mnt", "kept-file"), "", unix.MS_BIND, ""))
	if fake := os.Getenv(envFakeSys); fake != "" {
		// Mounted before Run, which leaves a mounted /sys alone.
		f := strings.Split(fake, ":")
		sys := filepath.Join(dir, "sys")
		must(os.MkdirAll(sys, 0o755))
		must(unix.Mount("tmpfs", sys, "tmpfs", 0, "mode=0755"))
		must(os.MkdirAll(filepath.Join(sys, "block", f[0], f[2]), 0o755))
		must(os.WriteFile(filepath.Join(sys, "block", f[0], "size"), []byte(f[1]+"\n"), 0o644))
		must(os.WriteFile(filepath.Join(sys, "block", f[0], f[2], "partition"), []byte("4\n"), 0o644))
	}
	// The old root, for the new init to list after the switch.
	old, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(err)
	must(unix.Dup3(old, 9, 0))

	fmt.Printf("child pid=%d\n", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = Run(ctx, Options{
		Root:    dir,
		Cmdline: "console=ttyAMA0 root=PARTUUID=" + os.Getenv(envSwitchGUID) + " rootfstype=ext4 ro rootdelay=10 init=/sbin/init",
		Args:    []string{"single", "lekiwi.test"},
		Env:     []string{"HOME=/", "TERM=linux", "PATH=/bin:/usr/bin"},
		Console: os.Stdout,
	})
	fmt.Println("child: Run returned:", err)
	os.Exit(1)
}

// TestDiskBootWaitsForATechnician: a PARTUUID no disk has is waited for
// up to the root delay, printing the disks, and then reported with what
// to do while the init keeps looking.
func TestDiskBootWaitsForATechnician(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	plan := abDisk(t, filepath.Join(root, "dev", "mmcblk0"), "another robot")
	sysDisk(t, filepath.Join(root, "sys"), "mmcblk0", plan.Size, map[int]string{1: "mmcblk0p1", 2: "mmcblk0p2", 3: "mmcblk0p3", 4: "mmcblk0p4", 5: "mmcblk0p5", 6: "mmcblk0p6"})
	want := layout.DeriveGUID([]byte("this robot"), "system_a")
	b, err := ParseCmdline("root=PARTUUID=" + want.String() + " rootdelay=1")
	if err != nil {
		t.Fatal(err)
	}
	con := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err = bootRoot(ctx, Options{Root: root}, b, NewConsole(con, nil))
	if err != context.DeadlineExceeded {
		t.Errorf("bootRoot = %v, want it still looking when the context ended", err)
	}
	out := con.String()
	t.Logf("console:\n%s", out)
	for _, want := range []string{
		"root: looking for PARTUUID=" + want.String() + " (ext4, ro), up to 1s",
		"root: waiting for PARTUUID=" + want.String() + " (0s of 1s): disks: mmcblk0 (0.3 GB): GPT 1 bootconfig",
		"4 system_a " + plan.Part(layout.SystemA).GUID.String(),
		"root: PARTUUID=" + want.String() + " not bootable after 1s",
		"root: waiting for a technician: seat the disk, or fix root= in cmdline.txt",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the console lacks %q", want)
		}
	}
}
