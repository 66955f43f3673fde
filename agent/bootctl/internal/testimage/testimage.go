// Package testimage builds a small Lekiwi A/B disk image with image/build
// for the boot control tests (as `provision image build` would, from a
// tiny base).
package testimage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/build"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

// Build writes the image into dir and returns its path and partition plan.
func Build(tb testing.TB, dir string) (string, *layout.Plan) {
	tb.Helper()
	p, err := profiles.Load("lekiwi")
	if err != nil {
		tb.Fatal(err)
	}
	epoch := time.Unix(1715000000, 0)
	boot, root := tree.New(), tree.New()
	must := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(boot.AddBytes("cmdline.txt", []byte("console=tty1 rootwait\n"), 0o644, epoch))
	must(boot.AddBytes("config.txt", []byte("[all]\ndtparam=watchdog=on\n"), 0o644, epoch))
	must(root.AddBytes("etc/hostname", []byte("x\n"), 0o644, epoch))
	must(root.AddBytes("usr/share/lekiwi/data.bin", bytes.Repeat([]byte("lekiwi robot data "), 6000), 0o644, epoch))
	agent := filepath.Join(dir, "agent")
	elf := make([]byte, 64)
	copy(elf, "\x7fELF")
	elf[18] = 183 // EM_AARCH64
	must(os.WriteFile(agent, elf, 0o755))
	img := filepath.Join(dir, "robot.img")
	must(build.Build(context.Background(), build.Inputs{Boot: boot, Root: root, Arch: "arm64", Description: "bootctl test"},
		build.Options{Out: img, Profile: p, AgentPath: agent, Version: "1", Epoch: epoch, Sizes: layout.Sizes{Boot: 64 << 20}}))
	f, err := os.Open(img)
	must(err)
	defer f.Close()
	st, err := f.Stat()
	must(err)
	plan, err := layout.ReadGPT(f, st.Size())
	must(err)
	return img, plan
}
