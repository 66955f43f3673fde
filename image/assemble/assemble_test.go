package assemble

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

var epoch = time.Unix(1715000000, 0)

func need(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed: cannot check the image", b)
		}
	}
}

func fakeAgent(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4096)
	copy(b, "\x7fELF\x02\x01\x01")
	b[18] = 183 // EM_AARCH64
	p := filepath.Join(t.TempDir(), "lekiwi-agent")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func inputs(t *testing.T) Inputs {
	t.Helper()
	boot, root := tree.New(), tree.New()
	for p, c := range map[string]string{
		"config.txt":      "arm_64bit=1\n",
		"cmdline.txt":     "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
		"kernel_2712.img": strings.Repeat("K", 300000),
	} {
		if err := boot.AddBytes(p, []byte(c), 0o644, epoch); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.AddBytes("etc/fstab", []byte("proc /proc proc defaults 0 0\nPARTUUID=1234-02 / ext4 defaults 0 1\n"), 0o644, epoch); err != nil {
		t.Fatal(err)
	}
	if err := root.AddBytes("usr/bin/sudo", []byte("sudo"), 0o755|fs.ModeSetuid, epoch); err != nil {
		t.Fatal(err)
	}
	if err := root.Add(tree.Entry{Path: "bin", Kind: tree.Symlink, Link: "usr/bin", Mode: 0o777, ModTime: epoch}); err != nil {
		t.Fatal(err)
	}
	return Inputs{Boot: boot, Root: root, Arch: "arm64", Description: "test-base"}
}

func options(t *testing.T, out string) Options {
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	return Options{Out: out, Profile: p, AgentPath: fakeAgent(t), AgentUnit: testUnit, ControlURLs: []string{"wss://control.lan:8443"}, Version: "1.0.0", Epoch: epoch, Sizes: layout.Sizes{Boot: 64 << 20}}
}

func extract(t *testing.T, img string, part layout.Partition) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := filepath.Join(t.TempDir(), part.Name+".img")
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := io.Copy(o, io.NewSectionReader(f, part.Start, part.Size)); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBuildPassesCheckersAndIsReproducible(t *testing.T) {
	need(t, "e2fsck", "fsck.fat", "mtype", "debugfs", "sfdisk")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	if err := Build(context.Background(), inputs(t), options(t, img)); err != nil {
		t.Fatal(err)
	}
	// Into a folder that does not exist yet: Build makes it.
	img2 := filepath.Join(dir, "new", "folder", "b.img")
	o2 := options(t, img2)
	if err := Build(context.Background(), inputs(t), o2); err != nil {
		t.Fatal(err)
	}
	sum := func(p string) [32]byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	if sum(img) != sum(img2) {
		t.Error("two builds of the same inputs differ")
	}
	if _, err := os.Stat(img + ".partial"); err == nil {
		t.Error(".partial left behind")
	}
	f, _ := os.Open(img)
	st, _ := f.Stat()
	plan, err := layout.ReadGPT(f, st.Size())
	f.Close()
	if err != nil || layout.CheckAB(plan) != nil {
		t.Fatalf("GPT: %v", err)
	}
	if out, err := exec.Command("sfdisk", "--verify", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No errors detected") {
		t.Errorf("sfdisk --verify: %v\n%s", err, out)
	}
	for _, part := range plan.Partitions {
		p := extract(t, img, part)
		var cmd *exec.Cmd
		if part.Type == layout.TypeBasicData {
			cmd = exec.Command("fsck.fat", "-n", p)
		} else {
			cmd = exec.Command("e2fsck", "-fn", p)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", part.Name, err, out)
		}
		switch part.Number {
		case layout.BootConfig:
			out, _ := exec.Command("mtype", "-i", p, "::autoboot.txt").Output()
			if !strings.HasPrefix(string(out), "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n") || len(out) != 512 {
				t.Errorf("autoboot.txt = %q", out)
			}
		case layout.BootA, layout.BootB:
			out, _ := exec.Command("mtype", "-i", p, "::cmdline.txt").Output()
			sys := plan.Part(part.Number + 2).GUID.String()
			if !strings.Contains(string(out), "root=PARTUUID="+sys) || strings.Contains(string(out), "firstboot") || !strings.Contains(string(out), "ds=nocloud") || !strings.Contains(string(out), "console=tty1") {
				t.Errorf("%s cmdline.txt = %q", part.Name, out)
			}
			for _, seed := range []string{"user-data", "meta-data", "network-config"} {
				if out, err := exec.Command("mtype", "-i", p, "::"+seed).Output(); err != nil || len(out) != SeedFileSize {
					t.Errorf("%s %s: %v (%d bytes)", part.Name, seed, err, len(out))
				}
			}
		case layout.SystemA, layout.SystemB:
			for req, want := range map[string]string{
				"stat /usr/bin/sudo":         "Mode:  04755",
				"stat /usr/bin/lekiwi-agent": "Mode:  0755",
				"stat /bin":                  "Fast link dest: \"usr/bin\"",
				"cat /etc/fstab":             plan.Part(part.Number-2).GUID.String() + "  /boot/firmware",
				"cat /etc/lekiwi/agent.yml":  "wss://control.lan:8443",
				"cat /etc/lekiwi/image.json": "\"profile\": \"lekiwi\"",
				"cat /" + AgentUnit:          testUnit,
			} {
				out, _ := exec.Command("debugfs", "-R", req, p).CombinedOutput()
				if !strings.Contains(string(out), want) {
					t.Errorf("%s: debugfs %s: want %q in\n%s", part.Name, req, want, out)
				}
			}
		}
	}
}

func TestBuildRefusesBadInputAndLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		mutate func(*Inputs, *Options)
		want   string
	}{
		{"amd64 base", func(in *Inputs, o *Options) { in.Arch = "amd64" }, "base root filesystem is amd64 but profile lekiwi needs arm64"},
		{"system too small", func(in *Inputs, o *Options) {
			in.Root.AddBytes("big", make([]byte, 70<<20), 0o644, epoch)
			o.Sizes.System = 64 << 20
		}, "--system-size"},
		{"no boot partition", func(in *Inputs, o *Options) { in.Boot = nil }, "no boot partition"},
		{"no agent unit", func(in *Inputs, o *Options) { o.AgentUnit = "" }, "no agent systemd unit"},
		{"amd64 agent", func(in *Inputs, o *Options) {
			b, _ := os.ReadFile(o.AgentPath)
			b[18] = 62
			os.WriteFile(o.AgentPath, b, 0o755)
		}, "is built for amd64, profile lekiwi needs arm64: build it with `CGO_ENABLED=0 GOARCH=arm64 go build -o lekiwi-agent ./cmd/agent` and pass its path with --agent"},
		{"agent not an ELF", func(in *Inputs, o *Options) { os.WriteFile(o.AgentPath, []byte("#!/bin/sh\n"), 0o755) }, "is not an ELF executable: build it with"},
		{"no agent file", func(in *Inputs, o *Options) { o.AgentPath = filepath.Join(dir, "nope") }, "no such file or directory: build it with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "x.img")
			in, o := inputs(t), options(t, out)
			tc.mutate(&in, &o)
			err := Build(context.Background(), in, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "<nil>") {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			left, _ := filepath.Glob(filepath.Join(dir, "*"))
			if len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// An over-the-air update writes a later build's boot and system partitions
// onto a disk made by an earlier one: every build of a profile must name
// the same partitions (PARTUUIDs, filesystem ids), whatever its version.
func TestDiskIdentityStableAcrossVersions(t *testing.T) {
	dir := t.TempDir()
	var plans []*layout.Plan
	for _, v := range []string{"1.0.0", "2.0.0"} {
		out := filepath.Join(dir, v+".img")
		o := options(t, out)
		o.Version = v
		if err := Build(context.Background(), inputs(t), o); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		plan, err := layout.ReadGPT(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		plans = append(plans, plan)
	}
	if plans[0].DiskGUID != plans[1].DiskGUID {
		t.Errorf("disk GUID changed with the version: %v vs %v", plans[0].DiskGUID, plans[1].DiskGUID)
	}
	for _, p := range plans[0].Partitions {
		if q := plans[1].Part(p.Number); q.GUID != p.GUID {
			t.Errorf("partition %s: GUID %v in 1.0.0, %v in 2.0.0", p.Name, p.GUID, q.GUID)
		}
	}
}

// An image with trusted update keys has the agent take update commands;
// one without keys does not.
func TestUpdateKeysEnableUpdates(t *testing.T) {
	need(t, "debugfs")
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.pub")
	if err := os.WriteFile(key, []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, keys := range [][]string{nil, {key}} {
		out := filepath.Join(dir, "k"+strconv.Itoa(len(keys))+".img")
		o := options(t, out)
		o.UpdateKeys = keys
		if err := Build(context.Background(), inputs(t), o); err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(out)
		st, _ := f.Stat()
		plan, err := layout.ReadGPT(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		p := extract(t, out, plan.Part(layout.SystemA))
		cfg, err := exec.Command("debugfs", "-R", "cat /etc/lekiwi/agent.yml", p).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(cfg), "update_enabled: true"); got != (len(keys) > 0) {
			t.Errorf("%d keys: agent.yml says update_enabled=%v:\n%s", len(keys), got, cfg)
		}
	}
}

// testUnit stands in for the agent's unit file, which the caller passes.
const testUnit = "[Service]\nExecStart=/usr/bin/lekiwi-agent run\n"

// A root whose files carry attributes too big for their inodes needs an
// attribute block each: the system slot sized from the content must hold
// them. 20000 small files with distinct SELinux-sized labels take a data
// block and an attribute block each; counting only the data blocks, the
// headroom the slot gets (168 MiB) falls about 11 MiB short.
func TestBuildSizesTheSystemSlotForAttributeBlocks(t *testing.T) {
	need(t, "e2fsck")
	in := inputs(t)
	label := strings.Repeat("x", 220)
	content := strings.Repeat("c", 100)
	for i := 0; i < 20000; i++ {
		if err := in.Root.Add(tree.Entry{Path: fmt.Sprintf("usr/share/labelled/d%03d/f%05d", i%200, i), Kind: tree.File, Mode: 0o644, ModTime: epoch,
			Size: int64(len(content)), Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(content)), nil },
			Xattrs: map[string][]byte{"security.selinux": []byte(fmt.Sprintf("system_u:object_r:%s_%05d_t:s0", label, i))}}); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "a.img")
	if err := Build(context.Background(), in, options(t, img)); err != nil {
		t.Fatalf("the system slot sized from the content does not hold it: %v", err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	plan, err := layout.ReadGPT(f, st.Size())
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	sys := extract(t, img, plan.Part(layout.SystemA))
	if out, err := exec.Command("e2fsck", "-fn", sys).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn system_a: %v\n%s", err, out)
	}
}
