package registry

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lekiwi/heartbeat/image/ociart"
)

// serve starts the registry stored in dir; the returned func stops it (a
// "restart" is stop + serve on the same dir).
func serve(t *testing.T, dir string) (host string, stop func()) {
	t.Helper()
	h, err := New(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	return strings.TrimPrefix(srv.URL, "http://"), srv.Close
}

func testImage(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "robot.img")
	d, err := diskfs.Create(path, 16<<20, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Partition(&gpt.Table{LogicalSectorSize: 512, ProtectiveMBR: true, GUID: "5B1E6A4C-1C8E-4F55-9D2A-0A0B0C0D0E0F",
		Partitions: []*gpt.Partition{
			{Index: 1, Start: 2048, End: 10239, Type: gpt.MicrosoftBasicData, Name: "boot_a", GUID: "11111111-2222-4333-8444-555555555551"},
			{Index: 2, Start: 10240, End: 30719, Type: gpt.LinuxFilesystem, Name: "system_a", GUID: "11111111-2222-4333-8444-555555555552"},
		}}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*31) ^ byte(i>>11)
	}
	f.WriteAt(data, 1<<20)
	f.WriteAt(data[:1<<20], 12<<20)
	return path
}

func TestImageSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	img := testImage(t, t.TempDir())
	host, stop := serve(t, dir)
	ctx := context.Background()
	ref := host + "/lekiwi/image:1.0.0"
	digest, err := ociart.Push(ctx, img, ref, ociart.Meta{Profile: "lekiwi", Version: "1.0.0"}, ociart.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	// A second push of the same image is a no-op with the same digest.
	if d2, err := ociart.Push(ctx, img, ref, ociart.Meta{Profile: "lekiwi", Version: "1.0.0"}, ociart.Options{Insecure: true}); err != nil || d2 != digest {
		t.Fatalf("second push: %s %v, want %s", d2, err, digest)
	}
	stop()
	if ents, _ := os.ReadDir(filepath.Join(dir, "uploads")); len(ents) != 0 {
		t.Errorf("%d upload files left after finished pushes", len(ents))
	}

	host, stop = serve(t, dir)
	defer stop()
	out := filepath.Join(t.TempDir(), "pulled.img")
	ref = host + "/lekiwi/image:1.0.0"
	if _, err := ociart.Pull(ctx, ref, out, ociart.Options{Insecure: true}); err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
	a, _ := os.ReadFile(img)
	b, _ := os.ReadFile(out)
	if !bytes.Equal(a, b) {
		t.Fatal("pulled image differs")
	}
	if _, err := ociart.Pull(ctx, host+"/lekiwi/image@"+digest, out, ociart.Options{Insecure: true}); err != nil {
		t.Fatalf("pull by digest after restart: %v", err)
	}
}

func TestManifestsTagsAndDeletesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	host, stop := serve(t, dir)
	repo, err := name.NewRepository(host+"/lab/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img1, _ := random.Image(2048, 2)
	img2, _ := random.Image(2048, 1)
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img1}, mutate.IndexAddendum{Add: img2})
	if err := remote.Write(repo.Tag("one"), img1); err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(repo.Tag("gone"), img2); err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(repo.Tag("multi"), idx); err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(repo.Tag("gone")); err != nil {
		t.Fatal(err)
	}
	stop()

	host, stop = serve(t, dir)
	defer stop()
	repo, _ = name.NewRepository(host+"/lab/app", name.Insecure)
	tags, err := remote.List(repo)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tags, ",") != "multi,one" {
		t.Errorf("tags after restart %v, want [multi one]", tags)
	}
	got, err := remote.Image(repo.Tag("one"))
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img1.Digest()
	if gd, _ := got.Digest(); gd != d1 {
		t.Errorf("digest %s, want %s", gd, d1)
	}
	// Layers are read back from disk and verified by the client.
	ls, _ := got.Layers()
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bytes.NewBuffer(nil).ReadFrom(rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
	}
	gi, err := remote.Index(repo.Tag("multi"))
	if err != nil {
		t.Fatal(err)
	}
	di, _ := idx.Digest()
	if gd, _ := gi.Digest(); gd != di {
		t.Errorf("index digest %s, want %s", gd, di)
	}
}

