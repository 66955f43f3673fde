package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `provision flash` through the CLI: a zstd-compressed image fanned out to
// three file targets, one of which cannot be opened (a directory): that
// one fails alone, the others equal the source, and the exit status says
// not every target succeeded.
func TestFlashCLI(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd not installed (DEB_TEST has it)")
	}
	dir := t.TempDir()
	raw := make([]byte, 6<<20)
	copy(raw, "header")
	for i := 2 << 20; i < 3<<20; i++ {
		raw[i] = byte(i * 7)
	}
	copy(raw[len(raw)-512:], "backup header")
	img := filepath.Join(dir, "robot.img")
	os.WriteFile(img, raw, 0o644)
	if out, err := exec.Command("zstd", "-q", img, "-o", img+".zst").CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v %s", err, out)
	}
	good1, good2, bad := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "adir")
	os.Mkdir(bad, 0o755)
	stdout, stderr, err := execute(nil, "flash", "--image", img+".zst", "--output", "json", "--temp-dir", dir, good1, bad, good2)
	if err == nil || !strings.Contains(err.Error(), "1 of 3 targets failed") {
		t.Fatalf("exit: %v\n%s%s", err, stdout, stderr)
	}
	var rows []struct {
		Target string `json:"target"`
		OK     bool   `json:"ok"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil || len(rows) != 3 {
		t.Fatalf("json %v: %s", err, stdout)
	}
	for _, r := range rows {
		if (r.Target == bad) == r.OK || (r.Target == bad && !strings.Contains(r.Error, "not a regular file")) {
			t.Errorf("row %+v", r)
		}
	}
	for _, p := range []string{good1, good2} {
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%s differs from the source (%v)", p, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "lekiwi-flash-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if _, _, err := execute(nil, "flash", good1); err == nil || !strings.Contains(err.Error(), "--image is required") {
		t.Fatalf("no --image: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "bad.zst"), []byte("not zstd"), 0o644)
	if _, _, err := execute(nil, "flash", "--image", filepath.Join(dir, "bad.zst"), "--temp-dir", dir, good1); err == nil {
		t.Fatal("a corrupt compressed image was flashed")
	}
	stdout, _, err = execute(nil, "flash", "--image", img, good1)
	if err != nil || !strings.Contains(stdout, "TARGET") || !strings.Contains(stdout, "ok") {
		t.Fatalf("table output: %v\n%s", err, stdout)
	}
}
