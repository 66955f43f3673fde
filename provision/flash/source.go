package flash

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/lekiwi/heartbeat/image/bmap"
)

// Source is a disk image to flash. Flash reads it once, front to back, only at
// increasing offsets, so that later streaming sources (.xz, .zst, http) can be
// adapted to it with a forward-only reader. The one exception is explaining a
// verification mismatch, which reads the bad range again to find the first
// differing byte; a forward-only source may fail that read, and the message
// then names the range only.
type Source interface {
	io.ReaderAt
	// Size is the image size in bytes.
	Size() int64
	// BlockMap lists the image's mapped blocks with their sha256 checksums, or is
	// nil when unknown; Flash then treats all-zero 4 KiB blocks as holes.
	BlockMap() *bmap.Map
	// Name identifies the source in messages.
	Name() string
}

// ImageFile is a raw disk image file, with the block map of its .bmap sidecar when
// there is one.
type ImageFile struct {
	f    *os.File
	path string
	size int64
	m    *bmap.Map
}

// OpenImage opens a raw image and, if it exists, its sidecar block map
// (bmap.SidecarPath). A sidecar that does not parse or does not describe an image
// of this size is an error rather than ignored: flashing with a wrong map would
// silently skip data.
func OpenImage(path string) (*ImageFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("flash: open image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("flash: stat image %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() <= 0 {
		f.Close()
		return nil, fmt.Errorf("flash: image %s: not a non-empty regular file", path)
	}
	img := &ImageFile{f: f, path: path, size: fi.Size()}
	m, err := readSidecar(bmap.SidecarPath(path), fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	img.m = m
	return img, nil
}

func readSidecar(path string, imageSize int64) (*bmap.Map, error) {
	sf, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flash: open block map: %w", err)
	}
	defer sf.Close()
	m, err := bmap.Parse(sf)
	if err != nil {
		return nil, fmt.Errorf("flash: block map %s: %w (delete it to flash without a map, or regenerate it with `bmaptool create`)", path, err)
	}
	if m.ImageSize != imageSize {
		return nil, fmt.Errorf("flash: block map %s describes a %d-byte image but the image is %d bytes; it belongs to another image (delete or regenerate it)", path, m.ImageSize, imageSize)
	}
	return m, nil
}

func (i *ImageFile) ReadAt(p []byte, off int64) (int, error) { return i.f.ReadAt(p, off) }
func (i *ImageFile) Size() int64                             { return i.size }
func (i *ImageFile) BlockMap() *bmap.Map                     { return i.m }
func (i *ImageFile) Name() string                            { return i.path }
func (i *ImageFile) Close() error                            { return i.f.Close() }
