package flash

import (
	"fmt"
	"io"
	"os"
)

// Target is where an image is flashed. Flash calls each target's methods from one
// goroutine only, so implementations need not be safe for concurrent use.
type Target interface {
	io.WriterAt
	io.ReaderAt
	// Sync makes everything written so far durable.
	Sync() error
	// Name identifies the target in results and progress reports.
	Name() string
}

// FileTarget is a regular file as a flash target.
type FileTarget struct {
	f    *os.File
	path string
}

// OpenFileTarget creates (or truncates) the regular file at path and sizes it to
// size bytes, so that unwritten ranges read as zeros.
func OpenFileTarget(path string, size int64) (*FileTarget, error) {
	if size <= 0 {
		return nil, fmt.Errorf("flash: target %s: size %d must be positive", path, size)
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("flash: target %s is not a regular file (block devices are not supported yet)", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("flash: open target: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("flash: size target %s to %d bytes: %w", path, size, err)
	}
	return &FileTarget{f: f, path: path}, nil
}

func (t *FileTarget) WriteAt(p []byte, off int64) (int, error) { return t.f.WriteAt(p, off) }
func (t *FileTarget) ReadAt(p []byte, off int64) (int, error)  { return t.f.ReadAt(p, off) }
func (t *FileTarget) Sync() error                              { return t.f.Sync() }
func (t *FileTarget) Name() string                             { return t.path }
func (t *FileTarget) Close() error                             { return t.f.Close() }
