package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"math/rand/v2"
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
	putMBR(raw, [2]uint32{2048, 4096}, [2]uint32{6144, 4096})
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
	stdout, stderr, err = execute(nil, "flash", "--image", img, good1)
	if err != nil || !strings.Contains(stdout, "TARGET") || !strings.Contains(stdout, "ok") {
		t.Fatalf("table output: %v\n%s", err, stdout)
	}
	if !strings.Contains(stderr, "source: 6.0 MiB image, MBR with 2 partitions") {
		t.Errorf("flash did not describe its source:\n%s", stderr)
	}
}

// putMBR writes an MBR partition table into the first sector of img, one
// Linux partition per {start, count} pair, in sectors.
func putMBR(img []byte, parts ...[2]uint32) {
	clear(img[446:510])
	for i, p := range parts {
		e := img[446+16*i:]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:], p[0])
		binary.LittleEndian.PutUint32(e[12:], p[1])
	}
	img[510], img[511] = 0x55, 0xAA
}

// A source with no partition table is not a disk image (a wrong file, a
// lone filesystem): flash says what it found and writes nothing, unless
// --force, which writes it as it is.
func TestFlashRefusesASourceWithoutPartitionTable(t *testing.T) {
	dir := t.TempDir()
	junk := make([]byte, 100<<10)
	rand.NewChaCha8([32]byte{'j'}).Read(junk)
	src := filepath.Join(dir, "firmware.bin")
	os.WriteFile(src, junk, 0o644)
	target := filepath.Join(dir, "card.img")

	stdout, stderr, err := execute(nil, "flash", "--image", src, target)
	if err == nil {
		t.Fatalf("random bytes were flashed:\n%s%s", stdout, stderr)
	}
	for _, want := range []string{src + " is not a disk image", "no partition table", "sector 0 has no MBR signature", "provision image build", "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !strings.Contains(stderr, "source: 100.0 KiB, no partition table") {
		t.Errorf("flash did not describe its source:\n%s", stderr)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("the target was touched: %v", err)
	}

	if _, stderr, err := execute(nil, "flash", "--force", "--image", src, target); err != nil {
		t.Fatalf("--force: %v\n%s", err, stderr)
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, junk) {
		t.Fatalf("--force did not write the source as it is (%v)", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{{"512GB", 512e9, true}, {"1TB", 1e12, true}, {"64GiB", 64 << 30, true}, {"0", 0, true}, {"1.5T", 1.5e12, true},
		{"12 gb", 12e9, true}, {"lots", 0, false}, {"-1GB", 0, false}, {"5GBX", 0, false}} {
		got, err := parseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v", c.in, got, err)
		}
	}
}

// A block device through the CLI: a loop device is not removable, so it
// is refused without --force; with --force, nobody can confirm on a
// non-terminal stdin without --yes; a typed "no" declines; --yes flashes it
// with O_DIRECT and a row of a batch file, recorded in the JSON.
func TestFlashCLIBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	dir := t.TempDir()
	raw := make([]byte, 8<<20)
	copy(raw, "header")
	putMBR(raw, [2]uint32{2048, 8192})
	for i := 3 << 20; i < 4<<20; i++ {
		raw[i] = byte(i * 13)
	}
	img := filepath.Join(dir, "robot.img")
	os.WriteFile(img, raw, 0o644)
	back := filepath.Join(dir, "card")
	os.WriteFile(back, bytes.Repeat([]byte("OLD CARD"), 2<<20), 0o600)
	out, err := exec.Command("losetup", "--find", "--show", back).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })

	if _, _, err := execute(nil, "flash", "--image", img, dev); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("non-removable loop device: %v", err)
	}
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	run := func(stdin io.Reader, args ...string) (string, string, error) {
		var o, e bytes.Buffer
		root := newRoot(&o, &e, func(string) (string, bool) { return "", false })
		root.SetIn(stdin)
		root.SetArgs(args)
		err := root.Execute()
		return o.String(), e.String(), err
	}
	if _, _, err := run(null, "flash", "--force", "--image", img, dev); err == nil || !strings.Contains(err.Error(), "pass --yes") {
		t.Fatalf("no terminal, no --yes: %v", err)
	}
	_, stderr, err := run(strings.NewReader("no\n"), "flash", "--force", "--image", img, dev)
	if err == nil || !strings.Contains(err.Error(), "not confirmed") || !strings.Contains(stderr, dev) || !strings.Contains(stderr, "OVERWRITTEN") {
		t.Fatalf("declined: %v\n%s", err, stderr)
	}
	if head, _ := os.ReadFile(back); !bytes.HasPrefix(head, []byte("OLD CARD")) {
		t.Fatal("the card was written although the technician said no")
	}
	stdout, stderr, err := run(null, "flash", "--force", "--yes", "--output", "json", "--image", img, dev)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var rows []struct {
		Target string `json:"target"`
		OK     bool   `json:"ok"`
		Direct bool   `json:"direct_io"`
		Size   int64  `json:"device_size"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil || len(rows) != 1 || !rows[0].OK || !rows[0].Direct || rows[0].Size != 16<<20 {
		t.Fatalf("rows %+v (%v)\n%s", rows, err, stdout)
	}
	got, _ := os.ReadFile(back)
	if !bytes.Equal(got[:len(raw)], raw) {
		t.Fatal("the card does not hold the image")
	}
}
