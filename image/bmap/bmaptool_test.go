package bmap

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The tests in this file use Debian's bmap-tools as the reference implementation.

func needBmaptool(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("bmaptool")
	if err != nil {
		t.Skip("bmaptool not installed (Debian package bmap-tools); interop with it is untested")
	}
	return path
}

// interopImage is a few MiB with several data regions, holes between them, an
// unaligned write and a partial last block.
func interopImage(t testing.TB, dir string) string {
	return makeSparse(t, dir, "robot.img", 6*MiB+1000, []extent{
		{off: 0, len: 3 * 4096},
		{off: 512 << 10, len: 700 << 10},
		{off: 2*MiB + 123, len: 5000},
		{off: 4 * MiB, len: 4096, zeros: true},
		{off: 5 * MiB, len: 64 << 10},
		{off: 6 * MiB, len: 1000},
	})
}

func runBmaptool(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(needBmaptool(t), args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeMapFile(t testing.TB, m *Map, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := m.WriteXML(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func rangesOnly(m *Map) [][2]int64 {
	var out [][2]int64
	for _, r := range m.Ranges {
		out = append(out, [2]int64{r.First, r.Last})
	}
	return out
}

// TestBmaptoolCopyAcceptsOurMap: `bmaptool copy` verifies our map and every range
// checksum, and the copy it writes has the source's bytes and the source's mapped
// ranges (holes stay holes).
func TestBmaptoolCopyAcceptsOurMap(t *testing.T) {
	needBmaptool(t)
	dir := t.TempDir()
	img := interopImage(t, dir)
	src := scanPath(t, img, ScanOptions{})
	if len(src.Ranges) < 4 {
		t.Fatalf("test image has %d ranges, want several: %+v", len(src.Ranges), src.Ranges)
	}
	bmapPath := SidecarPath(img)
	writeMapFile(t, src, bmapPath)

	target := filepath.Join(dir, "target.img")
	if out, err := runBmaptool(t, "copy", "--bmap", bmapPath, img, target); err != nil {
		t.Fatalf("bmaptool copy rejected our map: %v\n%s", err, out)
	}
	want, _ := os.ReadFile(img)
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got, want) {
		t.Fatalf("bmaptool's copy differs from the source (%d vs %d bytes)", len(got), len(want))
	}
	dst := scanPath(t, target, ScanOptions{})
	if !reflect.DeepEqual(dst.Ranges, src.Ranges) {
		t.Fatalf("target's mapped ranges differ from the source's:\n got %v\nwant %v", rangesOnly(dst), rangesOnly(src))
	}
}

// TestCorruptedMapRefusedByBoth: one changed hex digit of a range checksum makes
// `bmaptool copy` fail and Parse fail (the file checksum no longer matches).
func TestCorruptedMapRefusedByBoth(t *testing.T) {
	needBmaptool(t)
	dir := t.TempDir()
	img := interopImage(t, dir)
	m := scanPath(t, img, ScanOptions{})
	good := writeMapFile(t, m, filepath.Join(dir, "good.bmap"))

	i := bytes.Index(good, []byte(`chksum="`)) + len(`chksum="`)
	bad := bytes.Clone(good)
	bad[i] = "1f"[boolInt(bad[i] == '1')] // any other hex digit
	badPath := filepath.Join(dir, "bad.bmap")
	if err := os.WriteFile(badPath, bad, 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := runBmaptool(t, "copy", "--bmap", badPath, img, filepath.Join(dir, "target.img"))
	if err == nil {
		t.Fatalf("bmaptool copy accepted a corrupted map:\n%s", out)
	}
	if !strings.Contains(out, "checksum mismatch") {
		t.Errorf("bmaptool failed for another reason than the checksum:\n%s", out)
	}
	if _, err := Parse(bytes.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("Parse of a corrupted map: %v, want a checksum mismatch", err)
	}
}

// TestParseBmaptoolCreate: a map written by `bmaptool create` parses to the ranges
// and checksums Scan finds, and WriteXML of Scan's map is byte-identical to it.
func TestParseBmaptoolCreate(t *testing.T) {
	needBmaptool(t)
	dir := t.TempDir()
	img := interopImage(t, dir)
	theirsPath := filepath.Join(dir, "theirs.bmap")
	if out, err := runBmaptool(t, "create", "-o", theirsPath, img); err != nil {
		t.Fatalf("bmaptool create: %v\n%s", err, out)
	}
	theirs, err := os.ReadFile(theirsPath)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(bytes.NewReader(theirs))
	if err != nil {
		t.Fatalf("Parse(bmaptool create output): %v\n%s", err, theirs)
	}
	scanned := scanPath(t, img, ScanOptions{})
	if !reflect.DeepEqual(parsed, scanned) {
		t.Fatalf("bmaptool's map and Scan differ:\nbmaptool %+v\n    Scan %+v", parsed, scanned)
	}
	ours := writeMapFile(t, scanned, filepath.Join(dir, "ours.bmap"))
	if !bytes.Equal(ours, theirs) {
		t.Errorf("WriteXML output is not byte-identical to bmaptool create's:\n--- ours\n%s\n--- bmaptool\n%s", ours, theirs)
	}
}
