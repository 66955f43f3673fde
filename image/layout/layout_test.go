package layout

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewAlignsAndNames(t *testing.T) {
	p, err := New(Sizes{System: 512 << 20}, []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"bootconfig", "boot_a", "boot_b", "system_a", "system_b", "persistent"}
	for i, part := range p.Partitions {
		if part.Name != want[i] || part.Start%Align != 0 || part.Size%Align != 0 {
			t.Errorf("partition %d: %+v", i+1, part)
		}
		if i > 0 && part.Start != p.Partitions[i-1].End() {
			t.Errorf("partition %d does not follow %d", i+1, i)
		}
	}
	q, _ := New(Sizes{System: 512 << 20}, []byte("seed"))
	r, _ := New(Sizes{System: 512 << 20}, []byte("other"))
	if q.Part(SystemA).GUID != p.Part(SystemA).GUID || r.Part(SystemA).GUID == p.Part(SystemA).GUID {
		t.Error("GUIDs are not a function of the seed")
	}
	for _, bad := range []Sizes{{System: 512<<20 + 1}, {System: 0}, {System: 512 << 20, Image: 64 << 20}, {System: 512 << 20, Boot: 1 << 20}} {
		if _, err := New(bad, nil); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
	big, err := New(Sizes{System: 512 << 20, Image: 4 << 30}, nil)
	if err != nil || big.Size != 4<<30 || big.Part(Persistent).End() != big.Size-Align {
		t.Errorf("image size not filled by persistent: %v %+v", err, big)
	}
}

func TestGPTReadsBackAndSfdiskAgrees(t *testing.T) {
	p, err := New(Sizes{System: 256 << 20}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(p.Size); err != nil {
		t.Fatal(err)
	}
	if err := WriteGPT(f, p); err != nil {
		t.Fatal(err)
	}
	got, err := ReadGPT(f, p.Size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got.DiskGUID != p.DiskGUID || len(got.Partitions) != 6 || CheckAB(got) != nil {
		t.Fatalf("read back %+v", got)
	}
	for i := range p.Partitions {
		if got.Partitions[i] != p.Partitions[i] {
			t.Errorf("partition %d: wrote %+v read %+v", i+1, p.Partitions[i], got.Partitions[i])
		}
	}
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("sfdisk not installed (Debian fdisk)")
	}
	out, err := exec.Command("sfdisk", "--json", img).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	var tbl struct {
		PartitionTable struct {
			Label      string `json:"label"`
			ID         string `json:"id"`
			Partitions []struct {
				Start, Size int64
				Type, UUID  string
				Name        string
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &tbl); err != nil {
		t.Fatal(err)
	}
	pt := tbl.PartitionTable
	if pt.Label != "gpt" || !strings.EqualFold(pt.ID, p.DiskGUID.String()) || len(pt.Partitions) != 6 {
		t.Fatalf("sfdisk sees %+v", pt)
	}
	for i, sp := range pt.Partitions {
		want := p.Partitions[i]
		if sp.Name != want.Name || !strings.EqualFold(sp.Type, want.Type.String()) || !strings.EqualFold(sp.UUID, want.GUID.String()) ||
			sp.Start*512 != want.Start || sp.Size*512 != want.Size || (sp.Start*512)%Align != 0 || (sp.Size*512)%Align != 0 {
			t.Errorf("sfdisk partition %d = %+v, want %+v", i+1, sp, want)
		}
	}
	if out, err := exec.Command("sfdisk", "--verify", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No errors detected") {
		t.Errorf("sfdisk --verify: %v\n%s", err, out)
	}
}

func TestAutobootPaddedAndParsed(t *testing.T) {
	a, err := Autoboot("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != AutobootSize || !bytes.HasPrefix(a, []byte("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n")) {
		t.Fatalf("autoboot a = %q", a)
	}
	n, tr, err := ParseAutoboot(a)
	if err != nil || n != 2 || tr != 3 {
		t.Fatalf("ParseAutoboot(a) = %d %d %v", n, tr, err)
	}
	b, _ := Autoboot("b")
	if n, tr, _ := ParseAutoboot(b); n != 3 || tr != 2 || len(b) != len(a) {
		t.Fatalf("autoboot b = %d %d", n, tr)
	}
	if _, err := Autoboot("c"); err == nil {
		t.Error("slot c accepted")
	}
	if _, err := Pad(make([]byte, 600), 512); err == nil {
		t.Error("Pad accepted content longer than the size")
	}
}

func TestCmdline(t *testing.T) {
	for _, tc := range []struct{ base, want string }{
		{"console=serial0,115200 console=tty1 root=PARTUUID=abcd-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash\n",
			"console=serial0,115200 console=tty1 fsck.repair=yes rootwait quiet splash root=PARTUUID=g rootfstype=ext4 ds=nocloud\n"},
		{"", "root=PARTUUID=g rootfstype=ext4 rootwait ds=nocloud\n"},
		{"console=tty1 init=/usr/lib/raspi-config/init_resize.sh", "console=tty1 root=PARTUUID=g rootfstype=ext4 rootwait ds=nocloud\n"},
	} {
		if got := Cmdline(tc.base, "g", "ds=nocloud"); got != tc.want {
			t.Errorf("Cmdline(%q) = %q, want %q", tc.base, got, tc.want)
		}
	}
}

func FuzzReadGPT(f *testing.F) {
	p, _ := New(Sizes{System: 64 << 20}, nil)
	var buf writerAt
	buf.b = make([]byte, p.Size)
	if err := WriteGPT(&buf, p); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.b[:34*512])
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		plan, err := ReadGPT(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			_ = CheckAB(plan)
		}
		_, _, _ = ParseAutoboot(b)
	})
}

type writerAt struct{ b []byte }

func (w *writerAt) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }
