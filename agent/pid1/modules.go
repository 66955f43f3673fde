package pid1

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/image/initramfs"
)

// ManifestPath is where the initramfs builder writes the manifest, relative
// to the initramfs's root (image/initramfs owns the format).
const ManifestPath = initramfs.ManifestPath

// readManifest reads and validates root/ManifestPath with the builder's
// own reader. A missing manifest wraps fs.ErrNotExist for the caller to
// say so: a kernel with its drivers built in needs no modules.
func readManifest(root string) (*initramfs.Manifest, error) {
	m, err := initramfs.ReadManifest(os.DirFS(root))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (the initramfs is damaged: rebuild it with netboot kit build)", err)
	}
	return m, err
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
func loadModules(root string, m *initramfs.Manifest, kernelRelease string, ld ModuleLoader) moduleResult {
	var r moduleResult
	for _, mod := range m.Modules {
		err := ld.LoadModule(filepath.Join(root, mod.Path))
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
