package customize

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

func TestApplyWritesIdentityAndSeedInPlace(t *testing.T) {
	for _, b := range []string{"e2fsck", "fsck.fat", "mtype", "debugfs"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
	dir := t.TempDir()
	img := buildImage(t, dir)
	start := time.Now()
	err := Apply(img, Robot{RobotID: "robot-0042", Hostname: "lekiwi-0042", CertPEM: []byte("CERT"), KeyPEM: []byte("KEY"), CAPEM: []byte("CA"), EnrollToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("customize took %v", time.Since(start))
	f, _ := os.Open(img)
	st, _ := f.Stat()
	plan, _ := layout.ReadGPT(f, st.Size())
	extract := func(n int) string {
		part := plan.Part(n)
		out := filepath.Join(dir, part.Name)
		o, _ := os.Create(out)
		io.Copy(o, io.NewSectionReader(f, part.Start, part.Size))
		o.Close()
		return out
	}
	pers := extract(layout.Persistent)
	if out, err := exec.Command("e2fsck", "-fn", pers).CombinedOutput(); err != nil {
		t.Fatalf("persistent: %v\n%s", err, out)
	}
	for req, want := range map[string]string{
		"cat /robot.env":               "LEKIWI_AGENT_ROBOT_ID=robot-0042",
		"cat /agent/identity/cert.pem": "CERT",
		"stat /agent/identity/key.pem": "Mode:  0600",
		"cat /agent/enrollment-token":  "tok",
	} {
		out, _ := exec.Command("debugfs", "-R", req, pers).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Errorf("debugfs %s: want %q in %s", req, want, out)
		}
	}
	for _, n := range []int{layout.BootA, layout.BootB} {
		bp := extract(n)
		if out, err := exec.Command("fsck.fat", "-n", bp).CombinedOutput(); err != nil {
			t.Fatalf("boot %d: %v\n%s", n, err, out)
		}
		out, _ := exec.Command("mtype", "-i", bp, "::meta-data").Output()
		if !strings.Contains(string(out), "robot-0042") || !strings.Contains(string(out), "lekiwi-0042") {
			t.Errorf("boot %d meta-data = %q", n, out)
		}
	}
	f.Close()
	if err := Apply(img, Robot{RobotID: "r"}); err == nil {
		t.Error("no credentials accepted")
	}
}

// buildImage builds a small lekiwi image in dir, as provision image build
// would.
func buildImage(t *testing.T, dir string) string {
	t.Helper()
	return imagetest.Build(t, dir, imagetest.Options{}).Path
}

// memTarget is a target that is not a file: a card seen through some
// other io.ReaderAt/io.WriterAt (a flash queue, a network disk).
type memTarget struct{ b []byte }

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d beyond the %d byte target", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

// TestApplyToMatchesApply: customizing through the ReaderAt/WriterAt
// interface gives byte for byte the image Apply gives on a file, and an
// image placed on a larger target (a card bigger than the image) works.
func TestApplyToMatchesApply(t *testing.T) {
	dir := t.TempDir()
	img := buildImage(t, dir)
	orig, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	r := Robot{RobotID: "lekiwi-7", Hostname: "lekiwi-7", EnrollToken: "lke_x", CAPEM: []byte("CA")}
	if err := Apply(img, r); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(img)
	if bytes.Equal(want, orig) {
		t.Fatal("Apply changed nothing")
	}
	card := &memTarget{b: make([]byte, len(orig)+8<<20)}
	copy(card.b, orig)
	if err := ApplyTo(card, int64(len(card.b)), "mem", r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(card.b[:len(want)], want) {
		t.Fatal("ApplyTo on a larger in-memory card differs from Apply on the image file")
	}
	if err := ApplyTo(&memTarget{b: make([]byte, 1<<20)}, 1<<20, "blank", r); err == nil || !strings.Contains(err.Error(), "blank") {
		t.Fatalf("blank target: %v, want an error naming it", err)
	}
}
