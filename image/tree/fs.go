package tree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

// maxSymlinks bounds symlink resolution, as the kernel's ELOOP does.
const maxSymlinks = 40

// Resolve follows symlinks in every component of p inside t (absolute
// targets are taken from t's root, so usrmerge's lib -> usr/lib works on an
// image read from a disk) and returns the entry p ends at; a hard link
// resolves to its file.
func (t *Tree) Resolve(p string) (*Entry, error) {
	c, err := Clean(p)
	if err != nil {
		return nil, err
	}
	if c == "." {
		return t.entries["."], nil
	}
	hops := 0
	parts := strings.Split(c, "/")
	cur := "."
	for i := 0; i < len(parts); i++ {
		next := path.Join(cur, parts[i])
		e, ok := t.entries[next]
		if !ok {
			return nil, fmt.Errorf("%s: %w", next, fs.ErrNotExist)
		}
		switch e.Kind {
		case Symlink:
			if hops++; hops > maxSymlinks {
				return nil, fmt.Errorf("%s: more than %d symlinks", p, maxSymlinks)
			}
			target := e.Link
			if !strings.HasPrefix(target, "/") {
				target = path.Join("/", cur, target)
			}
			// A target climbing above the root stays at the root, as it
			// does in a chroot.
			rest := strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/")
			if rest[0] == "" {
				rest = nil
			}
			parts, cur, i = append(rest, parts[i+1:]...), ".", -1
			if len(parts) == 0 {
				return t.entries["."], nil
			}
			continue
		case Hardlink:
			if i == len(parts)-1 {
				f, ok := t.entries[e.Link]
				if !ok {
					return nil, fmt.Errorf("%s: hard link to %s, which is not in the tree", next, e.Link)
				}
				return f, nil
			}
		}
		if i < len(parts)-1 && e.Kind != Dir {
			return nil, fmt.Errorf("%s is a %s, not a directory: %w", next, e.Kind, fs.ErrNotExist)
		}
		cur = next
		if i == len(parts)-1 {
			return e, nil
		}
	}
	return nil, errors.New("empty path")
}

// FS returns a read-only io/fs view of t as it is now (entries added later
// are not seen), following symlinks inside the tree, so code written for
// fs.FS (a directory, a .deb, an image's root partition) reads a tree. It
// is an fs.ReadLinkFS: Lstat and ReadLink see a symlink itself.
func (t *Tree) FS() fs.ReadLinkFS {
	children := map[string][]string{}
	for p := range t.entries {
		if p != "." {
			children[path.Dir(p)] = append(children[path.Dir(p)], path.Base(p))
		}
	}
	for _, names := range children {
		sort.Strings(names)
	}
	return &treeFS{t: t, children: children}
}

type treeFS struct {
	t        *Tree
	children map[string][]string // directory -> sorted names, as FS was called
}

func (f *treeFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	e, err := f.t.Resolve(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	info := fileInfo{e: e, name: path.Base(name)}
	switch e.Kind {
	case Dir:
		return &dirFile{fs: f, info: info}, nil
	case File:
		rc, err := e.Open()
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &regularFile{ReadCloser: rc, info: info}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("a %s cannot be read as a file", e.Kind)}
}

// lstat is Resolve without following a symlink in the last component.
func (f *treeFS) lstat(op, name string) (*Entry, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return f.t.entries["."], nil
	}
	dir, err := f.t.Resolve(path.Dir(name))
	if err == nil && dir.Kind != Dir {
		err = fmt.Errorf("%s is a %s, not a directory: %w", dir.Path, dir.Kind, fs.ErrNotExist)
	}
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	e, ok := f.t.entries[path.Join(dir.Path, path.Base(name))]
	if !ok {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	if e.Kind == Hardlink {
		if file, ok := f.t.entries[e.Link]; ok {
			e = file
		}
	}
	return e, nil
}

// Lstat implements fs.ReadLinkFS.
func (f *treeFS) Lstat(name string) (fs.FileInfo, error) {
	e, err := f.lstat("lstat", name)
	if err != nil {
		return nil, err
	}
	return fileInfo{e: e, name: path.Base(name)}, nil
}

// ReadLink implements fs.ReadLinkFS.
func (f *treeFS) ReadLink(name string) (string, error) {
	e, err := f.lstat("readlink", name)
	if err != nil {
		return "", err
	}
	if e.Kind != Symlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	return e.Link, nil
}

type regularFile struct {
	io.ReadCloser
	info fileInfo
}

func (r *regularFile) Stat() (fs.FileInfo, error) { return r.info, nil }

type dirFile struct {
	fs   *treeFS
	info fileInfo
	read int // entries ReadDir already returned
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Close() error               { return nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.e.Path, Err: errors.New("is a directory")}
}

// ReadDir lists the directory's entries in name order. Symlinks are
// described as symlinks (fs.WalkDir does not follow them), with the
// metadata of the link itself.
func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	names := d.fs.children[d.info.e.Path]
	rest := names[d.read:]
	if n > 0 && len(rest) == 0 {
		return nil, io.EOF
	}
	if n > 0 && len(rest) > n {
		rest = rest[:n]
	}
	out := make([]fs.DirEntry, 0, len(rest))
	for _, name := range rest {
		e := d.fs.t.entries[path.Join(d.info.e.Path, name)]
		if e.Kind == Hardlink {
			if f, ok := d.fs.t.entries[e.Link]; ok {
				e = f
			}
		}
		out = append(out, fs.FileInfoToDirEntry(fileInfo{e: e, name: name}))
	}
	d.read += len(rest)
	return out, nil
}

// fileInfo describes an entry under the name it was reached by.
type fileInfo struct {
	e    *Entry
	name string
}

func (i fileInfo) Name() string       { return i.name }
func (i fileInfo) Size() int64        { return i.e.Size }
func (i fileInfo) ModTime() time.Time { return i.e.ModTime }
func (i fileInfo) IsDir() bool        { return i.e.Kind == Dir }
func (i fileInfo) Sys() any           { return i.e }
func (i fileInfo) Mode() fs.FileMode {
	m := i.e.Mode
	switch i.e.Kind {
	case Dir:
		m |= fs.ModeDir
	case Symlink:
		m |= fs.ModeSymlink
	case CharDevice:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case BlockDevice:
		m |= fs.ModeDevice
	case FIFO:
		m |= fs.ModeNamedPipe
	case Socket:
		m |= fs.ModeSocket
	}
	return m
}
