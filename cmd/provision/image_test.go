package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/inspect"
)

// arm64ELF is enough of an ELF header for architecture detection.
func arm64ELF() []byte {
	b := make([]byte, 4096)
	copy(b, "\x7fELF\x02\x01\x01")
	b[18] = 183 // EM_AARCH64
	return b
}

// The technician's path end to end through the CLI: a root filesystem
// tarball and a firmware folder become an A/B image with sidecars, which
// inspect reads back, customize personalises in place, and a second build
// reproduces byte for byte.
func TestImageBuildInspectCustomizeCLI(t *testing.T) {
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "rootfs.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	mt := time.Unix(1767225600, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = mt
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	add(&tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/dash", Typeflag: tar.TypeReg, Mode: 0o755}, arm64ELF())
	add(&tar.Header{Name: "usr/bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash", Mode: 0o777}, nil)
	add(&tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin", Mode: 0o777}, nil)
	add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("debian\n"))
	tw.Close()
	f.Close()
	fw := filepath.Join(dir, "firmware")
	os.MkdirAll(fw, 0o755)
	os.WriteFile(filepath.Join(fw, "start4.elf"), []byte(strings.Repeat("F", 5000)), 0o644)
	os.WriteFile(filepath.Join(fw, "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	agent := filepath.Join(dir, "lekiwi-agent")
	os.WriteFile(agent, arm64ELF(), 0o755)

	env := map[string]string{"SOURCE_DATE_EPOCH": "1767225600"}
	build := func(out string) {
		t.Helper()
		_, stderr, err := execute(env, "image", "build", "--base", tarPath, "--firmware", fw, "--profile", "lekiwi", "--agent", agent,
			"--control-url", "wss://control.lan:8443", "--version", "1.2.3", "--boot-size", "64", "--out", out, "--temp-dir", dir)
		if err != nil {
			t.Fatalf("build: %v\n%s", err, stderr)
		}
	}
	img := filepath.Join(dir, "a.img")
	build(img)
	for _, side := range []string{img + ".bmap", img + ".blkidx"} {
		if _, err := os.Stat(side); err != nil {
			t.Fatalf("sidecar: %v", err)
		}
	}
	if _, err := os.Stat(img + ".partial"); !os.IsNotExist(err) {
		t.Fatalf("partial output left behind: %v", err)
	}
	if _, err := exec.LookPath("bmaptool"); err == nil {
		if out, err := exec.Command("bmaptool", "copy", "--bmap", img+".bmap", img, filepath.Join(dir, "copy.img")).CombinedOutput(); err != nil {
			t.Fatalf("bmaptool copy with our bmap: %v\n%s", err, out)
		}
	}
	img2 := filepath.Join(dir, "b.img")
	build(img2)
	if sum(t, img) != sum(t, img2) {
		t.Fatal("two builds of the same inputs differ")
	}

	stdout, stderr, err := execute(nil, "image", "inspect", img, "--output", "json")
	if err != nil {
		t.Fatalf("inspect: %v\n%s%s", err, stdout, stderr)
	}
	var r inspect.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	if r.Autoboot == nil || r.Autoboot.ActiveSlot != "a" || len(r.Slots) != 2 || r.Slots[1].Info == nil || r.Slots[1].Info.Version != "1.2.3" {
		t.Fatalf("inspect report: %s", stdout)
	}
	userData := func() string {
		for _, f := range r.Slots[0].Files {
			if strings.HasSuffix(f.Path, ":user-data") {
				return f.SHA256
			}
		}
		t.Fatal("no user-data in the report")
		return ""
	}
	before := userData()

	start := time.Now()
	if _, stderr, err := execute(nil, "image", "customize", img, "--robot-id", "lekiwi-0042", "--hostname", "lekiwi-0042", "--enroll-token", "lkw_enroll_x"); err != nil {
		t.Fatalf("customize: %v\n%s", err, stderr)
	}
	t.Logf("customize took %s", time.Since(start).Round(time.Millisecond))
	stdout, _, err = execute(nil, "image", "inspect", img, "--output", "json")
	if err != nil {
		t.Fatalf("inspect after customize: %v\n%s", err, stdout)
	}
	r = inspect.Report{}
	json.Unmarshal([]byte(stdout), &r)
	if userData() == before {
		t.Fatal("customize did not change the cloud-init seed")
	}
	if _, _, err := execute(nil, "image", "inspect", tarPath); err == nil {
		t.Fatal("inspect accepted a tarball")
	}
	if _, stderr, err := execute(env, "image", "build", "--base", tarPath, "--profile", "lekiwi", "--agent", agent, "--out", filepath.Join(dir, "c.img")); err == nil {
		t.Fatal("a tarball base without --firmware built an image with no boot files")
	} else if _, serr := os.Stat(filepath.Join(dir, "c.img")); serr == nil {
		t.Fatalf("failed build left its output: %s", stderr)
	}
}

func sum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
