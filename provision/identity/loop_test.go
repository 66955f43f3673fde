package identity

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
	"github.com/lekiwi/heartbeat/profiles"
)

// buildImage builds a small lekiwi image, as provision image build does.
func buildImage(t *testing.T, dir string, p *profiles.Profile) string {
	t.Helper()
	return imagetest.Build(t, dir, imagetest.Options{Profile: p.Name}).Path
}

// TestBatchOntoLoopDevices: three cards seen as block devices (loop
// devices, which report size 0 to stat) each get their own row of a batch
// file through customize.ApplyTo; their file systems stay clean.
func TestBatchOntoLoopDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	for _, tool := range []string{"losetup", "e2fsck", "fsck.fat", "debugfs", "mtype", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	ctx := context.Background()
	dir := t.TempDir()
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	img := buildImage(t, dir, p)
	path, cert, _ := batch(t)
	src, err := OpenCSV(path, CSVOptions{CAPEM: []byte("FLEET CA\n"), Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cards := make([]string, 3)
	robots := make([]customize.Robot, 3)
	for i := range cards {
		cards[i] = filepath.Join(dir, "card"+string(rune('0'+i))+".img")
		if out, err := exec.Command("cp", "--sparse=always", img, cards[i]).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		if i == 2 { // a card larger than the image
			if err := os.Truncate(cards[i], fileSize(t, img)+16<<20); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command("losetup", "--find", "--show", cards[i]).Output()
		if err != nil {
			t.Skipf("losetup: %v (no loop devices here?)", err)
		}
		dev := strings.TrimSpace(string(out))
		detached := false
		detach := func() {
			if !detached {
				detached = true
				if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
					t.Errorf("losetup -d %s: %v: %s", dev, err, out)
				}
			}
		}
		t.Cleanup(detach)
		robots[i], err = src.Next(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := f.Stat(); st.Mode().IsRegular() {
			t.Fatalf("%s is a regular file", dev)
		}
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			t.Fatal(err)
		}
		err = customize.ApplyTo(f, size, dev, robots[i])
		f.Close()
		if ferr := src.Finish(robots[i].RobotID, dev, err); ferr != nil {
			t.Fatal(ferr)
		}
		if err != nil {
			t.Fatal(err)
		}
		detach()
	}
	want := []struct{ id, host, env, secret, secretWant string }{
		{"kiwi-1", "kiwi-1", "LEKIWI_AGENT_ENROLLMENT_TOKEN_FILE", "/agent/enrollment-token", "lke_one"},
		{"kiwi-2", "bench-2", "LEKIWI_AGENT_ENROLLMENT_TOKEN_FILE", "/agent/enrollment-token", "lke_two"},
		{"kiwi-3", "kiwi-3", "LEKIWI_AGENT_CA_FILE", "/agent/identity/cert.pem", strings.TrimSpace(string(cert))},
	}
	for i, card := range cards {
		w := want[i]
		if robots[i].RobotID != w.id {
			t.Fatalf("card %d got %s, want %s", i, robots[i].RobotID, w.id)
		}
		parts := extract(t, card, dir)
		if out, err := exec.Command("e2fsck", "-fn", parts[layout.Persistent]).CombinedOutput(); err != nil {
			t.Fatalf("card %d persistent: %v\n%s", i, err, out)
		}
		checks := [][2]string{ // debugfs request, wanted in its output
			{"cat /robot.env", "LEKIWI_AGENT_ROBOT_ID=" + w.id + "\n"},
			{"cat /robot.env", w.env},
			{"cat /agent/identity/ca.pem", "FLEET CA"},
			{"stat /agent/identity/ca.pem", "Mode:  0644"},
			{"cat " + w.secret, w.secretWant},
		}
		if i < 2 {
			checks = append(checks, [2]string{"stat /agent/enrollment-token", "Mode:  0600"})
		} else {
			checks = append(checks, [2]string{"stat /agent/identity/key.pem", "Mode:  0600"}, [2]string{"stat /agent/enrollment-token", "not found"})
		}
		for _, c := range checks {
			out, _ := exec.Command("debugfs", "-R", c[0], parts[layout.Persistent]).CombinedOutput()
			if !strings.Contains(string(out), c[1]) {
				t.Errorf("card %d: debugfs %s: want %q in %s", i, c[0], c[1], out)
			}
		}
		for _, n := range []int{layout.BootA, layout.BootB} {
			if out, err := exec.Command("fsck.fat", "-n", parts[n]).CombinedOutput(); err != nil {
				t.Fatalf("card %d boot partition %d: %v\n%s", i, n, err, out)
			}
			out, _ := exec.Command("mtype", "-i", parts[n], "::meta-data").Output()
			if !strings.Contains(string(out), w.id) || !strings.Contains(string(out), w.host) {
				t.Errorf("card %d boot partition %d meta-data = %q, want %s and %s", i, n, out, w.id, w.host)
			}
		}
	}
	recs := readJournal(t, path+JournalSuffix)
	if last := LastEvents(recs); len(recs) != 6 || last["kiwi-1"] != EventOK || last["kiwi-3"] != EventOK {
		t.Fatalf("journal %+v", recs)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// extract copies the card's partitions into files for the fsck tools.
func extract(t *testing.T, card, dir string) map[int]string {
	t.Helper()
	f, err := os.Open(card)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	plan, err := layout.ReadGPT(f, fileSize(t, card))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, n := range []int{layout.BootA, layout.BootB, layout.Persistent} {
		part := plan.Part(n)
		p := filepath.Join(dir, filepath.Base(card)+"."+part.Name)
		o, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(o, io.NewSectionReader(f, part.Start, part.Size))
		o.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[n] = p
	}
	return out
}
