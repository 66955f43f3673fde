// Package source opens what `provision flash` writes, as a flash.Source: a raw
// image file, a compressed one (.xz, .zst, .gz) decompressed on the fly, an
// http(s) URL downloaded on the fly with resume, or an image artifact pulled
// from an OCI registry.
//
// Compressed files and URLs are streams: they are read, and decompressed,
// exactly once, while flash.Flash fans the bytes out to the targets; nothing
// is staged on disk. Such a source can only move forward (ReadAt behind its
// position fails with ErrBehind), which is all Flash needs. Its size must be
// known before the first byte: from a .bmap next to it, else from the
// compressed file's own metadata (xz index, zstd frame header, gzip ISIZE when
// plausible), else from Options.Size.
//
// ReadTable says what a source is — its size and MBR or GPT partition
// table, if it has one — without losing a stream's first bytes.
package source

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/provision/flash"
)

// Source is an image to flash that holds a file, connection or temporary file
// until closed.
type Source interface {
	flash.Source
	io.Closer
}

// Options tune Open. The zero value is usable.
type Options struct {
	// Size is the decompressed image size in bytes, for a compressed file or
	// URL whose size cannot be found otherwise (no .bmap; a gzip over 4 GiB; a
	// zstd compressed from a pipe). When the size is also known otherwise, the
	// two must agree.
	Size int64
	// TempDir holds an image pulled from a registry until Close; empty means
	// os.TempDir(). It needs room for the image's data (it is written sparse).
	TempDir string
	// HTTPClient fetches URLs; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Retries is how many times in a row a download is retried without
	// receiving a byte before it fails; default 5. Each byte received resets it.
	Retries int
	// RetryBackoff is the wait before the first retry, doubled for each next
	// one up to 10 s; default 500 ms.
	RetryBackoff time.Duration
	// Progress, if set, is called from a goroutine of the source with
	// the bytes of the file or download read so far (compressed bytes for a
	// compressed source) and its total, -1 if unknown. Not called for raw
	// files, which flash's own progress covers, nor for registry pulls (see
	// Registry.Progress).
	Progress func(done, total int64)
	// Registry tunes pulls from an OCI registry (Insecure, Auth, Transport,
	// Progress).
	Registry ociart.Options
}

// Kind is how Open reads a reference.
type Kind string

const (
	KindFile           Kind = "file"            // raw image file, read where needed
	KindCompressedFile Kind = "compressed file" // .xz/.zst/.gz file, streamed
	KindURL            Kind = "url"             // http(s), streamed (and decompressed when compressed)
	KindOCI            Kind = "oci"             // registry image artifact, pulled to TempDir
)

// Classify tells how Open would read ref, without opening it:
//   - "http://…" and "https://…" are URLs;
//   - "oci://host/repo:tag" is a registry reference, always;
//   - an existing path is a file, compressed when it ends in .xz, .zst or .gz;
//   - anything else is a registry reference if it names a registry host the way
//     docker does (the part before the first "/" contains "." or ":" or is
//     "localhost") and a tag or digest, e.g. localhost:5000/lekiwi:1.4.0 or
//     registry.example.com/lekiwi/image@sha256:…. A missing file such as
//     out/lekiwi.img is reported as missing, not tried as a registry.
func Classify(ref string) (Kind, error) {
	switch {
	case strings.HasPrefix(ref, "http://"), strings.HasPrefix(ref, "https://"):
		return KindURL, nil
	case strings.HasPrefix(ref, "oci://"):
		if !isRegistryRef(strings.TrimPrefix(ref, "oci://")) {
			return "", fmt.Errorf("%s: not a registry reference (want oci://host[:port]/repository:tag)", ref)
		}
		return KindOCI, nil
	case strings.Contains(ref, "://"):
		return "", fmt.Errorf("%s: unsupported scheme (use a path, http(s)://, or oci://)", ref)
	}
	if _, err := os.Stat(ref); err == nil {
		if compression(ref) != "" {
			return KindCompressedFile, nil
		}
		return KindFile, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	if isRegistryRef(ref) {
		return KindOCI, nil
	}
	return "", fmt.Errorf("image %s: no such file (a registry image is written host[:port]/repository:tag or oci://…): %w", ref, os.ErrNotExist)
}

func isRegistryRef(ref string) bool {
	host, rest, ok := strings.Cut(ref, "/")
	if !ok || rest == "" || host == "." || host == ".." {
		return false
	}
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return false
	}
	if !strings.Contains(rest, "@") && !strings.Contains(rest[strings.LastIndex(rest, "/")+1:], ":") {
		return false
	}
	_, err := name.ParseReference(ref, name.StrictValidation)
	return err == nil
}

