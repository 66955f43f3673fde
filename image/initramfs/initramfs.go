// Package initramfs is the contract between the provisioning initramfs
// that image/initramfs/pack writes and the agent that runs in it as PID 1.
// It holds only the layout (paths, as constants) and the manifest type, so
// the agent imports it without linking the writer (it imports the standard
// library alone; a test keeps it so).
//
// Layout, paths relative to the initramfs root:
//
//	init                          symlink to /usr/bin/lekiwi-agent: the kernel
//	                              runs /init (rdinit=/init), the agent sees
//	                              itself started as /init and runs its init
//	usr/bin/lekiwi-agent          the static linux/arm64 agent
//	dev/console, dev/null         character devices 5:1 and 1:3, there before
//	                              any devtmpfs (the kernel opens the console
//	                              for PID 1 before /init runs)
//	proc, sys, run, tmp           empty mount points
//	lib/modules/<release>/<path>  each module uncompressed (<path> is its path
//	                              below the source's module tree, .ko)
//	lib/firmware/<name>           firmware the modules name (firmware=), when
//	                              the sources had it
//	etc/lekiwi/initramfs.json     the Manifest
//
// The init loads Manifest.Modules in order (finit_module, dependencies
// first) after checking that the running kernel's release (uname -r) is
// Manifest.KernelRelease: modules of another build do not load.
package initramfs

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"
)

// Paths in the initramfs, relative to its root (prefix "/" at run time).
const (
	InitPath     = "init"
	AgentPath    = "usr/bin/lekiwi-agent"
	ManifestPath = "etc/lekiwi/initramfs.json"
	ModulesDir   = "lib/modules"
	FirmwareDir  = "lib/firmware"
	ConsolePath  = "dev/console"
	NullPath     = "dev/null"
)

// Manifest says what the initramfs holds: etc/lekiwi/initramfs.json.
type Manifest struct {
	// KernelRelease is the kernel the modules belong to (uname -r).
	KernelRelease string `json:"kernel_release"`
	// Modules are to be loaded in this order, dependencies first.
	Modules []Module `json:"modules"`
	// Built is the build's timestamp (SOURCE_DATE_EPOCH when set).
	Built time.Time `json:"built"`
	// AgentSHA256 is the hex sha256 of AgentPath.
	AgentSHA256 string `json:"agent_sha256"`
}

// Module is one module to load.
type Module struct {
	Name string `json:"name"` // module name, '_' for '-' ("cdc_acm")
	// Path is absolute in the running initramfs:
	// "/lib/modules/<release>/kernel/…/cdc-acm.ko".
	Path string `json:"path"`
}

// ModulePath is where a module whose path below its release's tree is rel
// ("kernel/fs/ext4/ext4.ko") lives in the running initramfs.
func ModulePath(release, rel string) string {
	return "/" + path.Join(ModulesDir, release, rel)
}

// Validate checks what the init relies on: a release, modules named once,
// each a .ko file inside lib/modules/<release>, and the agent's checksum.
func (m *Manifest) Validate() error {
	if m.KernelRelease == "" || strings.ContainsAny(m.KernelRelease, "/ \x00") {
		return fmt.Errorf("initramfs manifest: kernel release %q", m.KernelRelease)
	}
	if b, err := hex.DecodeString(m.AgentSHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("initramfs manifest: agent_sha256 %q is not a hex sha256", m.AgentSHA256)
	}
	dir := "/" + path.Join(ModulesDir, m.KernelRelease) + "/"
	seen := map[string]bool{}
	for i, mod := range m.Modules {
		if mod.Name == "" || strings.Contains(mod.Name, "-") || seen[mod.Name] {
			return fmt.Errorf("initramfs manifest: module %d name %q: want a unique name with '_' for '-'", i, mod.Name)
		}
		seen[mod.Name] = true
		if path.Clean(mod.Path) != mod.Path || !strings.HasPrefix(mod.Path, dir) || !strings.HasSuffix(mod.Path, ".ko") {
			return fmt.Errorf("initramfs manifest: module %s path %q: want an uncompressed .ko under %s", mod.Name, mod.Path, dir)
		}
	}
	return nil
}

// ParseManifest decodes and validates a manifest; unknown fields are
// refused, so a writer and a reader that disagree fail loudly.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("initramfs manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ReadManifest reads ManifestPath from a root (os.DirFS("/") in the
// running initramfs).
func ReadManifest(root fs.FS) (*Manifest, error) {
	data, err := fs.ReadFile(root, ManifestPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no /%s: not a Lekiwi provisioning initramfs (netboot kit build makes one): %w", ManifestPath, err)
	}
	if err != nil {
		return nil, err
	}
	return ParseManifest(data)
}

// Marshal is the manifest as the initramfs stores it: indented JSON.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
