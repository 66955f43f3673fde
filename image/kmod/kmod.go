// Package kmod reads the kernel modules of one kernel release from a file
// system — a directory, a Debian linux-image package's data, a Raspberry Pi
// OS root partition — and answers what must be loaded, in which order, for
// a set of modules: Resolve returns the closure, dependencies first, as
// modprobe would load it, without modprobe.
//
// Names are module names with '-' and '_' equal (cdc-acm is cdc_acm).
// Dependencies come from the tree's modules.dep when it has one, and
// otherwise from each module's ELF .modinfo section (depends=): Debian's
// linux-image packages ship no modules.dep (their postinst runs depmod).
// Modules listed in modules.builtin are compiled into the kernel: present,
// with nothing to load. Modules may be compressed (.ko.xz as Raspberry Pi
// OS ships them, .ko.zst, .ko.gz); Read returns them uncompressed, the
// form finit_module takes without the kernel's own decompressor. Each
// module's vermagic must name the tree's release: modules of another
// kernel are refused, not loaded into the wrong one.
package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// Module is one loadable module of a tree.
type Module struct {
	Name string // normalised ('_' for '-')
	// Path is the file below the release's directory as the tree has it
	// ("kernel/fs/ext4/ext4.ko.xz").
	Path string
	// Depends are the names of the modules it needs loaded first.
	Depends []string
	// Firmware lists the files (below /lib/firmware) it may request.
	Firmware []string
	// Vermagic is the kernel it was built for ("6.1.0-57-arm64 SMP …").
	Vermagic string
}

// InstallPath is Path without its compression suffix: where the module
// goes once decompressed ("kernel/fs/ext4/ext4.ko").
func (m *Module) InstallPath() string {
	for _, ext := range compressions {
		if p, ok := strings.CutSuffix(m.Path, ".ko"+ext); ok {
			return p + ".ko"
		}
	}
	return m.Path
}

var compressions = []string{".xz", ".zst", ".gz"}

