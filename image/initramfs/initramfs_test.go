package initramfs

import (
	"os/exec"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// The agent imports this package in its PID 1: it must stay free of the
// writer and of anything outside the standard library.
func TestImportsOnlyTheStandardLibrary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool lists imports: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	if deps := strings.Fields(string(out)); len(deps) != 1 || !strings.HasSuffix(deps[0], "image/initramfs") {
		t.Fatalf("image/initramfs depends on %v", deps)
	}
}

func TestManifest(t *testing.T) {
	good := Manifest{KernelRelease: "6.1.0-57-arm64", Built: time.Unix(1767225600, 0).UTC(), AgentSHA256: strings.Repeat("ab", 32),
		Modules: []Module{{Name: "jbd2", Path: ModulePath("6.1.0-57-arm64", "kernel/fs/jbd2/jbd2.ko")}, {Name: "cdc_acm", Path: ModulePath("6.1.0-57-arm64", "kernel/drivers/usb/class/cdc-acm.ko")}}}
	data, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"path": "/lib/modules/6.1.0-57-arm64/kernel/fs/jbd2/jbd2.ko"`) {
		t.Fatalf("manifest JSON:\n%s", data)
	}
	back, err := ReadManifest(fstest.MapFS{ManifestPath: {Data: data}})
	if err != nil || back.KernelRelease != good.KernelRelease || len(back.Modules) != 2 || !back.Built.Equal(good.Built) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for name, bad := range map[string]func(*Manifest){
		"other release's module": func(m *Manifest) { m.Modules[0].Path = "/lib/modules/6.6.0/kernel/fs/jbd2/jbd2.ko" },
		"compressed module":      func(m *Manifest) { m.Modules[0].Path += ".xz" },
		"climbing path":          func(m *Manifest) { m.Modules[0].Path = "/lib/modules/6.1.0-57-arm64/../../../etc/x.ko" },
		"dashed name":            func(m *Manifest) { m.Modules[1].Name = "cdc-acm" },
		"twice":                  func(m *Manifest) { m.Modules[1].Name = "jbd2" },
		"no release":             func(m *Manifest) { m.KernelRelease = "" },
		"no agent sum":           func(m *Manifest) { m.AgentSHA256 = "abc" },
	} {
		m := good
		m.Modules = append([]Module(nil), good.Modules...)
		bad(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseManifest([]byte(`{"kernel_release":"6.1","agent_sha256":"` + strings.Repeat("00", 32) + `","modules":[],"extra":1}`)); err == nil {
		t.Error("unknown field accepted")
	}
	if _, err := ReadManifest(fstest.MapFS{}); err == nil || !strings.Contains(err.Error(), "netboot kit build") {
		t.Errorf("missing manifest: %v", err)
	}
}