func TestUploadWithWrongDigestIsRefused(t *testing.T) {
	dir := t.TempDir()
	host, stop := serve(t, dir)
	defer stop()
	base := "http://" + host
	resp, err := http.Post(base+"/v2/x/y/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	req, _ := http.NewRequest(http.MethodPatch, base+loc, strings.NewReader("hello"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Range") != "0-4" {
		t.Fatalf("PATCH: %s range %q", resp.Status, resp.Header.Get("Range"))
	}
	// A chunk that does not continue where the upload stands.
	req, _ = http.NewRequest(http.MethodPatch, base+loc, strings.NewReader("x"))
	req.Header.Set("Content-Range", "0-0")
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("out-of-order PATCH: %s", resp.Status)
	}
	wrong := "sha256:" + strings.Repeat("0", 64)
	req, _ = http.NewRequest(http.MethodPut, base+loc+"?digest="+wrong, nil)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT with a wrong digest: %s", resp.Status)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	up, _ := os.ReadDir(filepath.Join(dir, "uploads"))
	if len(ents) != 0 || len(up) != 0 {
		t.Errorf("%d blobs and %d upload files left after a refused upload", len(ents), len(up))
	}
}

func TestTornJournalLineIsDropped(t *testing.T) {
	dir := t.TempDir()
	host, stop := serve(t, dir)
	repo, _ := name.NewRepository(host+"/lab/app", name.Insecure)
	img, _ := random.Image(100, 1)
	if err := remote.Write(repo.Tag("ok"), img); err != nil {
		t.Fatal(err)
	}
	stop()
	f, _ := os.OpenFile(filepath.Join(dir, "manifests.journal"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"op":"put","repo":"lab/app","ref":"torn","dig`)
	f.Close()
	host, stop = serve(t, dir)
	defer stop()
	repo, _ = name.NewRepository(host+"/lab/app", name.Insecure)
	if _, err := remote.Image(repo.Tag("ok")); err != nil {
		t.Fatalf("manifest before the torn line: %v", err)
	}

	// A bad line in the middle is not silently skipped.
	os.WriteFile(filepath.Join(dir, "manifests.journal"), []byte("garbage\n{}\n"), 0o640)
	if _, err := New(dir, Options{}); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("corrupt journal: %v", err)
	}
}

func TestParseJournal(t *testing.T) {
	good := `{"op":"put","repo":"a/b","ref":"t","contentType":"x","digest":"sha256:` + strings.Repeat("ab", 32) + "\"}\n" + `{"op":"delete","repo":"a/b","ref":"t"}` + "\n"
	for _, tc := range []struct {
		in   string
		n    int
		fail bool
	}{
		{"", 0, false},
		{good, 2, false},
		{good + `{"op":"put"`, 2, false}, // torn tail
		{`{"op":"move","repo":"a","ref":"t"}` + "\n", 0, true},
		{`{"op":"put","repo":"a","ref":"t","digest":"sha256:zz"}` + "\n", 0, true},
		{`{"op":"delete","repo":"../a","ref":"t"}` + "\n", 0, true},
	} {
		got, err := parseJournal(strings.NewReader(tc.in))
		if (err != nil) != tc.fail || (!tc.fail && len(got) != tc.n) {
			t.Errorf("%q: %d entries, err %v", tc.in, len(got), err)
		}
	}
}

func FuzzParseJournal(f *testing.F) {
	f.Add([]byte(`{"op":"put","repo":"a/b","ref":"t","digest":"sha256:` + strings.Repeat("ab", 32) + "\"}\n"))
	f.Add([]byte("{\"op\":\"delete\",\"repo\":\"a\",\"ref\":\"x\"}\n{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := parseJournal(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, e := range es {
			if e.Repo == "" || e.Ref == "" || strings.Contains(e.Repo+e.Ref, "..") {
				t.Fatalf("accepted %+v", e)
			}
		}
	})
}
