package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/provision/flash"
)

// flashTo flashes src to n fresh file targets (plus extra ones) and returns
// their paths and results.
func flashTo(t *testing.T, src flash.Source, n int, extra ...flash.Target) ([]string, []flash.Result) {
	t.Helper()
	dir := t.TempDir()
	var targets []flash.Target
	var paths []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("card%d.img", i))
		ft, err := flash.OpenFileTarget(p, src.Size())
		if err != nil {
			t.Fatal(err)
		}
		defer ft.Close()
		targets = append(targets, ft)
		paths = append(paths, p)
	}
	targets = append(targets, extra...)
	return paths, flash.Flash(context.Background(), src, targets, flash.Options{ChunkSize: 1 << 20})
}

func assertCards(t *testing.T, paths []string, results []flash.Result, img []byte) {
	t.Helper()
	for i, r := range results[:len(paths)] {
		if r.Err != nil {
			t.Fatalf("target %s: %v (phase %s)", r.Target, r.Err, r.Phase)
		}
		got, err := os.ReadFile(paths[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img) {
			t.Fatalf("target %s differs from the image", paths[i])
		}
	}
}

// flash.Flash writes every kind of streamed source to two targets, each
// byte-equal to the image, reading the stream once.
func TestFlashFromStreams(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 10*mib+4096, 21)
	xzPath := compressFile(t, raw, "xz", "-0")
	zstPath := compressFile(t, raw, "zstd", "-q", "-1")
	gzPath := compressFile(t, raw, "gzip", "-1")
	mapDir := t.TempDir() // the .xz with its sidecar, apart from the others
	xzMapped := filepath.Join(mapDir, "robot.img.xz")
	b, _ := os.ReadFile(xzPath)
	os.WriteFile(xzMapped, b, 0o644)
	m := writeBmap(t, raw, filepath.Join(mapDir, "robot.img.bmap"))
	mapBytes, _ := os.ReadFile(filepath.Join(mapDir, "robot.img.bmap"))
	zst, _ := os.ReadFile(zstPath)
	gz, _ := os.ReadFile(gzPath)

	fs := &fileServer{files: map[string][]byte{
		"/robot.img": img, "/robot.img.bmap": mapBytes, "/bare.img.zst": zst, "/bare.img.gz": gz,
	}, etag: `"v1"`, drops: 2, cut: 300 << 10}
	srv := httptest.NewServer(fs)
	defer srv.Close()

	for _, c := range []struct {
		ref     string
		wantMap bool
	}{
		{xzMapped, true},
		{zstPath, false},
		{gzPath, false},
		{srv.URL + "/robot.img", true},
		{srv.URL + "/bare.img.zst", false},
		{srv.URL + "/bare.img.gz", false},
	} {
		t.Run(strings.TrimPrefix(c.ref, dir), func(t *testing.T) {
			fs.mu.Lock()
			fs.drops = 2
			fs.mu.Unlock()
			src, err := Open(context.Background(), c.ref, fastRetry())
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if (src.BlockMap() != nil) != c.wantMap {
				t.Fatalf("block map %v, want %v", src.BlockMap() != nil, c.wantMap)
			}
			paths, results := flashTo(t, src, 2)
			assertCards(t, paths, results, img)
			fs.mu.Lock()
			left := fs.drops
			fs.mu.Unlock()
			if strings.HasPrefix(c.ref, "http") && left != 0 {
				t.Errorf("the download was not cut (%d cuts left): the test proves no resume", left)
			}
			if c.wantMap && results[0].BytesWritten > m.MappedBytes()+2*flash.HeaderRegion {
				t.Errorf("wrote %d bytes with a map of %d mapped bytes", results[0].BytesWritten, m.MappedBytes())
			}
		})
	}
}

// corrupting flips one byte of what it writes at off: a card that lies.
type corrupting struct {
	*flash.FileTarget
	off int64
}

func (c *corrupting) WriteAt(p []byte, off int64) (int, error) {
	if c.off >= off && c.off < off+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[c.off-off] ^= 0x40
		p = q
	}
	return c.FileTarget.WriteAt(p, off)
}

// A verification mismatch on one card fails that card alone; the stream cannot
// be re-read to find the first differing byte, which the message says.
func TestFlashStreamVerifyMismatch(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 6*mib, 22)
	path := compressFile(t, raw, "zstd", "-q", "-1")
	src, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bad, err := flash.OpenFileTarget(filepath.Join(t.TempDir(), "bad.img"), src.Size())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	corruptAt := int64(3*mib + 4096 + 100) // inside a data region, outside the header regions
	paths, results := flashTo(t, src, 2, &corrupting{bad, corruptAt})
	assertCards(t, paths, results, img)
	r := results[2]
	if r.Err == nil || r.Phase != flash.PhaseVerify {
		t.Fatalf("corrupting target: %v in phase %s, want a verify failure", r.Err, r.Phase)
	}
	if !strings.Contains(r.Err.Error(), "differs from the source") || !strings.Contains(r.Err.Error(), "cannot go back") {
		t.Errorf("message %q: want the range and why the first differing byte is unknown", r.Err)
	}
	_, err = src.ReadAt(make([]byte, 1), 0)
	if !errors.Is(err, ErrBehind) {
		t.Errorf("re-read after flashing: %v, want ErrBehind", err)
	}
}
