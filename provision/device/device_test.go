package device

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSys builds /sys/class/block entries: a disk with its attributes and
// partitions (as subdirectories with a "partition" file, and as their own
// class/block entries with a dev number).
type disk struct {
	name, dev, model, serial, removable, mmcType string
	sectors                                      string
	parts                                        map[string]string // name → dev
}

func fakeSys(t *testing.T, disks ...disk) string {
	t.Helper()
	root := t.TempDir()
	w := func(p, v string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range disks {
		dir := filepath.Join(root, "class/block", d.name)
		w(filepath.Join(dir, "dev"), d.dev)
		w(filepath.Join(dir, "size"), d.sectors)
		w(filepath.Join(dir, "removable"), d.removable)
		if d.model != "" {
			w(filepath.Join(dir, "device/model"), d.model)
		}
		if d.serial != "" {
			w(filepath.Join(dir, "device/serial"), d.serial)
		}
		if d.mmcType != "" {
			w(filepath.Join(dir, "device/type"), d.mmcType)
		}
		for p, dev := range d.parts {
			w(filepath.Join(dir, p, "partition"), "1")
			w(filepath.Join(root, "class/block", p, "dev"), dev)
			w(filepath.Join(root, "class/block", p, "partition"), "1")
		}
	}
	return root
}

const mountTable = `22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
23 22 8:1 / /boot/efi rw shared:2 - vfat /dev/sda1 rw
40 22 8:17 / /media/tech/my\040card rw shared:3 - vfat /dev/sdb1 rw
41 22 0:5 / /dev rw shared:4 - devtmpfs udev rw
`

func TestDescribeAndCheck(t *testing.T) {
	sys := fakeSys(t,
		disk{name: "sda", dev: "8:0", model: "Samsung SSD 870", serial: "S5X", removable: "0", sectors: "1953525168", parts: map[string]string{"sda1": "8:1", "sda2": "8:2"}},
		disk{name: "sdb", dev: "8:16", model: "SD/MMC", serial: "000000001", removable: "1", sectors: "62333952", parts: map[string]string{"sdb1": "8:17"}},
		disk{name: "sdc", dev: "8:32", model: "SD/MMC", serial: "000000002", removable: "1", sectors: "62333952"},
		disk{name: "sdd", dev: "8:48", model: "USB SSD", removable: "1", sectors: "3907029168"},
		disk{name: "nvme0n1", dev: "259:0", model: "WD SN570", removable: "0", sectors: "1000215216"},
		disk{name: "mmcblk0", dev: "179:0", mmcType: "SD", removable: "0", sectors: "31116288"},
	)
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(mountTable), 0o644)
	roots := Roots{Sys: sys, MountInfo: mi}
	bench := Policy{MaxSize: 256e9}
	for _, tc := range []struct {
		dev    string
		policy Policy
		want   string // "" = accepted
	}{
		{"/dev/sda", Policy{Force: true}, "holds the running system"},
		{"/dev/sdb", bench, "is mounted on /media/tech/my card; unmount it first"},
		{"/dev/sdb", Policy{Force: true}, "is mounted"},
		{"/dev/sdc", bench, ""},
		{"/dev/sdd", bench, "larger than --max-size"},
		{"/dev/sdd", Policy{Force: true, MaxSize: 256e9}, ""},
		{"/dev/nvme0n1", bench, "not removable"},
		{"/dev/nvme0n1", Policy{Force: true}, ""},
		{"/dev/mmcblk0", bench, ""},
	} {
		t.Run(tc.dev, func(t *testing.T) {
			info, err := Describe(tc.dev, roots)
			if err != nil {
				t.Fatal(err)
			}
			err = Check(info, tc.policy, roots)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrRefused)):
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.want)
			}
		})
	}
	info, _ := Describe("/dev/sdc", roots)
	if info.Size != 62333952*512 || info.Model != "SD/MMC" || info.Serial != "000000002" || !info.Removable {
		t.Fatalf("describe: %+v", info)
	}
	if s := info.String(); !strings.Contains(s, "31.9 GB") || !strings.Contains(s, "removable") {
		t.Fatalf("shown as %q", s)
	}
	if _, err := Describe("/dev/sdb1", roots); err == nil || !strings.Contains(err.Error(), "is a partition") {
		t.Fatalf("partition: %v", err)
	}
	if _, err := Describe("/dev/sdz", roots); err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Fatalf("unknown device: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(bad, []byte("garbage\n"), 0o644)
	if err := Check(info, bench, Roots{Sys: sys, MountInfo: bad}); err == nil {
		t.Fatal("a corrupt mount table was accepted")
	}
}

func FuzzReadMounts(f *testing.F) {
	f.Add([]byte(mountTable))
	f.Add([]byte("1 2 3:4 / /x\\0 rw\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "mi")
		os.WriteFile(p, data, 0o644)
		readMounts(p) // must not panic
	})
}