// compression is the compression suffix of path handled as a stream, or "".
func compression(path string) string {
	for _, c := range [...]string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(path, c) {
			return c
		}
	}
	return ""
}

// Open opens ref (see Classify) for flash.Flash. ctx bounds the whole life of
// the source, not only Open: a download goes on under it while Flash reads.
func Open(ctx context.Context, ref string, opts Options) (Source, error) {
	kind, err := Classify(ref)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindFile:
		img, err := flash.OpenImage(ref)
		if err != nil {
			return nil, err
		}
		if opts.Size > 0 && opts.Size != img.Size() {
			img.Close()
			return nil, fmt.Errorf("image %s has %d bytes, not the %d given as its size", ref, img.Size(), opts.Size)
		}
		return img, nil
	case KindCompressedFile:
		return openCompressedFile(ref, opts)
	case KindURL:
		return openURL(ctx, ref, opts)
	default:
		return openOCI(ctx, strings.TrimPrefix(ref, "oci://"), opts)
	}
}

// sidecarOf is where the block map of a compressed image is looked for: next
// to it, named after the raw image (lekiwi.img.xz → lekiwi.img.bmap), as
// bmaptool publishes them.
func sidecarOf(path string) string {
	return bmap.SidecarPath(strings.TrimSuffix(path, compression(path)))
}

func openCompressedFile(path string, opts Options) (Source, error) {
	ext := compression(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	m, err := readSidecar(sidecarOf(path))
	if err != nil {
		f.Close()
		return nil, err
	}
	detect := func() (int64, string, error) {
		return detectSize(ext, f, fi.Size(), nil)
	}
	size, from, err := chooseSize(path, m, opts.Size, detect)
	if err != nil {
		f.Close()
		return nil, err
	}
	var in io.Reader = f
	if opts.Progress != nil {
		in = &counting{r: f, total: fi.Size(), progress: opts.Progress}
	}
	// A local read never blocks for long: nothing to unblock.
	return newStream(path, size, from, m, in, ext, func() {}, f.Close)
}

// newStream decompresses in (ext "" for none) behind a read-ahead. On Close,
// unblock stops a read of in that may be waiting (it may run while the
// read-ahead goroutine reads), and release, called once that goroutine has
// ended, frees what in reads from.
func newStream(name string, size int64, from string, m *bmap.Map, in io.Reader, ext string, unblock func(), release func() error) (*stream, error) {
	var r = in
	closeDec := func() {}
	if ext != "" {
		dr, cl, err := sparse.Decompress(in, ext)
		if err != nil {
			unblock()
			release()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		r, closeDec = dr, cl
	}
	ra := newReadahead(r, 1<<20, 4)
	closeAll := func() error {
		unblock()
		ra.Close()
		closeDec()
		return release()
	}
	return &stream{name: name, size: size, sizeFrom: from, m: m, r: ra, closers: []func() error{closeAll}}, nil
}

// chooseSize settles the decompressed size: the explicit one, the block map's,
// or what detect finds in the file; any two that are known must agree.
func chooseSize(name string, m *bmap.Map, explicit int64, detect func() (int64, string, error)) (int64, string, error) {
	if m != nil {
		if err := m.Validate(); err != nil {
			return 0, "", fmt.Errorf("%s: its block map: %w (fix or delete it to flash without a map)", name, err)
		}
	}
	if m != nil && explicit > 0 && m.ImageSize != explicit {
		return 0, "", fmt.Errorf("%s: the given size %d differs from the %d bytes its block map describes", name, explicit, m.ImageSize)
	}
	switch {
	case explicit > 0:
		return explicit, "the given size", nil
	case m != nil:
		return m.ImageSize, "the block map", nil
	}
	size, from, err := detect()
	if err != nil {
		return 0, "", fmt.Errorf("%s: cannot tell the image size before decompressing: %w; put the image's .bmap next to it or give the size explicitly", name, err)
	}
	if size <= 0 {
		return 0, "", fmt.Errorf("%s: %s records an empty image", name, from)
	}
	return size, from, nil
}

// detectSize reads the size from the compressed file's metadata: r reads the
// compressed file of the given length; head, when not nil, is its start
// (already in memory from a stream).
func detectSize(ext string, r io.ReaderAt, length int64, head []byte) (int64, string, error) {
	switch ext {
	case ".xz":
		n, err := xzSize(r, length)
		return n, "the xz index", err
	case ".zst":
		if head == nil {
			head = make([]byte, min(length, zstdHeaderMax))
			if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
				return 0, "", fmt.Errorf("read zstd header: %w", err)
			}
		}
		n, err := zstdSize(head)
		return n, "the zstd frame header", err
	case ".gz":
		if length < 8 {
			return 0, "", errors.New("gzip: file too short (truncated download?)")
		}
		tail := make([]byte, 8)
		if _, err := r.ReadAt(tail, length-8); err != nil {
			return 0, "", fmt.Errorf("read gzip trailer: %w", err)
		}
		n, err := gzipSize(tail, length)
		return n, "the gzip trailer", err
	}
	return 0, "", fmt.Errorf("unknown compression %q", ext)
}

// readSidecar reads a block map file; a missing one is no map.
func readSidecar(path string) (*bmap.Map, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open block map: %w", err)
	}
	defer f.Close()
	m, err := bmap.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("block map %s: %w (delete it to flash without a map, or regenerate it with `bmaptool create`)", path, err)
	}
	return m, nil
}

