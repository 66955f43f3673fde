package pid1

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ManifestPath is where the initramfs builder writes the manifest, relative
// to the initramfs's root.
const ManifestPath = "etc/lekiwi/initramfs.json"

// manifest is the part of the initramfs builder's manifest the init reads:
// the kernel release the modules were built for and the modules in load
// order (dependencies first), each at lib/modules/<release>/<path>,
// uncompressed. The builder (image/initramfs) owns the format; readManifest
// is the one place that reads it.
type manifest struct {
	KernelRelease string `json:"kernel_release"`
	Modules       []struct {
		Name string `json:"name"`
		Path string `json:"path"`
	} `json:"modules"`
}

// readManifest reads root/ManifestPath. A missing manifest is not an
// error (fs.ErrNotExist is returned for the caller to say so): a kernel
// with its drivers built in needs no modules.
func readManifest(root string) (*manifest, error) {
	path := filepath.Join(root, ManifestPath)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w (the initramfs is damaged: rebuild it)", path, err)
	}
	if m.KernelRelease == "" || strings.ContainsAny(m.KernelRelease, "/\\") || m.KernelRelease == ".." {
		return nil, fmt.Errorf("%s: kernel_release %q is not a kernel release (rebuild the initramfs)", path, m.KernelRelease)
	}
	for i, mod := range m.Modules {
		if mod.Name == "" || !filepath.IsLocal(mod.Path) {
			return nil, fmt.Errorf("%s: module %d (%q at %q) has no name or a path outside lib/modules/%s (rebuild the initramfs)", path, i+1, mod.Name, mod.Path, m.KernelRelease)
		}
	}
	return &m, nil
}

// ModuleLoader loads one kernel module from an uncompressed .ko file.
type ModuleLoader interface {
	LoadModule(path string) error
}

// finitModule loads with finit_module(2), from the file itself.
type finitModule struct{}

func (finitModule) LoadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// moduleResult counts what loadModules did.
type moduleResult struct {
	Loaded, Present int     // present: loaded already (or built in)
	Failed          []error // each names its module
}

// loadModules loads m's modules under root in order, going on after a
// failure: a driver for hardware the board lacks may refuse to load, and
// the step that needs a device says what is missing. kernelRelease is the
// running kernel's (uname -r), to explain a whole set that fails.
func loadModules(root string, m *manifest, kernelRelease string, ld ModuleLoader) moduleResult {
	var r moduleResult
	dir := filepath.Join(root, "lib", "modules", m.KernelRelease)
	for _, mod := range m.Modules {
		err := ld.LoadModule(filepath.Join(dir, mod.Path))
		switch {
		case err == nil:
			r.Loaded++
		case errors.Is(err, unix.EEXIST):
			r.Present++
		default:
			r.Failed = append(r.Failed, fmt.Errorf("module %s (%s): %w", mod.Name, mod.Path, moduleHint(err, m.KernelRelease, kernelRelease)))
		}
	}
	return r
}

// moduleHint says what a module's failure most likely means.
func moduleHint(err error, built, running string) error {
	var pe *fs.PathError
	switch {
	case errors.As(err, &pe):
		return fmt.Errorf("%w: the file is missing from the initramfs (rebuild it)", err)
	case errors.Is(err, unix.ENOEXEC) && built != running:
		return fmt.Errorf("%w: built for kernel %s, this is %s (rebuild the initramfs for %s)", err, built, running, running)
	case errors.Is(err, unix.ENOEXEC):
		return fmt.Errorf("%w: not a module this kernel accepts (rebuild the initramfs)", err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: a symbol it needs is missing: a module it depends on failed or comes later in the manifest", err)
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("%w: no such device on this board (harmless unless a later step needs it)", err)
	case errors.Is(err, unix.EKEYREJECTED), errors.Is(err, unix.ENOKEY), errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: the kernel refused it (a signature it does not trust, or module loading disabled): use the kernel package's own modules", err)
	}
	return err
}

// kernelRelease is the running kernel's release (uname -r).
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
