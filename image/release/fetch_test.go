package release

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/internal/registrytest"
)

// v2Files changes about a quarter of version 1's files in system_a and
// one in boot_a, and shifts the tail of system_a by an inserted file.
func v2Files() []file {
	fs := baseFiles()
	for i := range fs {
		if fs[i].part == "system_a" && fs[i].seed%4 == 0 && fs[i].seed >= 100 {
			fs[i].seed += 1000
		}
		if fs[i].part == "boot_a" && fs[i].seed == 2 {
			fs[i].seed = 3
		}
	}
	return fs
}

func pushRelease(t *testing.T, addr, dir, tag string) string {
	t.Helper()
	ref := addr + "/lekiwi/release:" + tag
	if _, err := Push(context.Background(), dir, ref, ociart.Options{Insecure: true, Auth: anonymous{}}); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestPushPullVerifyFetch(t *testing.T) {
	addr, _ := registrytest.Start(t)
	pub, priv := newKey(t)
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", priv, CreateOptions{})
	ref := pushRelease(t, addr, dir, "1.0.0")
	opts := ociart.Options{Insecure: true, Auth: anonymous{}}
	raw, cfg, err := Pull(context.Background(), ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	wantRaw, _, _ := ReadDir(dir)
	if !bytes.Equal(raw, wantRaw) {
		t.Fatal("pulled manifest differs from the pushed one: the signature annotation did not survive")
	}
	rel, err := Verify([]ed25519.PublicKey{pub}, raw, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify([]ed25519.PublicKey{newPub(t)}, raw, cfg); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("another key's robot accepted it: %v", err)
	}
	ct := &countingTransport{base: http.DefaultTransport}
	src, err := NewRegistrySource(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}, Transport: ct})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Release: rel, Source: src, CacheDir: t.TempDir()}
	plan, err := f.Plan("boot_b", "system_b")
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Fetch(context.Background(), "boot_b", "system_b")
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != plan.DownloadBytes || ct.n.Load() != plan.DownloadBytes || st.Requests != plan.Requests {
		t.Fatalf("fetched %d bytes (%d through the transport) in %d requests, plan said %d in %d", st.Bytes, ct.n.Load(), st.Requests, plan.DownloadBytes, plan.Requests)
	}
	for n, b := range writeAll(t, f, "boot_b", "system_b") {
		if !bytes.Equal(b, partitionBytes(t, img, n)) {
			t.Errorf("%s differs from the image", n)
		}
	}
	// An unsigned release pushed over the tag is refused by the robot.
	unsigned := createSigned(t, img, "1.0.0", nil, CreateOptions{Partitions: []string{"boot_a"}})
	pushRelease(t, addr, unsigned, "1.0.0")
	raw, cfg, err = Pull(context.Background(), ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify([]ed25519.PublicKey{pub}, raw, cfg); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned release from the registry: %v", err)
	}
}

func newPub(t *testing.T) ed25519.PublicKey { p, _ := newKey(t); return p }

// TestRangeOnBlobs checks that docker-registry answers Range requests on
// blobs with exactly the bytes asked for.
func TestRangeOnBlobs(t *testing.T) {
	addr, _ := registrytest.Start(t)
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", nil, CreateOptions{Partitions: []string{"system_a"}})
	ref := pushRelease(t, addr, dir, "r")
	_, cfgBytes, _ := ReadDir(dir)
	cfg, _ := ParseConfig(cfgBytes)
	pack := cfg.Packs[0]
	p, _ := blobPath(dir, pack.Digest)
	whole, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewRegistrySource(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 1}, {0, pack.Size}, {pack.Size - 1, 1}, {12345, 70000}, {pack.Size / 2, pack.Size / 3}} {
		rc, err := src.OpenRange(context.Background(), pack.Digest, r[0], r[1])
		if err != nil {
			t.Fatalf("range %d+%d: %v", r[0], r[1], err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, whole[r[0]:r[0]+r[1]]) {
			t.Fatalf("range %d+%d: got %d bytes that differ from the blob's", r[0], r[1], len(got))
		}
	}
	if _, err := src.OpenRange(context.Background(), "sha256:"+Hash{}.String(), 0, 10); err == nil {
		t.Fatal("a missing blob gave no error")
	}
}

// TestDeltaFetchesOnlyMissing: with half of the chunks local, exactly the
// other half's frames cross the wire.
func TestDeltaFetchesOnlyMissing(t *testing.T) {
	addr, _ := registrytest.Start(t)
	pub, priv := newKey(t)
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", priv, CreateOptions{Partitions: []string{"boot_a", "system_a"}})
	ref := pushRelease(t, addr, dir, "1.0.0")
	raw, cfgBytes, err := Pull(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := Verify([]ed25519.PublicKey{pub}, raw, cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	// Half the chunks, taken from the partition bytes, are local.
	local := mapChunks{}
	var wantBytes int64
	var all int
	for _, n := range []string{"boot_a", "system_a"} {
		data := partitionBytes(t, img, n)
		p, _ := rel.Config.Partition(n)
		var off int64
		for _, i := range p.Chunks {
			c := rel.Config.Chunks[i]
			if _, seen := local[c.SHA256]; !seen && i%2 == 0 {
				local[c.SHA256] = data[off : off+int64(c.Length)]
			}
			off += int64(c.Length)
		}
	}
	for i, c := range rel.Config.Chunks {
		all++
		if i%2 == 1 {
			wantBytes += int64(c.CompressedLength)
		}
	}
	ct := &countingTransport{base: http.DefaultTransport}
	src, err := NewRegistrySource(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}, Transport: ct})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Release: rel, Source: src, Local: local, CacheDir: t.TempDir()}
	st, err := f.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ct.n.Load() != wantBytes || st.Chunks != all/2 {
		t.Fatalf("downloaded %d bytes, %d chunks; want exactly the missing half's %d bytes, %d chunks", ct.n.Load(), st.Chunks, wantBytes, all/2)
	}
	t.Logf("%d of %d chunks local; %d bytes in %d requests", len(local), all, ct.n.Load(), ct.requests.Load())
	for n, b := range writeAll(t, f, "boot_a", "system_a") {
		if !bytes.Equal(b, partitionBytes(t, img, n)) {
			t.Errorf("%s differs from the image", n)
		}
	}
	// Nothing left to fetch.
	if st, err := f.Fetch(context.Background()); err != nil || st.Bytes != 0 {
		t.Fatalf("second fetch: %+v %v", st, err)
	}
}

