package inspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

var epoch = time.Unix(1767225600, 0).UTC()

func buildImage(t *testing.T) (img string, agentSum string) {
	t.Helper()
	agent := make([]byte, 8192)
	copy(agent, "\x7fELF\x02\x01\x01")
	agent[18] = 183 // EM_AARCH64
	sum := sha256.Sum256(agent)
	built := imagetest.Build(t, t.TempDir(), imagetest.Options{
		Boot: map[string][]byte{
			"config.txt":  []byte("arm_64bit=1\n"),
			"cmdline.txt": []byte("console=tty1 root=PARTUUID=1234-02 rootwait\n"),
		},
		Root:        map[string][]byte{"etc/fstab": []byte("proc /proc proc defaults 0 0\n")},
		Agent:       agent,
		ControlURLs: []string{"wss://control.lan:8443"},
		Version:     "2.3.4",
		Epoch:       epoch,
		Description: "test",
	})
	return built.Path, hex.EncodeToString(sum[:])
}

func TestInspectBuiltImage(t *testing.T) {
	img, agentSum := buildImage(t)
	r, err := Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Layout) != 6 || r.LayoutProblem != "" {
		t.Fatalf("layout %+v, problem %q", r.Layout, r.LayoutProblem)
	}
	wantFS := []string{"fat16", "fat32", "fat32", "ext4", "ext4", "ext4"}
	for i, p := range r.Layout {
		if p.Filesystem != wantFS[i] || p.Start%layout.Align != 0 || p.PARTUUID == "" {
			t.Errorf("partition %d: %+v, want fs %s, 8 MiB aligned", p.Number, p, wantFS[i])
		}
	}
	if r.Autoboot == nil || r.Autoboot.ActiveSlot != "a" || r.Autoboot.TrybootPartition != layout.BootB {
		t.Fatalf("autoboot %+v", r.Autoboot)
	}
	if len(r.Problems) != 0 {
		t.Fatalf("problems in a fresh image: %v", r.Problems)
	}
	for _, s := range r.Slots {
		if s.Info == nil || s.Info.Version != "2.3.4" || s.Info.Profile != "lekiwi" || !s.RootOK {
			t.Fatalf("slot %s: info %+v root ok %v cmdline %q", s.Name, s.Info, s.RootOK, s.Cmdline)
		}
		found := false
		for _, f := range s.Files {
			if strings.HasSuffix(f.Path, "/"+assemble.AgentBinary) {
				found = true
				if f.SHA256 != agentSum {
					t.Errorf("slot %s agent checksum %s, want %s", s.Name, f.SHA256, agentSum)
				}
			}
		}
		if !found {
			t.Errorf("slot %s lists no agent binary: %+v", s.Name, s.Files)
		}
	}
	var text bytes.Buffer
	r.WriteText(&text)
	if !strings.Contains(text.String(), "autoboot: slot a") || !strings.Contains(text.String(), "version 2.3.4") {
		t.Fatalf("text report:\n%s", text.String())
	}
	b, _ := json.Marshal(r)
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Slots[1].Cmdline != r.Slots[1].Cmdline {
		t.Fatalf("json round trip: %v", err)
	}
}

// A slot whose cmdline.txt points at the other slot's root is reported.
func TestInspectReportsAWrongRoot(t *testing.T) {
	img, _ := buildImage(t)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	plan, err := layout.ReadGPT(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	bootB := plan.Part(layout.BootB)
	fsys, err := fat.Open(io.NewSectionReader(f, bootB.Start, bootB.Size), bootB.Size)
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := fsys.ReadFile("cmdline.txt")
	if err != nil {
		t.Fatal(err)
	}
	wrong := bytes.ReplaceAll(cmd, []byte(plan.Part(layout.SystemB).GUID.String()), []byte(plan.Part(layout.SystemA).GUID.String()))
	if err := fsys.Overwrite(io.NewOffsetWriter(f, bootB.Start), "cmdline.txt", wrong); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r, err := Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "slot b: cmdline.txt does not point root=") {
		t.Fatalf("problems: %v", r.Problems)
	}
}

func TestInspectRefusesNonGPT(t *testing.T) {
	p := filepath.Join(t.TempDir(), "zeros.img")
	os.WriteFile(p, make([]byte, 1<<20), 0o644)
	if _, err := Inspect(p); err == nil {
		t.Fatal("a file of zeros inspected as an image")
	}
	if _, err := Inspect(filepath.Join(t.TempDir(), "none.img")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
}
