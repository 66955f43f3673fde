package ociart

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/internal/registrytest"
)

func need(t *testing.T, bin string) {
	t.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		t.Skipf("%s is not installed (Debian package in the Makefile's DEB_TEST): %v", bin, err)
	}
}

// startRegistry runs Debian's docker-registry on a free loopback port with
// storage in a temporary directory; it returns host:port and the storage
// root.
func startRegistry(t *testing.T) (addr, root string) { return registrytest.Start(t) }

const mib = 1 << 20

// makeImage writes a 48 MiB GPT image with go-diskfs: a patterned
// partition, one with data around a large hole, an empty one and one with
// attributes, plus a few bytes in the gap between two partitions; and
// sidecar files. It returns the image path.
func makeImage(t *testing.T, dir string) string {
	t.Helper()
	return makeImageSizedT(t, dir)
}

// makeImageSized is the small fixture for fuzz seeds: 1 MiB, one
// partition.
func makeImageSized(f *testing.F, dir string) string {
	path := filepath.Join(dir, "small.img")
	fsimagetest.GPTDisk(f, path, mib,
		&gpt.Partition{Index: 1, Start: 64, End: 1900, Type: gpt.LinuxFilesystem, Name: "p", GUID: "11111111-2222-4333-8444-555555555551"})
	return path
}

func makeImageSizedT(t *testing.T, dir string) string {
	path := filepath.Join(dir, "robot.img")
	f := fsimagetest.GPTDisk(t, path, 48*mib,
		&gpt.Partition{Index: 1, Start: 2048, End: 2048 + 8*2048 - 1, Type: gpt.MicrosoftBasicData, Name: "boot_a", GUID: "11111111-2222-4333-8444-555555555551"},
		&gpt.Partition{Index: 2, Start: 20480, End: 20480 + 16*2048 - 1, Type: gpt.LinuxFilesystem, Name: "system_a", GUID: "11111111-2222-4333-8444-555555555552"},
		&gpt.Partition{Index: 3, Start: 53248, End: 53248 + 4*2048 - 1, Type: gpt.LinuxFilesystem, Name: "empty", GUID: "11111111-2222-4333-8444-555555555553"},
		&gpt.Partition{Index: 4, Start: 63488, End: 63488 + 8*2048 - 1, Type: gpt.LinuxFilesystem, Name: "persistent", GUID: "11111111-2222-4333-8444-555555555554", Attributes: 1<<60 | 1})
	defer f.Close()
	pattern := func(seed byte, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = seed + byte(i*7) + byte(i>>9)
		}
		return b
	}
	writes := []struct {
		off  int64
		data []byte
	}{
		{1 * mib, pattern(1, 8*mib)},                              // boot_a full
		{10 * mib, pattern(2, mib)},                               // system_a start
		{10*mib + 12*mib, pattern(3, 3*mib)},                      // system_a end, hole between
		{9*mib + 4096, []byte("gap bytes outside any partition")}, // gap between boot_a and system_a
		{31*mib + 512*7, pattern(5, 100)},                         // persistent, unaligned small write
		{38 * mib, pattern(4, 2*mib)},                             // persistent tail
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path+".bmap", []byte("<?xml version=\"1.0\"?><bmap version=\"2.0\"></bmap>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

func assertAbsent(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a failed pull (err %v)", p, err)
		}
	}
}

var testMeta = Meta{Profile: "lekiwi", Version: "1.2.3", Base: "raspios-bookworm-arm64-lite", Created: time.Unix(1700000000, 0)}