// Normalize is a module's canonical name: file name without .ko and
// compression suffix, '-' written '_'.
func Normalize(name string) string {
	name = path.Base(name)
	for _, ext := range compressions {
		name = strings.TrimSuffix(name, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(name, ".ko"), "-", "_")
}

// Tree is the modules of one kernel release.
type Tree struct {
	Release string
	// Dir is the release's directory in the file system
	// ("lib/modules/6.1.0-57-arm64").
	Dir string
	// HasModulesDep tells whether dependencies come from modules.dep.
	HasModulesDep bool

	fsys    fs.FS
	files   map[string]string   // name -> path below Dir
	builtin map[string]bool     // names in modules.builtin
	dep     map[string][]string // name -> dependency names, from modules.dep
	mods    map[string]*Module  // modinfo read so far
}

// moduleRoots are where distributions keep module trees; usrmerge systems
// have lib -> usr/lib, which an fs.FS over a tree follows.
var moduleRoots = []string{"lib/modules", "usr/lib/modules"}

// Releases lists the kernel releases with a module tree in fsys.
func Releases(fsys fs.FS) ([]string, error) {
	seen := map[string]bool{}
	for _, root := range moduleRoots {
		entries, err := fs.ReadDir(fsys, root)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", root, err)
		}
		for _, e := range entries {
			if e.IsDir() {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for r := range seen {
		out = append(out, r)
	}
	sort.Strings(out)
	return out, nil
}

// Open indexes release's modules in fsys (a root file system: the tree is
// lib/modules/<release> or usr/lib/modules/<release>). Module files are
// read only when Resolve or Read needs them.
func Open(fsys fs.FS, release string) (*Tree, error) {
	if release == "" || strings.ContainsAny(release, "/\x00") || release == "." || release == ".." {
		return nil, fmt.Errorf("kmod: kernel release %q is not a directory name", release)
	}
	t := &Tree{Release: release, fsys: fsys, files: map[string]string{}, builtin: map[string]bool{}, mods: map[string]*Module{}}
	for _, root := range moduleRoots {
		dir := path.Join(root, release)
		if st, err := fs.Stat(fsys, dir); err == nil && st.IsDir() {
			t.Dir = dir
			break
		}
	}
	if t.Dir == "" {
		have, _ := Releases(fsys)
		return nil, fmt.Errorf("kmod: no modules for kernel %s (no lib/modules/%s); the modules here are for %v: kernel and modules must come from the same build", release, release, have)
	}
	err := fs.WalkDir(fsys, t.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModuleFile(p) {
			return nil
		}
		rel := strings.TrimPrefix(p, t.Dir+"/")
		name := Normalize(rel)
		// depmod's search order puts updates/ first; otherwise keep the
		// first in path order, so the choice does not depend on the walk.
		if old, dup := t.files[name]; !dup || strings.HasPrefix(rel, "updates/") && !strings.HasPrefix(old, "updates/") {
			t.files[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kmod: index %s: %w", t.Dir, err)
	}
	if err := t.readBuiltin(); err != nil {
		return nil, err
	}
	if err := t.readModulesDep(); err != nil {
		return nil, err
	}
	if len(t.files) == 0 && len(t.builtin) == 0 {
		return nil, fmt.Errorf("kmod: %s holds no modules (.ko files) and no modules.builtin", t.Dir)
	}
	return t, nil
}

func isModuleFile(p string) bool {
	if strings.HasSuffix(p, ".ko") {
		return true
	}
	for _, ext := range compressions {
		if strings.HasSuffix(p, ".ko"+ext) {
			return true
		}
	}
	return false
}

func (t *Tree) readBuiltin() error {
	data, err := fs.ReadFile(t.fsys, path.Join(t.Dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			t.builtin[Normalize(line)] = true
		}
	}
	return nil
}

// readModulesDep reads depmod's "path: dep-path dep-path…" lines.
func (t *Tree) readModulesDep() error {
	data, err := fs.ReadFile(t.fsys, path.Join(t.Dir, "modules.dep"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	t.dep = map[string][]string{}
	t.HasModulesDep = true
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("kmod: %s/modules.dep line %d %q: want \"module.ko: dependency.ko …\"", t.Dir, n, line)
		}
		var names []string
		for _, d := range strings.Fields(deps) {
			names = append(names, Normalize(d))
		}
		t.dep[Normalize(mod)] = names
	}
	return sc.Err()
}

// Builtin reports whether name is compiled into the kernel.
func (t *Tree) Builtin(name string) bool { return t.builtin[Normalize(name)] }

// Has reports whether the kernel has name at all: as a module or built in.
func (t *Tree) Has(name string) bool {
	n := Normalize(name)
	_, ok := t.files[n]
	return ok || t.builtin[n]
}

// Len is the number of loadable modules.
func (t *Tree) Len() int { return len(t.files) }

// MissingError is a module the kernel has neither as a file nor built in.
type MissingError struct {
	Release   string
	Name      string
	NeededBy  string // the module that depends on it; "" when it was asked for
	Requested string // the module asked for whose closure needs it
}

func (e *MissingError) Error() string {
	msg := fmt.Sprintf("kmod: kernel %s has no module %s (no %s.ko under lib/modules/%s, not built in)", e.Release, e.Name, e.Name, e.Release)
	if e.NeededBy != "" {
		msg += fmt.Sprintf(", which %s needs (for %s)", e.NeededBy, e.Requested)
	}
	return msg
}

// Module returns name's module with its modinfo, or a *MissingError; a
// built-in module is not a Module (nothing to load): check Builtin first.
func (t *Tree) Module(name string) (*Module, error) {
	n := Normalize(name)
	if m, ok := t.mods[n]; ok {
		return m, nil
	}
	rel, ok := t.files[n]
	if !ok {
		return nil, &MissingError{Release: t.Release, Name: n}
	}
	data, err := t.read(rel)
	if err != nil {
		return nil, err
	}
	info, err := modinfo(data)
	if err != nil {
		return nil, fmt.Errorf("kmod: %s: %w", rel, err)
	}
	m := &Module{Name: n, Path: rel}
	for _, kv := range info {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, Normalize(d))
				}
			}
		case "firmware":
			m.Firmware = append(m.Firmware, v)
		case "vermagic":
			m.Vermagic = v
		}
	}
	if deps, ok := t.dep[n]; ok {
		m.Depends = deps
	}
	if release, _, _ := strings.Cut(m.Vermagic, " "); release != t.Release {
		return nil, fmt.Errorf("kmod: %s was built for kernel %q, not %s (vermagic %q): these modules belong to another kernel build", rel, release, t.Release, m.Vermagic)
	}
	t.mods[n] = m
	return m, nil
}

// Resolve returns the modules to load for names, dependencies before the
// modules needing them, each once. Built-in modules (and built-in
// dependencies) are left out: the kernel has them already. A module the
// kernel lacks is a *MissingError naming who needed it.
func (t *Tree) Resolve(names ...string) ([]*Module, error) {
	var order []*Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, neededBy, requested string, chain []string) error
	visit = func(name, neededBy, requested string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("kmod: modules depend on each other in a cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		if t.builtin[name] {
			state[name] = 2
			return nil
		}
		m, err := t.Module(name)
		var missing *MissingError
		if errors.As(err, &missing) {
			missing.NeededBy, missing.Requested = neededBy, requested
			return missing
		}
		if err != nil {
			return err
		}
		state[name] = 1
		for _, d := range m.Depends {
			if err := visit(d, name, requested, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		n = Normalize(n)
		if err := visit(n, "", n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Read returns m's file uncompressed.
func (t *Tree) Read(m *Module) ([]byte, error) { return t.read(m.Path) }

func (t *Tree) read(rel string) ([]byte, error) {
	f, err := t.fsys.Open(path.Join(t.Dir, rel))
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	for _, ext := range compressions {
		if strings.HasSuffix(rel, ".ko"+ext) {
			dr, closeDec, err := sparse.Decompress(f, ext)
			if err != nil {
				return nil, fmt.Errorf("kmod: %s: %w", rel, err)
			}
			defer closeDec()
			r = dr
		}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("kmod: read %s: %w", rel, err)
	}
	return data, nil
}

// modinfo returns the key=value strings of an ELF module's .modinfo section.
func modinfo(data []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not an ELF kernel module: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section: not a kernel module")
	}
	raw, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf(".modinfo: %w", err)
	}
	var out []string
	for _, s := range bytes.Split(raw, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out, nil
}
