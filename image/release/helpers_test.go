package release

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/lekiwi/heartbeat/image/layout"
)

// file is a region of pseudo-random content written into a partition,
// standing for a file of the file system.
type file struct {
	part string
	off  int64
	seed uint64
	n    int
}

func randomBytes(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// baseFiles is version 1's content: both slots get the same files, and
// each slot a small slot-specific block (cmdline.txt, fstab).
func baseFiles() []file {
	var fs []file
	for _, slot := range []string{"a", "b"} {
		fs = append(fs, file{"boot_" + slot, 1 << 20, 1, 1 << 20}, file{"boot_" + slot, 4 << 20, 2, 300 << 10})
		for i := range 24 {
			fs = append(fs, file{"system_" + slot, int64(1<<20 + i*(160<<10)), uint64(100 + i), 120 << 10})
		}
		seed := uint64(7)
		if slot == "b" {
			seed = 8
		}
		fs = append(fs, file{"boot_" + slot, 8 << 20, seed, 4096}, file{"system_" + slot, 20 << 20, seed + 10, 4096})
	}
	return fs
}

// makeImage writes a GPT A/B image with the given files.
func makeImage(t testing.TB, files []file) string {
	t.Helper()
	plan, err := layout.New(layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}, []byte("release-test"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(plan.Size); err != nil {
		t.Fatal(err)
	}
	if err := layout.WriteGPT(f, plan); err != nil {
		t.Fatal(err)
	}
	for _, fl := range files {
		var start int64 = -1
		for _, p := range plan.Partitions {
			if p.Name == fl.part {
				start = p.Start
			}
		}
		if start < 0 {
			t.Fatalf("no partition %s", fl.part)
		}
		if _, err := f.WriteAt(randomBytes(fl.seed, fl.n), start+fl.off); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// partitionBytes reads a partition of an image.
func partitionBytes(t testing.TB, img, name string) []byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	plan, err := layout.ReadGPT(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plan.Partitions {
		if p.Name == name {
			b := make([]byte, p.Size)
			if _, err := f.ReadAt(b, p.Start); err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no partition %s", name)
	return nil
}

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// createSigned makes a signed release directory of img. The images of
// makeImage carry no build metadata, so the security version is given.
func createSigned(t testing.TB, img, version string, priv ed25519.PrivateKey, o CreateOptions) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rel")
	if _, err := Create(context.Background(), img, dir, Meta{Version: version, Profile: "lekiwi", MinAgentVersion: "0.1.0", SecurityVersion: 1}, o); err != nil {
		t.Fatal(err)
	}
	if priv != nil {
		if _, err := SignDir(dir, priv); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// countingTransport counts the body bytes of blob responses, and fails
// reads once failAfter bytes have passed (when failAfter > 0).
type countingTransport struct {
	base      http.RoundTripper
	n         atomic.Int64
	requests  atomic.Int64
	failAfter int64
}

var errCut = errors.New("link cut")

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(req)
	if err != nil || !strings.Contains(req.URL.Path, "/blobs/") || req.Method != http.MethodGet {
		return resp, err
	}
	c.requests.Add(1)
	resp.Body = &countingBody{ReadCloser: resp.Body, t: c}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	t *countingTransport
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.t.failAfter > 0 {
		left := b.t.failAfter - b.t.n.Load()
		if left <= 0 {
			return 0, errCut
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := b.ReadCloser.Read(p)
	b.t.n.Add(int64(n))
	return n, err
}

// mapChunks is a LocalChunks holding chunks in memory.
type mapChunks map[Hash][]byte

func (m mapChunks) Has(h Hash) bool { _, ok := m[h]; return ok }
func (m mapChunks) ReadChunk(h Hash, p []byte) (bool, error) {
	b, ok := m[h]
	if !ok || len(b) != len(p) {
		return false, nil
	}
	copy(p, b)
	return true, nil
}

func writeAll(t testing.TB, f *Fetcher, names ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range names {
		var b bytes.Buffer
		if err := f.WritePartition(context.Background(), n, &b); err != nil {
			t.Fatalf("write %s: %v", n, err)
		}
		out[n] = b.Bytes()
	}
	return out
}

// anonymous authenticates as nobody (no keychain lookups in tests).
type anonymous struct{}

func (anonymous) Authorization() (*authn.AuthConfig, error) { return &authn.AuthConfig{}, nil }
