package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/lekiwi/heartbeat/internal/registrytest"
)

// TestImagePushPull runs `provision image push` and `pull` against Debian's
// docker-registry on loopback and compares the bytes.
func TestImagePushPull(t *testing.T) {
	addr, _ := registrytest.Start(t)
	dir := t.TempDir()

	img := filepath.Join(dir, "robot.img")
	d, err := diskfs.Create(img, 4<<20, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Partition(&gpt.Table{LogicalSectorSize: 512, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 6143, Type: gpt.LinuxFilesystem, Name: "system_a"}}}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if f, err := os.OpenFile(img, os.O_RDWR, 0); err == nil {
		f.WriteAt(bytes.Repeat([]byte("lekiwi"), 1000), 1<<20)
		f.Close()
	}

	env := func(k string) (string, bool) {
		if k == "SOURCE_DATE_EPOCH" {
			return "1700000000", true
		}
		return "", false
	}
	ref := addr + "/lekiwi/image:1.0.0"
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut, env)
	root.SetArgs([]string{"image", "push", "--insecure", "--version", "1.0.0", "--profile", "lekiwi", img, ref})
	if err := root.Execute(); err != nil {
		t.Fatalf("push: %v\n%s", err, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "sha256:") {
		t.Fatalf("push printed %q, want the digest", out.String())
	}
	pulled := filepath.Join(dir, "pulled.img")
	out.Reset()
	root = newRoot(&out, &errOut, env)
	root.SetArgs([]string{"image", "pull", "--insecure", ref, pulled})
	if err := root.Execute(); err != nil {
		t.Fatalf("pull: %v\n%s", err, errOut.String())
	}
	a, _ := os.ReadFile(img)
	b, _ := os.ReadFile(pulled)
	if !bytes.Equal(a, b) {
		t.Fatal("pulled image differs from the pushed one")
	}
	if !strings.Contains(out.String(), `profile "lekiwi" version "1.0.0"`) {
		t.Errorf("pull printed %q", out.String())
	}
	if !strings.Contains(errOut.String(), "upload") {
		t.Errorf("no progress on stderr: %q", errOut.String())
	}

	root = newRoot(&out, &errOut, env)
	root.SetArgs([]string{"image", "push", "--username", "u", img, ref})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "password-file") {
		t.Errorf("--username without --password-file: %v", err)
	}
}
