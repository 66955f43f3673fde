package base

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lekiwi/heartbeat/internal/registrytest"
)

// startRegistry runs Debian's docker-registry on a free loopback port with
// storage in a temporary directory and returns its host:port.
func startRegistry(t *testing.T) string {
	addr, _ := registrytest.Start(t)
	return addr
}

func layer(t *testing.T, files map[string][]byte, extra ...tar.Header) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range extra {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	for p, data := range files {
		hdr := &tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(1700000000, 0)}
		if strings.HasPrefix(p, "usr/bin/ping") {
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02cap"}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage has two layers: the second deletes /etc/old with a whiteout.
func testImage(t *testing.T, arch string, machine uint16) v1.Image {
	t.Helper()
	base := layer(t, map[string][]byte{"usr/bin/dash": fakeELF(machine), "etc/old": []byte("gone"), "usr/bin/ping": []byte("p")},
		tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
		tar.Header{Name: "usr/bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash"})
	top := layer(t, map[string][]byte{"etc/.wh.old": nil, "etc/hostname": []byte("xle\n")})
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func assertOCIRoot(t *testing.T, b *Base) {
	t.Helper()
	if b.Kind != KindOCI || b.Arch != "arm64" || b.Boot != nil {
		t.Errorf("kind %v arch %q boot %v", b.Kind, b.Arch, b.Boot)
	}
	if DetectArch(b.Root) != "arm64" {
		t.Errorf("ELF detection says %q", DetectArch(b.Root))
	}
	if got, err := b.Root.ReadFile("etc/hostname"); err != nil || string(got) != "xle\n" {
		t.Errorf("etc/hostname %q %v", got, err)
	}
	if _, ok := b.Root.Get("etc/old"); ok {
		t.Error("whiteout ignored: etc/old still there")
	}
	if _, ok := b.Root.Get("etc/.wh.old"); ok {
		t.Error("whiteout marker imported as a file")
	}
	if e, ok := b.Root.Get("usr/bin/ping"); !ok || string(e.Xattrs["security.capability"]) != "\x01\x00\x00\x02cap" {
		t.Errorf("ping xattrs lost: %v", e)
	}
	if !strings.Contains(b.Description, "linux/arm64, 2 layers") {
		t.Errorf("description %q", b.Description)
	}
}

func TestOpenOCIFromRegistry(t *testing.T) {
	reg := startRegistry(t)
	push := func(repo string, img v1.Image) string {
		ref := reg + "/" + repo
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		return ref
	}
	arm := push("base/debian:bookworm", testImage(t, "arm64", 0xB7))
	amd := push("base/debian:amd64-only", testImage(t, "amd64", 0x3E))
	// An index with only an amd64 child: arm64 is looked up by platform.
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: testImage(t, "amd64", 0x3E),
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	idxRef, _ := name.ParseReference(reg+"/base/multi:amd64", name.Insecure)
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}

	tmp := t.TempDir()
	b, err := Open(context.Background(), arm, Options{TempDir: tmp, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	assertOCIRoot(t, b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	assertEmptyDir(t, tmp)

	for _, ref := range []string{amd, idxRef.String()} {
		_, err := Open(context.Background(), ref, Options{TempDir: tmp, Insecure: true})
		if err == nil || !strings.Contains(err.Error(), "linux/arm64") {
			t.Errorf("%s: error %v, want one naming linux/arm64", ref, err)
		}
		assertEmptyDir(t, tmp)
	}
}

func TestOpenOCILayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		arch    string
		machine uint16
	}{{"amd64", 0x3E}, {"arm64", 0xB7}} {
		if err := p.AppendImage(testImage(t, a.arch, a.machine), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: a.arch})); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	b, err := Open(context.Background(), "oci-layout:"+dir, Options{TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	assertOCIRoot(t, b)
	b.Close()
	assertEmptyDir(t, tmp)
	if _, err := Open(context.Background(), "oci-layout:"+dir, Options{TempDir: tmp, Platform: "linux/riscv64"}); err == nil || !strings.Contains(err.Error(), "no image for platform linux/riscv64") {
		t.Errorf("riscv64: %v", err)
	}
	assertEmptyDir(t, tmp)
}
