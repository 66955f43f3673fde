package pack_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/lekiwi/heartbeat/image/initramfs"
	"github.com/lekiwi/heartbeat/image/initramfs/pack"
	"github.com/lekiwi/heartbeat/image/kmod"
	"github.com/lekiwi/heartbeat/image/kmod/kmodtest"
)

const release = "6.6.51+rpt-rpi-v8"

// fakeAgent is enough of a static arm64 executable for the agent checks.
func fakeAgent(t *testing.T, machine byte) string {
	t.Helper()
	b := make([]byte, 4096)
	copy(b, "\x7fELF\x02\x01\x01")
	b[16], b[18], b[20] = 2, machine, 1 // ET_EXEC, e_machine, EV_CURRENT
	p := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func spec(t *testing.T) pack.Spec {
	t.Helper()
	dir := t.TempDir()
	kmodtest.WriteDir(t, dir, kmodtest.Files(t, release, ".xz", nil,
		kmodtest.Module{Dir: "kernel/drivers/net", Name: "mii"},
		kmodtest.Module{Dir: "kernel/drivers/net/usb", Name: "usbnet", Depends: []string{"mii"}},
		kmodtest.Module{Dir: "kernel/drivers/net/usb", Name: "r8152", Depends: []string{"usbnet"}, Firmware: []string{"rtl_nic/rtl8153a-4.fw", "rtl_nic/absent.fw"}},
		kmodtest.Module{Dir: "kernel/drivers/usb/class", Name: "cdc-acm"},
	))
	tr, err := kmod.Open(os.DirFS(dir), release)
	if err != nil {
		t.Fatal(err)
	}
	load, err := tr.Resolve("r8152", "cdc-acm")
	if err != nil {
		t.Fatal(err)
	}
	fw := fstest.MapFS{"lib/firmware/rtl_nic/rtl8153a-4.fw.xz": {Data: kmodtest.Compress(t, []byte("realtek firmware"), ".xz")}}
	return pack.Spec{Agent: fakeAgent(t, 183), Modules: tr, Load: load, Firmware: fw, Epoch: time.Unix(1767225600, 0)}
}

func build(t *testing.T, s pack.Spec) ([]byte, *pack.Result) {
	t.Helper()
	var buf bytes.Buffer
	res, err := pack.Build(&buf, s)
	if err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != res.Size {
		t.Fatalf("result says %d bytes, wrote %d", res.Size, buf.Len())
	}
	return buf.Bytes(), res
}

func run(t *testing.T, dir string, stdin []byte, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not installed (a test peer: see the Makefile's DEB_TEST): %v", name, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Stdin = dir, bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(out)
}

// Two builds of the same inputs are the same bytes; Debian's gzip and
// cpio read the archive, list the layout the agent's init expects, and
// unpack it with root's owners, the device nodes and the modules whole.
func TestBuildIsReproducibleAndReadable(t *testing.T) {
	s := spec(t)
	a, res := build(t, s)
	b, _ := build(t, s)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the same inputs differ")
	}
	s.Epoch = s.Epoch.Add(time.Second)
	if c, _ := build(t, s); bytes.Equal(a, c) {
		t.Fatal("the epoch does not reach the archive")
	}
	dir := t.TempDir()
	run(t, dir, a, "gzip", "-t")
	raw := []byte(run(t, dir, a, "gzip", "-dc"))
	if int64(len(raw)) != res.Uncompressed {
		t.Fatalf("uncompressed %d bytes, result says %d", len(raw), res.Uncompressed)
	}
	listed := map[string]bool{}
	for _, p := range strings.Fields(run(t, dir, raw, "cpio", "-t", "--quiet")) {
		listed[p] = true
	}
	want := []string{initramfs.InitPath, initramfs.AgentPath, initramfs.ConsolePath, initramfs.NullPath, initramfs.ManifestPath, "lib/firmware/rtl_nic/rtl8153a-4.fw", "tmp", "proc", "sys"}
	if len(res.Manifest.Modules) != 4 {
		t.Fatalf("manifest modules %+v", res.Manifest.Modules)
	}
	for _, m := range res.Manifest.Modules {
		want = append(want, strings.TrimPrefix(m.Path, "/"))
	}
	for _, p := range want {
		if !listed[p] {
			t.Errorf("cpio -t does not list %s", p)
		}
	}
	verbose := run(t, dir, raw, "cpio", "-tv", "--quiet")
	for _, line := range strings.Split(strings.TrimSpace(verbose), "\n") {
		if f := strings.Fields(line); len(f) < 4 || f[2] != "root" || f[3] != "root" {
			t.Errorf("not owned by root: %s", line)
		}
	}
	if !strings.Contains(verbose, "crw-------") || !strings.Contains(verbose, "5,") {
		t.Errorf("no console device in\n%s", verbose)
	}

	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	run(t, root, raw, "cpio", "-idv", "--quiet", "--no-absolute-filenames")
	m, err := initramfs.ReadManifest(os.DirFS(root))
	if err != nil {
		t.Fatal(err)
	}
	if m.KernelRelease != release || m.Modules[0].Name != "mii" || m.Modules[3].Name != "cdc_acm" || !m.Built.Equal(time.Unix(1767225600, 0)) {
		t.Fatalf("manifest %+v", m)
	}
	for _, mod := range m.Modules {
		data, err := os.ReadFile(filepath.Join(root, mod.Path))
		if err != nil || !bytes.HasPrefix(data, []byte("\x7fELF")) {
			t.Errorf("module %s unpacked as %d bytes (%v), not an uncompressed ELF", mod.Path, len(data), err)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, "init")); err != nil || target != "/usr/bin/lekiwi-agent" {
		t.Fatalf("init -> %q %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(root, initramfs.AgentPath)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("agent %v %v", st, err)
	}
	if fw, _ := os.ReadFile(filepath.Join(root, "lib/firmware/rtl_nic/rtl8153a-4.fw")); string(fw) != "realtek firmware" {
		t.Fatalf("firmware %q", fw)
	}
	if len(res.Firmware) != 1 || len(res.MissingFirmware) != 1 || res.MissingFirmware[0] != "rtl_nic/absent.fw" {
		t.Fatalf("firmware %v, missing %v", res.Firmware, res.MissingFirmware)
	}
}

func TestAgentChecks(t *testing.T) {
	s := spec(t)
	for name, c := range map[string]struct {
		agent, want string
	}{
		"amd64":   {fakeAgent(t, 62), "the Pi runs arm64"},
		"missing": {filepath.Join(t.TempDir(), "nope"), "make build writes bin/agent-linux-arm64"},
		"script":  {writeFile(t, "#!/bin/sh\n"), "not an ELF executable"},
		"none":    {"", "no agent binary"},
	} {
		s.Agent = c.agent
		if _, err := pack.Build(&bytes.Buffer{}, s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s agent: %v, want %q", name, err, c.want)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(content), 0o755)
	return p
}
