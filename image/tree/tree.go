// Package tree is the file tree an image is built from: what a base
// (Raspberry Pi OS image, root filesystem tarball, OCI image) contributes,
// what a profile adds, and what the filesystem writers (FAT, ext4) lay
// down. Entries carry full metadata (mode, owner, times, symlink target,
// device numbers) so a root filesystem survives the trip unchanged, and
// iteration is sorted by path so builds are reproducible.
package tree

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// Kind is what an entry is.
type Kind uint8

const (
	File Kind = iota
	Dir
	Symlink
	CharDevice
	BlockDevice
	FIFO
	Socket
	Hardlink // Link names an earlier File entry with the same content and inode
)

func (k Kind) String() string {
	return [...]string{"file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket", "hardlink"}[k]
}

// Entry is one path of the tree.
type Entry struct {
	// Path is slash-separated, relative, cleaned, without a leading slash
	// ("etc/hostname"); the root directory is ".".
	Path string
	Kind Kind
	// Mode holds the permission bits plus setuid, setgid and sticky
	// (fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky).
	Mode     fs.FileMode
	UID, GID uint32
	ModTime  time.Time
	// Size is the content length of a File.
	Size int64
	// Link is the target of a Symlink, or the path of the File a Hardlink
	// shares its inode with.
	Link string
	// Major and Minor are the device numbers of a CharDevice or BlockDevice.
	Major, Minor uint32
	// Xattrs are extended attributes by full name ("security.capability"),
	// with the values getxattr(2) returns: POSIX ACLs
	// (system.posix_acl_access, system.posix_acl_default) in the VFS form,
	// as image/posixacl reads and writes it, never a filesystem's own.
	Xattrs map[string][]byte
	// Open returns the content of a File. It may be called more than once.
	Open func() (io.ReadCloser, error)
}

// Tree is a set of entries by path. The zero value is not usable: use New.
type Tree struct {
	entries map[string]*Entry
}

// New returns an empty tree holding only its root directory.
func New() *Tree {
	return &Tree{entries: map[string]*Entry{".": {Path: ".", Kind: Dir, Mode: 0o755}}}
}

// Clean turns a path as found in a tarball or a filesystem ("./etc/x",
// "/etc/x", "etc//x/") into the tree's form ("etc/x"). It refuses paths
// that climb out of the root.
func Clean(p string) (string, error) {
	if strings.Contains(p, "\x00") {
		return "", fmt.Errorf("path %q contains a NUL byte", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q climbs out of the root with ..", p)
		}
	}
	c := path.Clean("/" + p)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

// Add inserts or replaces e (a later layer wins), creating missing parent
// directories with mode 0755, owner root and e's modification time. It
// refuses a path under an existing non-directory.
func (t *Tree) Add(e Entry) error {
	p, err := Clean(e.Path)
	if err != nil {
		return err
	}
	e.Path = p
	if e.Kind == File && e.Open == nil {
		return fmt.Errorf("%s: file entry without content", p)
	}
	if p != "." {
		if err := t.mkParents(path.Dir(p), e.ModTime); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	if old, ok := t.entries[p]; ok && old.Kind == Dir && e.Kind != Dir {
		t.removeUnder(p)
	}
	t.entries[p] = &e
	return nil
}

func (t *Tree) mkParents(dir string, mtime time.Time) error {
	if dir == "." {
		return nil
	}
	if e, ok := t.entries[dir]; ok {
		if e.Kind != Dir {
			return fmt.Errorf("parent %s is a %s, not a directory", dir, e.Kind)
		}
		return nil
	}
	if err := t.mkParents(path.Dir(dir), mtime); err != nil {
		return err
	}
	t.entries[dir] = &Entry{Path: dir, Kind: Dir, Mode: 0o755, ModTime: mtime}
	return nil
}

// AddBytes adds a regular file with the given content.
func (t *Tree) AddBytes(p string, data []byte, mode fs.FileMode, mtime time.Time) error {
	return t.Add(Entry{Path: p, Kind: File, Mode: mode, ModTime: mtime, Size: int64(len(data)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
}

// AddHostFile adds a regular file whose content is read from hostPath when
// the tree is written.
func (t *Tree) AddHostFile(p, hostPath string, mode fs.FileMode, mtime time.Time) error {
	st, err := os.Stat(hostPath)
	if err != nil {
		return fmt.Errorf("add %s from %s: %w", p, hostPath, err)
	}
	return t.Add(Entry{Path: p, Kind: File, Mode: mode, ModTime: mtime, Size: st.Size(),
		Open: func() (io.ReadCloser, error) { return os.Open(hostPath) }})
}

// Remove deletes p and everything under it.
func (t *Tree) Remove(p string) {
	c, err := Clean(p)
	if err != nil || c == "." {
		return
	}
	delete(t.entries, c)
	t.removeUnder(c)
}

func (t *Tree) removeUnder(dir string) {
	prefix := dir + "/"
	for k := range t.entries {
		if strings.HasPrefix(k, prefix) {
			delete(t.entries, k)
		}
	}
}

// Get returns the entry at p.
func (t *Tree) Get(p string) (*Entry, bool) {
	c, err := Clean(p)
	if err != nil {
		return nil, false
	}
	e, ok := t.entries[c]
	return e, ok
}

// ReadFile returns the content of the File at p.
func (t *Tree) ReadFile(p string) ([]byte, error) {
	e, ok := t.Get(p)
	if !ok {
		return nil, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
	if e.Kind != File {
		return nil, fmt.Errorf("%s is a %s, not a file", p, e.Kind)
	}
	rc, err := e.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// Walk calls fn for every entry in path order (a directory before its
// contents), which is also the order writers must use for reproducible
// output.
func (t *Tree) Walk(fn func(*Entry) error) error {
	for _, e := range t.Entries() {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// Entries lists the entries in path order.
func (t *Tree) Entries() []*Entry {
	keys := make([]string, 0, len(t.entries))
	for k := range t.entries {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return less(keys[i], keys[j]) })
	out := make([]*Entry, len(keys))
	for i, k := range keys {
		out[i] = t.entries[k]
	}
	return out
}

// less orders "." first and compares path components, so "a/b" sorts
// before "a-b" and every directory precedes its contents.
func less(a, b string) bool {
	if a == "." || b == "." {
		return a == "." && b != "."
	}
	pa, pb := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

// Len is the number of entries, the root included.
func (t *Tree) Len() int { return len(t.entries) }

// ContentSize sums the sizes of the regular files.
func (t *Tree) ContentSize() int64 {
	var n int64
	for _, e := range t.entries {
		if e.Kind == File {
			n += e.Size
		}
	}
	return n
}
