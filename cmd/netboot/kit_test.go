package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/aptfetch/aptfetchtest"
	"github.com/lekiwi/heartbeat/netboot/kit"
)

func TestKitHelpTeaches(t *testing.T) {
	out, err := run(t, "kit", "build", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--fetch", "--deb", "--pios", "not the Pi 5", "make build", "bin/agent-linux-arm64", "SOURCE_DATE_EPOCH",
		"netboot serve --boot-dir", "genet", "virtio_net", "kernel_2712.img", "Example"} {
		if !strings.Contains(out, want) {
			t.Errorf("netboot kit build --help does not mention %q", want)
		}
	}
	if out, _ := run(t, "--help"); !strings.Contains(out, "netboot kit build") {
		t.Error("netboot --help does not point at kit build")
	}
}

func TestKitBuildFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"kit", "build", "--fetch"}, "missing --out"},
		{[]string{"kit", "build", "--out", dir + "/k"}, "give one source"},
		{[]string{"kit", "build", "--out", dir + "/k", "--fetch", "--pios", "x.img"}, "give one source"},
		{[]string{"kit", "build", "--out", dir + "/k", "--pios", "x.img"}, "make build"}, // no agent next to the test binary
	} {
		if _, err := run(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := run(t, "kit", "build", "--out", dir+"/k", "--pios", "x.img", "--agent", "a"); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
}

// netboot kit build --fetch, end to end: the private apt (its lists and
// packages cached where the tests keep them) and a kit from Debian's
// packages, summarised for the engineer.
func TestKitBuildFetch(t *testing.T) {
	cache := aptfetchtest.Fetcher(t).Dir
	aptfetchtest.KernelDeb(t) // fill the cache with the test's fetcher first
	aptfetchtest.FirmwareDeb(t)
	agent := filepath.Join(t.TempDir(), "agent-linux-arm64")
	build := exec.Command("go", "build", "-o", agent, "./cmd/agent")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600")
	out := filepath.Join(t.TempDir(), "boot")
	stdout, err := run(t, "kit", "build", "--fetch", "--cache-dir", cache, "--agent", agent, "--out", out, "--temp-dir", t.TempDir())
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	for _, want := range []string{"updating package lists", "initrd.img", "pi4,qemu-virt", "Note: This kit boots Raspberry Pi 4 boards", "netboot serve --boot-dir " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, kit.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	var k kit.Kit
	if err := json.Unmarshal(data, &k); err != nil || len(k.Boots) != 1 || k.Built.Unix() != 1767225600 {
		t.Fatalf("kit.json: %v %+v", err, k)
	}
}