func TestPushPullRoundTrip(t *testing.T) {
	addr, root := startRegistry(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := makeImage(t, dir)
	ref := addr + "/lekiwi/image:1.2.3"
	var progress bytes.Buffer
	opts := Options{Insecure: true, Progress: &progress}
	d1, err := Push(ctx, img, ref, testMeta, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d1, "sha256:") {
		t.Fatalf("digest %q", d1)
	}
	if !strings.Contains(progress.String(), "upload") {
		t.Errorf("no progress lines: %q", progress.String())
	}
	d2, err := Push(ctx, img, addr+"/lekiwi/image:again", testMeta, Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Fatalf("two pushes of the same image: %s then %s", d1, d2)
	}

	out := filepath.Join(t.TempDir(), "pulled.img")
	meta, err := Pull(ctx, ref, out, Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if !meta.Created.Equal(testMeta.Created) || meta.Profile != testMeta.Profile || meta.Version != testMeta.Version || meta.Base != testMeta.Base {
		t.Errorf("meta %+v, want %+v", meta, testMeta)
	}
	if a, b := fileSHA(t, img), fileSHA(t, out); a != b {
		t.Fatalf("pulled image sha256 %s, pushed %s", b, a)
	}
	st, _ := os.Stat(out)
	if alloc := allocated(t, out); alloc >= st.Size()/2 {
		t.Errorf("pulled image allocates %d of %d bytes: holes were written", alloc, st.Size())
	}
	if fileSHA(t, img+".bmap") != fileSHA(t, out+".bmap") {
		t.Errorf("sidecar .bmap differs")
	}
	assertAbsent(t, out+".partial")

	// sfdisk reads the pulled table as the pushed one.
	if _, err := exec.LookPath("sfdisk"); err == nil {
		a, err1 := exec.Command("sfdisk", "-d", img).Output()
		b, err2 := exec.Command("sfdisk", "-d", out).Output()
		if err1 != nil || err2 != nil {
			t.Fatalf("sfdisk: %v %v", err1, err2)
		}
		if strings.ReplaceAll(string(a), img, "X") != strings.ReplaceAll(string(b), out, "X") {
			t.Errorf("sfdisk -d differs:\n%s\n%s", a, b)
		}
	}

	// Every partition layer is a plain zstd stream: Debian's zstd decodes it.
	if _, err := exec.LookPath("zstd"); err == nil {
		desc, err := remote.Get(mustRef(t, ref))
		if err != nil {
			t.Fatal(err)
		}
		mf, err := parseManifest(desc.Manifest, string(desc.MediaType))
		if err != nil {
			t.Fatal(err)
		}
		l := mf.Layers[1]
		blob := blobPath(root, l.Digest)
		got, err := exec.Command("zstd", "-dc", blob).Output()
		if err != nil {
			t.Fatalf("zstd -dc %s: %v", blob, err)
		}
		sum := sha256.Sum256(got)
		if hex.EncodeToString(sum[:]) != l.Annotations[AnnotationPartSHA] {
			t.Errorf("zstd -d of partition %s does not match its sha256 annotation", l.Annotations[AnnotationPartName])
		}
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func blobPath(root, digest string) string {
	hexd := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
}

func TestPullCorruptedBlob(t *testing.T) {
	for _, tc := range []struct {
		layer int
		want  string
	}{
		{4, "partition persistent"}, // zstd frame checksum or digest
		{0, "GPT layer"},            // raw bytes: only the digest catches it
	} {
		t.Run(tc.want, func(t *testing.T) { testPullCorruptedBlob(t, tc.layer, tc.want) })
	}
}

func testPullCorruptedBlob(t *testing.T, layer int, want string) {
	addr, root := startRegistry(t)
	ctx := context.Background()
	img := makeImage(t, t.TempDir())
	ref := addr + "/lekiwi/image:bad"
	if _, err := Push(ctx, img, ref, testMeta, Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(mustRef(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	mf, err := parseManifest(desc.Manifest, string(desc.MediaType))
	if err != nil {
		t.Fatal(err)
	}
	blob := blobPath(root, mf.Layers[layer].Digest)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "pulled.img")
	_, err = Pull(ctx, ref, out, Options{Insecure: true})
	if err == nil {
		t.Fatal("pull of a corrupted blob succeeded")
	}
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "corrupted") {
		t.Errorf("error does not name the partition: %v", err)
	}
	t.Logf("corrupted blob: %v", err)
	assertAbsent(t, out, out+".partial", out+".bmap", out+".bmap.partial")
}

// Artifacts pushed while images had a block index carry its layer; Pull
// must still accept them and just leave the layer out.
func TestPlanPullSkipsRetiredBlockIndexLayer(t *testing.T) {
	mb, err := os.ReadFile("testdata/lekiwi.manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := os.ReadFile("testdata/lekiwi.config.json")
	if err != nil {
		t.Fatal(err)
	}
	mf, err := parseManifest(mb, manifestMediaType)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseConfig(cb)
	if err != nil {
		t.Fatal(err)
	}
	mf.Layers = append(mf.Layers, descriptor{MediaType: retiredBlockIndexType, Size: 3000,
		Digest:      "sha256:2c509c7407097aa7d11f354da6d4222ced423be80bfdb58f63c290c13d6e0153",
		Annotations: map[string]string{AnnotationTitle: "image.blkidx"}})
	p, err := planPull(mf, c)
	if err != nil {
		t.Fatalf("an artifact with the retired block index layer: %v", err)
	}
	if p.bmap == nil || p.bmap.MediaType != BmapMediaType {
		t.Errorf("block map layer %+v, want the artifact's", p.bmap)
	}
}

func TestPullRefusesOtherArtifacts(t *testing.T) {
	addr, _ := startRegistry(t)
	ctx := context.Background()
	ci, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := addr + "/library/busybox:latest"
	if err := remote.Write(mustRef(t, ref), ci); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "x.img")
	_, err = Pull(ctx, ref, out, Options{Insecure: true})
	if err == nil || !strings.Contains(err.Error(), "not a Lekiwi disk image") {
		t.Fatalf("pull of a container image: %v", err)
	}
	assertAbsent(t, out, out+".partial")

	_, err = Pull(ctx, addr+"/lekiwi/image:nope", out, Options{Insecure: true})
	if err == nil || !strings.Contains(err.Error(), "no image "+addr+"/lekiwi/image:nope") {
		t.Fatalf("pull of a missing tag: %v", err)
	}
	t.Logf("missing tag: %v", err)
	assertAbsent(t, out, out+".partial")
}

func TestPushRefusesBadImages(t *testing.T) {
	dir := t.TempDir()
	img := makeImage(t, dir)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	mbr := filepath.Join(dir, "mbr.img")
	if err := os.WriteFile(mbr, make([]byte, 4*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(dir, "trunc.img")
	if err := os.WriteFile(trunc, b[:len(b)-mib], 0o644); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(dir, "corrupt.img")
	c := bytes.Clone(b)
	c[1024+3] ^= 1 // first partition entry's type GUID
	if err := os.WriteFile(corrupt, c, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{mbr, "MBR image"},
		{trunc, "truncated"},
		{corrupt, "CRC mismatch"},
		{filepath.Join(dir, "missing.img"), "no such file"},
	} {
		// No registry is needed: the image is refused before any network use.
		_, err := Push(context.Background(), tc.path, "127.0.0.1:1/x/y:z", Meta{}, Options{Insecure: true})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", filepath.Base(tc.path), err, tc.want)
		}
	}
}

func TestReadGPTMatchesTable(t *testing.T) {
	f, size := fsimagetest.Open(t, makeImage(t, t.TempDir()))
	tab, err := readGPT(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if tab.DiskGUID != "5b1e6a4c-1c8e-4f55-9d2a-0a0b0c0d0e0f" || len(tab.Entries) != 4 {
		t.Fatalf("table %+v", tab)
	}
	p4 := tab.Entries[3]
	if p4.Name != "persistent" || p4.FirstLBA != 63488 || p4.LastLBA != 63488+8*2048-1 || p4.Attributes != 1<<60|1 ||
		p4.GUID != "11111111-2222-4333-8444-555555555554" || p4.Type != "0fc63daf-8483-4772-8e79-3d69d8477de4" {
		t.Errorf("partition 4 %+v", p4)
	}
}

func TestParseExtents(t *testing.T) {
	for _, tc := range []struct {
		in   string
		size int64
		want []extent
		bad  bool
	}{
		{"", 100, nil, false},
		{"0+10,20+5", 100, []extent{{0, 10}, {20, 5}}, false},
		{"0+10,5+5", 100, nil, true}, // overlap
		{"90+11", 100, nil, true},    // past the end
		{"0+0", 100, nil, true},      // empty
		{"-1+5", 100, nil, true},     // negative
		{"1", 100, nil, true},        // not offset+length
		{"9223372036854775807+1", 100, nil, true},
	} {
		got, err := parseExtents(tc.in, tc.size)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		if !tc.bad && fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%q: %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestSparseWriterAndHoleReader(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 * mib); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3*mib)
	copy(data[100:], "head")
	copy(data[2*mib+5:], "tail")
	w := &sparseWriter{f: f, off: 512}
	for chunk := data; len(chunk) > 0; {
		n := min(len(chunk), 777777)
		if _, err := w.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		chunk = chunk[n:]
	}
	got, err := io.ReadAll(newHoleReader(f, 512, 3*mib))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("hole reader did not read back what the sparse writer wrote")
	}
	if alloc := allocated(t, f.Name()); alloc > 64*1024 {
		t.Errorf("%d bytes allocated for two small writes", alloc)
	}
}
