package pid1

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// recordingLoader records the modules asked for, in order, and answers
// with the error set for the file's base name.
type recordingLoader struct {
	loaded []string
	errs   map[string]error
}

func (r *recordingLoader) LoadModule(path string) error {
	r.loaded = append(r.loaded, path)
	return r.errs[filepath.Base(path)]
}

// sha is a well-formed agent checksum for the manifests below.
var sha = strings.Repeat("ab", 32)

func writeManifest(t *testing.T, root, body string) {
	t.Helper()
	p := filepath.Join(root, ManifestPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

const manifestJSON = `{"kernel_release": "6.1.0-57-arm64", "built": "2025-01-01T00:00:00Z", "agent_sha256": "abababababababababababababababababababababababababababababababab",
 "modules": [
  {"name": "nvme_core", "path": "/lib/modules/6.1.0-57-arm64/kernel/drivers/nvme/host/nvme-core.ko"},
  {"name": "nvme", "path": "/lib/modules/6.1.0-57-arm64/kernel/drivers/nvme/host/nvme.ko"},
  {"name": "crc16", "path": "/lib/modules/6.1.0-57-arm64/kernel/lib/crc16.ko"},
  {"name": "ext4", "path": "/lib/modules/6.1.0-57-arm64/kernel/fs/ext4/ext4.ko"},
  {"name": "ftdi_sio", "path": "/lib/modules/6.1.0-57-arm64/kernel/drivers/usb/serial/ftdi_sio.ko"},
  {"name": "virtio_net", "path": "/lib/modules/6.1.0-57-arm64/kernel/drivers/net/virtio_net.ko"}
 ]}`

func TestLoadModulesInOrderAndReportsFailures(t *testing.T) {
	root := t.TempDir()
	writeManifest(t, root, manifestJSON)
	m, err := readManifest(root)
	if err != nil {
		t.Fatal(err)
	}
	ld := &recordingLoader{errs: map[string]error{
		"crc16.ko":      unix.EEXIST, // built in, or loaded by the kernel already
		"ext4.ko":       unix.ENOENT, // finit_module: unknown symbol
		"ftdi_sio.ko":   unix.ENODEV,
		"virtio_net.ko": &fs.PathError{Op: "open", Path: "virtio_net.ko", Err: fs.ErrNotExist},
	}}
	r := loadModules(root, m, "6.1.0-57-arm64", ld)

	var want []string
	for _, mod := range m.Modules {
		want = append(want, filepath.Join(root, mod.Path))
	}
	if strings.Join(ld.loaded, "\n") != strings.Join(want, "\n") {
		t.Errorf("loaded\n%s\nwant the manifest's order\n%s", strings.Join(ld.loaded, "\n"), strings.Join(want, "\n"))
	}
	if r.Loaded != 2 || r.Present != 1 || len(r.Failed) != 3 {
		t.Fatalf("result %+v, want 2 loaded, 1 present, 3 failed", r)
	}
	for i, want := range []string{
		"module ext4 (/lib/modules/6.1.0-57-arm64/kernel/fs/ext4/ext4.ko): no such file or directory: a symbol it needs is missing",
		"module ftdi_sio (/lib/modules/6.1.0-57-arm64/kernel/drivers/usb/serial/ftdi_sio.ko): no such device: no such device on this board",
		"module virtio_net (/lib/modules/6.1.0-57-arm64/kernel/drivers/net/virtio_net.ko): open virtio_net.ko: file does not exist: the file is missing from the initramfs",
	} {
		if !strings.Contains(r.Failed[i].Error(), want) {
			t.Errorf("failure %d = %q, want it to contain %q", i, r.Failed[i], want)
		}
	}
}

func TestModuleFailureForAnotherKernel(t *testing.T) {
	err := moduleHint(unix.ENOEXEC, "6.1.0-57-arm64", "6.6.51+rpt-rpi-2712")
	if !strings.Contains(err.Error(), "built for kernel 6.1.0-57-arm64, this is 6.6.51+rpt-rpi-2712 (rebuild the initramfs for 6.6.51+rpt-rpi-2712)") || !errors.Is(err, unix.ENOEXEC) {
		t.Errorf("hint = %v", err)
	}
}

func TestFinitModuleOnAMissingFile(t *testing.T) {
	root := t.TempDir()
	writeManifest(t, root, `{"kernel_release": "6.1.0-57-arm64", "agent_sha256": "`+sha+`", "modules": [{"name": "gone", "path": "/lib/modules/6.1.0-57-arm64/kernel/gone.ko"}]}`)
	m, err := readManifest(root)
	if err != nil {
		t.Fatal(err)
	}
	r := loadModules(root, m, "6.1.0-57-arm64", finitModule{})
	if len(r.Failed) != 1 || !strings.Contains(r.Failed[0].Error(), "module gone (/lib/modules/6.1.0-57-arm64/kernel/gone.ko)") || !strings.Contains(r.Failed[0].Error(), "missing from the initramfs") {
		t.Errorf("result %+v, want the missing file named", r)
	}
}

func TestReadManifestRefuses(t *testing.T) {
	if _, err := readManifest(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no manifest: %v, want fs.ErrNotExist (a kernel with built-in drivers needs none)", err)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"kernel_release": "6.1", "agent_sha256": "` + sha + `", "modules": [{"name": "x", "path": "/etc/passwd"}]}`, "want an uncompressed .ko under /lib/modules/6.1/"},
		{`{"kernel_release": "6.1", "agent_sha256": "` + sha + `", "modules": [{"name": "", "path": "/lib/modules/6.1/a.ko"}]}`, "want a unique name"},
		{`{"kernel_release": "../..", "agent_sha256": "` + sha + `", "modules": []}`, "kernel release"},
		{`{"kernel_release": "6.1", "modules": [`, "rebuild it"},
	} {
		root := t.TempDir()
		writeManifest(t, root, tc.body)
		if _, err := readManifest(root); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("manifest %s: error %v, want one containing %q", tc.body, err, tc.want)
		}
	}
}
