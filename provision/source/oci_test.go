package source

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/internal/registrytest"
)

// makeGPTImage writes a 16 MiB GPT image with two partitions holding some
// random data (what ociart pushes: it needs a partition table) and its block
// map; it returns the path and the bytes.
func makeGPTImage(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	path := filepath.Join(dir, "lekiwi.img")
	f := fsimagetest.GPTDisk(t, path, 16*mib,
		&gpt.Partition{Index: 1, Start: 2048, End: 2048 + 4*2048 - 1, Type: gpt.MicrosoftBasicData, Name: "boot_a", GUID: "11111111-2222-4333-8444-555555555551"},
		&gpt.Partition{Index: 2, Start: 12288, End: 12288 + 8*2048 - 1, Type: gpt.LinuxFilesystem, Name: "system_a", GUID: "11111111-2222-4333-8444-555555555552"})
	rng := rand.New(rand.NewPCG(31, 1))
	for _, w := range []struct{ off, n int64 }{{1 * mib, 2 * mib}, {6*mib + 512, 1000}, {9 * mib, mib}} {
		b := make([]byte, w.n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	writeBmap(t, path, path+".bmap")
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, img
}

// An image pushed to a real registry is pulled into TempDir, flashed to two
// cards byte for byte with the artifact's block map, and removed on Close.
func TestOCIFlash(t *testing.T) {
	addr, _ := registrytest.Start(t)
	ctx := context.Background()
	path, img := makeGPTImage(t, t.TempDir())
	ref := addr + "/lekiwi:1.4.0"
	if _, err := ociart.Push(ctx, path, ref, ociart.Meta{Profile: "lekiwi", Version: "1.4.0"}, ociart.Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{ref, "oci://" + ref} {
		t.Run(r, func(t *testing.T) {
			tmp := t.TempDir()
			src, err := Open(ctx, r, Options{TempDir: tmp, Registry: ociart.Options{Insecure: true}})
			if err != nil {
				t.Fatal(err)
			}
			if src.Name() != ref {
				t.Errorf("name %q, want %q", src.Name(), ref)
			}
			if src.Size() != int64(len(img)) {
				t.Fatalf("size %d, want %d", src.Size(), len(img))
			}
			if src.BlockMap() == nil {
				t.Error("the artifact's block map was not used")
			}
			paths, results := flashTo(t, src, 2)
			assertCards(t, paths, results, img)
			if err := src.Close(); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("%d entries left in the temp dir after Close", len(left))
			}
		})
	}

	t.Run("missing tag", func(t *testing.T) {
		tmp := t.TempDir()
		_, err := Open(ctx, addr+"/lekiwi:9.9.9", Options{TempDir: tmp, Registry: ociart.Options{Insecure: true}})
		if err == nil || !strings.Contains(err.Error(), "no image") {
			t.Fatalf("error %v, want 'no image'", err)
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("%d entries left in the temp dir after a failed pull", len(left))
		}
	})
}

// A registry reference is only tried when no file of that name exists.
func TestExistingFileWinsOverRegistryRef(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "localhost:5000")
	if err := os.MkdirAll(name, 0o755); err != nil {
		t.Fatal(err)
	}
	_, img := makeImage(t, dir, 2*mib, 32)
	file := filepath.Join(name, "lekiwi:1.0")
	if err := os.WriteFile(file, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	src, err := Open(context.Background(), "localhost:5000/lekiwi:1.0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if !bytes.Equal(readAll(t, src, mib), img) {
		t.Fatal("read something else than the file")
	}
	if k, err := Classify("localhost:5000/other:1.0"); err != nil || k != KindOCI {
		t.Fatalf("a missing file named like a registry reference: %q, %v; want %q", k, err, KindOCI)
	}
}