// TestResumeAfterCut: a download cut at half its bytes resumes and fetches
// only what did not arrive (at most the frame in flight again).
func TestResumeAfterCut(t *testing.T) {
	addr, _ := registrytest.Start(t)
	pub, priv := newKey(t)
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", priv, CreateOptions{Partitions: []string{"boot_a", "system_a"}})
	ref := pushRelease(t, addr, dir, "1.0.0")
	raw, cfgBytes, _ := ReadDir(dir)
	rel, err := Verify([]ed25519.PublicKey{pub}, raw, cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	full, _ := (&Fetcher{Release: rel, CacheDir: cache}).Plan()
	var maxFrame int64
	for _, c := range rel.Config.Chunks {
		maxFrame = max(maxFrame, int64(c.CompressedLength))
	}
	cut := &countingTransport{base: http.DefaultTransport, failAfter: full.DownloadBytes / 2}
	src, err := NewRegistrySource(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}, Transport: cut})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Release: rel, Source: src, CacheDir: cache}
	if _, err := f.Fetch(context.Background()); err == nil {
		t.Fatal("the cut did not fail the download")
	}
	first := cut.n.Load()
	var buf bytes.Buffer
	if err := f.WritePartition(context.Background(), "system_a", &buf); !errors.Is(err, ErrChunkUnavailable) {
		t.Fatalf("writing a half-downloaded partition: %v", err)
	}
	left, _ := f.Plan()
	if left.Missing == 0 || left.Missing == full.Missing {
		t.Fatalf("after the cut %d of %d chunks missing", left.Missing, full.Missing)
	}
	ct := &countingTransport{base: http.DefaultTransport}
	if f.Source, err = NewRegistrySource(context.Background(), ref, ociart.Options{Insecure: true, Auth: anonymous{}, Transport: ct}); err != nil {
		t.Fatal(err)
	}
	st, err := f.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	second := ct.n.Load()
	if second != left.DownloadBytes || first+second > full.DownloadBytes+maxFrame {
		t.Fatalf("cut after %d bytes, resumed with %d (plan %d); whole download is %d, largest frame %d", first, second, left.DownloadBytes, full.DownloadBytes, maxFrame)
	}
	t.Logf("full %d bytes; cut at %d; resumed with %d in %d requests (%d chunks)", full.DownloadBytes, first, second, st.Requests, st.Chunks)
	for n, b := range writeAll(t, f, "boot_a", "system_a") {
		if !bytes.Equal(b, partitionBytes(t, img, n)) {
			t.Errorf("%s differs from the image", n)
		}
	}
}

// TestUpdateFromActiveSlot: a robot running version 1 on slot a indexes
// its slot and fetches version 2's slot b: only changed files travel.
func TestUpdateFromActiveSlot(t *testing.T) {
	pub, priv := newKey(t)
	v1 := makeImage(t, baseFiles())
	v2files := v2Files()
	v2 := makeImage(t, v2files)
	dir := createSigned(t, v2, "2.0.0", priv, CreateOptions{})
	raw, cfgBytes, _ := ReadDir(dir)
	rel, err := Verify([]ed25519.PublicKey{pub}, raw, cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	local := NewSlotChunks()
	for _, n := range []string{"boot_a", "system_a"} {
		if err := local.Add(context.Background(), bytes.NewReader(partitionBytes(t, v1, n)), 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	f := &Fetcher{Release: rel, Source: DirSource{dir}, Local: local, CacheDir: t.TempDir()}
	st, err := f.Fetch(context.Background(), "boot_a", "system_a")
	if err != nil {
		t.Fatal(err)
	}
	var changed int64
	for i, fl := range v2files {
		if fl != baseFiles()[i] && (fl.part == "boot_a" || fl.part == "system_a") {
			changed += int64(fl.n)
		}
	}
	// Random bytes do not compress: the download is the changed bytes
	// plus the chunk edges around each change.
	if st.Bytes < changed || st.Bytes > changed+int64(len(v2files))*64<<10 {
		t.Fatalf("downloaded %d bytes for %d changed bytes", st.Bytes, changed)
	}
	t.Logf("changed %d bytes, downloaded %d (%.2fx)", changed, st.Bytes, float64(st.Bytes)/float64(changed))
	for n, b := range writeAll(t, f, "boot_a", "system_a") {
		if !bytes.Equal(b, partitionBytes(t, v2, n)) {
			t.Errorf("%s differs from version 2", n)
		}
	}
}