// counting reports the bytes read through it.
type counting struct {
	r        io.Reader
	done     int64
	total    int64
	progress func(done, total int64)
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.done += int64(n)
		c.progress(c.done, c.total)
	}
	return n, err
}

func openURL(ctx context.Context, url string, opts Options) (Source, error) {
	client := opts.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	ext := compression(strings.SplitN(strings.SplitN(url, "?", 2)[0], "#", 2)[0])
	base, query, _ := strings.Cut(url, "?")
	mapURL := strings.TrimSuffix(base, ext) + ".bmap"
	if query != "" {
		mapURL += "?" + query
	}
	m, err := fetchBmap(ctx, client, mapURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	o := opts
	o.HTTPClient = client
	d, err := startDownload(ctx, url, o)
	if err != nil {
		cancel()
		return nil, err
	}
	closeIn := func() error { cancel(); return d.Close() } // before the read-ahead starts
	var in io.Reader = d
	var size int64
	var from string
	if ext == "" {
		if d.total < 0 {
			closeIn()
			return nil, fmt.Errorf("%s: the server does not announce the image's length (no Content-Length); download it first", url)
		}
		size, from = d.total, "the Content-Length"
		if m != nil && m.ImageSize != size {
			closeIn()
			return nil, fmt.Errorf("%s: its block map %s describes a %d-byte image but the server has %d bytes: they belong to different images", url, mapURL, m.ImageSize, size)
		}
		if opts.Size > 0 && opts.Size != size {
			closeIn()
			return nil, fmt.Errorf("%s has %d bytes, not the %d given as its size", url, size, opts.Size)
		}
	} else {
		br := bufio.NewReaderSize(d, zstdHeaderMax)
		in = br
		detect := func() (int64, string, error) {
			if ext == ".zst" {
				head, err := br.Peek(zstdHeaderMax)
				if len(head) == 0 && err != nil {
					return 0, "", err
				}
				return detectSize(ext, nil, d.total, head)
			}
			if d.total < 0 {
				return 0, "", errors.New("the server does not announce the file's length, so its end cannot be read")
			}
			return detectSize(ext, &rangeReader{ctx: ctx, client: client, url: url}, d.total, nil)
		}
		size, from, err = chooseSize(url, m, opts.Size, detect)
		if err != nil {
			closeIn()
			return nil, err
		}
	}
	// Cancelling the request's context ends a read of its body; the body
	// itself is closed once the read-ahead goroutine is done with it.
	return newStream(url, size, from, m, in, ext, cancel, d.Close)
}

// pulled is an image pulled from a registry into a temporary directory.
type pulled struct {
	*flash.ImageFile
	ref string
	dir string
}

func (p *pulled) Name() string { return p.ref }

func (p *pulled) Close() error {
	err := p.ImageFile.Close()
	if rerr := os.RemoveAll(p.dir); rerr != nil && err == nil {
		err = fmt.Errorf("remove the pulled image: %w", rerr)
	}
	return err
}

func openOCI(ctx context.Context, ref string, opts Options) (Source, error) {
	dir, err := os.MkdirTemp(opts.TempDir, "lekiwi-flash-oci-*")
	if err != nil {
		return nil, fmt.Errorf("temporary directory for pulling %s: %w (set the temp dir to a file system with room for the image)", ref, err)
	}
	img := filepath.Join(dir, "image.img")
	if _, err := ociart.Pull(ctx, ref, img, opts.Registry); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	f, err := flash.OpenImage(img) // with the artifact's block map, if it has one
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("image pulled from %s: %w", ref, err)
	}
	if opts.Size > 0 && opts.Size != f.Size() {
		f.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("image %s has %d bytes, not the %d given as its size", ref, f.Size(), opts.Size)
	}
	return &pulled{ImageFile: f, ref: ref, dir: dir}, nil
}
