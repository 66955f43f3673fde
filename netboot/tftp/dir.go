package tftp

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
)

// Dir serves the files of one directory tree to every board, whatever its
// serial: the per-model firmware, kernels and device trees. It opens through
// an os.Root, so neither ".." nor a symlink can reach outside the tree even
// if a name got past ParsePath. Compose it with a per-serial Resolver for
// generated files.
type Dir struct {
	root *os.Root
}

// OpenDir opens dir for serving. Close it when the server is done.
func OpenDir(dir string) (*Dir, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("tftp: opening boot file directory %q: %w", dir, err)
	}
	return &Dir{root: root}, nil
}

// Open implements Resolver: the regular file named file, ignoring serial.
// Missing files, directories and other non-regular files are fs.ErrNotExist.
func (d *Dir) Open(_ context.Context, _ string, file string, _ netip.AddrPort) (io.ReaderAt, int64, error) {
	f, err := d.root.Open(file)
	if err != nil {
		return nil, 0, fmt.Errorf("boot file %q: %w", file, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("boot file %q: %w", file, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("boot file %q is a %s, not a regular file: %w", file, st.Mode().Type(), fs.ErrNotExist)
	}
	return f, st.Size(), nil
}

// Close releases the directory.
func (d *Dir) Close() error { return d.root.Close() }
