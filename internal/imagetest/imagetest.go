// Package imagetest builds a small Lekiwi A/B disk image with image/assemble,
// as `provision image build` would from a tiny base, for the tests of code
// that reads, customizes, flashes, updates or boots such images. The image
// is real (GPT, FAT boot partitions, ext4 system slots); only the base is
// tiny: a few boot and root files and a stand-in arm64 agent binary.
package imagetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/systemd"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

// Options choose what goes into the image; the zero value gives the default
// image described on each field.
type Options struct {
	// Name is the file name in dir without ".img"; default "robot".
	Name string
	// Profile is the robot profile to load; default "lekiwi".
	Profile string
	// Boot are the base's boot partition files; default a cmdline.txt and a
	// config.txt that turns the watchdog on.
	Boot map[string][]byte
	// Root are the base's root file system files; default an
	// /etc/hostname and about 100 KiB of compressible data.
	Root map[string][]byte
	// Agent is the agent binary; default a 64-byte arm64 ELF header.
	Agent []byte
	// Sizes are the partition sizes; default a 64 MiB boot partition and
	// the profile's other sizes.
	Sizes layout.Sizes
	// Version, Description, ControlURLs and Epoch go to build as they are;
	// defaults "1", "imagetest", none and a fixed time (May 2024), so that
	// two builds with the same options are the same bytes.
	Version     string
	Description string
	ControlURLs []string
	Epoch       time.Time
}

// Image is a built image.
type Image struct {
	Path    string
	Plan    *layout.Plan // read back from the image's GPT
	Profile *profiles.Profile
}

// DefaultAgent returns the default stand-in agent binary: an ELF header
// for EM_AARCH64, which is all image/assemble checks.
func DefaultAgent() []byte {
	elf := make([]byte, 64)
	copy(elf, "\x7fELF")
	elf[18] = 183 // EM_AARCH64
	return elf
}

// Filler returns n copies of a short text, compressible data that gives
// the root file system some size.
func Filler(n int) []byte { return bytes.Repeat([]byte("lekiwi robot data "), n) }

// Build writes the image into dir (which holds the agent binary too) and
// fails the test if it cannot.
func Build(tb testing.TB, dir string, o Options) Image {
	tb.Helper()
	img, err := Make(dir, o)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// Make is Build for fixtures built outside a test (in TestMain or once for
// several tests): it returns the error instead.
func Make(dir string, o Options) (Image, error) {
	if o.Name == "" {
		o.Name = "robot"
	}
	if o.Profile == "" {
		o.Profile = "lekiwi"
	}
	if o.Boot == nil {
		o.Boot = map[string][]byte{
			"cmdline.txt": []byte("console=tty1 rootwait\n"),
			"config.txt":  []byte("[all]\ndtparam=watchdog=on\n"),
		}
	}
	if o.Root == nil {
		o.Root = map[string][]byte{"etc/hostname": []byte("x\n"), "usr/share/lekiwi/data.bin": Filler(6000)}
	}
	if o.Agent == nil {
		o.Agent = DefaultAgent()
	}
	if o.Sizes == (layout.Sizes{}) {
		o.Sizes = layout.Sizes{Boot: 64 << 20}
	}
	if o.Version == "" {
		o.Version = "1"
	}
	if o.Description == "" {
		o.Description = "imagetest"
	}
	if o.Epoch.IsZero() {
		o.Epoch = time.Unix(1715000000, 0)
	}
	p, err := profiles.Load(o.Profile)
	if err != nil {
		return Image{}, fmt.Errorf("test image %s: %w", o.Name, err)
	}
	boot, root := tree.New(), tree.New()
	for _, files := range []struct {
		t     *tree.Tree
		files map[string][]byte
	}{{boot, o.Boot}, {root, o.Root}} {
		for name, b := range files.files {
			if err := files.t.AddBytes(name, b, 0o644, o.Epoch); err != nil {
				return Image{}, fmt.Errorf("test image %s: add %s: %w", o.Name, name, err)
			}
		}
	}
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, o.Agent, 0o755); err != nil {
		return Image{}, fmt.Errorf("test image %s: %w", o.Name, err)
	}
	path := filepath.Join(dir, o.Name+".img")
	err = assemble.Build(context.Background(), assemble.Inputs{Boot: boot, Root: root, Arch: "arm64", Description: o.Description},
		assemble.Options{Out: path, Profile: p, AgentPath: agent, AgentUnit: systemd.Unit(), ControlURLs: o.ControlURLs, Version: o.Version, Epoch: o.Epoch, Sizes: o.Sizes})
	if err != nil {
		return Image{}, fmt.Errorf("build test image %s: %w", o.Name, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return Image{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Image{}, err
	}
	plan, err := layout.ReadGPT(f, st.Size())
	if err != nil {
		return Image{}, fmt.Errorf("read back the GPT of test image %s: %w", path, err)
	}
	return Image{Path: path, Plan: plan, Profile: p}, nil
}
