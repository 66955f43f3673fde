package source

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/layout"
)

// putMBR writes an MBR partition table into the first sector of img, one
// partition per {start, count} pair, in sectors.
func putMBR(img []byte, parts ...[2]uint32) {
	clear(img[446:510])
	for i, p := range parts {
		e := img[446+16*i:]
		e[0], e[4] = 0, 0x83
		binary.LittleEndian.PutUint32(e[8:], p[0])
		binary.LittleEndian.PutUint32(e[12:], p[1])
	}
	img[510], img[511] = 0x55, 0xAA
}

func TestTableOf(t *testing.T) {
	random := make([]byte, 100<<10)
	rand.NewChaCha8([32]byte{1}).Read(random)

	mbr := make([]byte, 6<<20)
	putMBR(mbr, [2]uint32{2048, 2048}, [2]uint32{4096, 4096}, [2]uint32{8192, 4096})

	fatLike := make([]byte, 1<<20)
	putMBR(fatLike, [2]uint32{2048, 100})
	fatLike[446] = 0xEB // boot code, not a status byte

	protective := make([]byte, 1<<20)
	putMBR(protective, [2]uint32{1, 2047})
	protective[446+4] = 0xEE

	empty := make([]byte, 1<<20)
	empty[510], empty[511] = 0x55, 0xAA

	for _, c := range []struct {
		name    string
		head    []byte
		size    int64
		want    string
		problem string
	}{
		{"random bytes", random, int64(len(random)), "100.0 KiB, no partition table (sector 0 has no MBR signature and sector 1 no GPT header)", ""},
		{"MBR", mbr, int64(len(mbr)), "6.0 MiB image, MBR with 3 partitions", ""},
		{"filesystem boot sector", fatLike, int64(len(fatLike)), "", "entry 1 is not a partition"},
		{"protective MBR without GPT", protective, int64(len(protective)), "", "protective MBR"},
		{"empty MBR", empty, int64(len(empty)), "", "lists no partitions"},
		{"tiny", []byte("x"), 1, "1 B, no partition table (only 1 bytes, less than an MBR and a GPT header)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			tab := tableOf(c.head, c.size)
			if c.want != "" && tab.String() != c.want {
				t.Errorf("got %q, want %q", tab, c.want)
			}
			if c.problem != "" && (tab.Scheme != "" || !strings.Contains(tab.Problem, c.problem)) {
				t.Errorf("got %q, want no table because %q", tab, c.problem)
			}
		})
	}
}

// The GPT that `provision image build` writes is recognised with its six
// partitions.
func TestTableOfLekiwiGPT(t *testing.T) {
	plan, err := layout.New(layout.Sizes{Boot: 64 << 20, System: 64 << 20}, []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "gpt.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(plan.Size); err != nil {
		t.Fatal(err)
	}
	if err := layout.WriteGPT(f, plan); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, headSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	tab := tableOf(head, plan.Size)
	if tab.Scheme != "GPT" || tab.Partitions != 6 || !strings.HasSuffix(tab.String(), "image, GPT with 6 partitions") {
		t.Fatalf("got %q (%+v)", tab, tab)
	}
	binary.LittleEndian.PutUint32(head[512+88:], 1) // entries CRC
	if tab := tableOf(head, plan.Size); tab.Scheme != "" || !strings.Contains(tab.Problem, "GPT header, but") {
		t.Fatalf("a damaged GPT: got %q", tab)
	}
}

// ReadTable reads a compressed stream's first bytes, which the stream
// cannot give again: the source it returns still yields the whole image.
func TestReadTableKeepsAStreamsStart(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 9*mib+512, 3)
	putMBR(img, [2]uint32{2048, 4096})
	if err := os.WriteFile(raw, img, 0o644); err != nil {
		t.Fatal(err)
	}
	path := compressFile(t, raw, "zstd", "-q", "-1")
	src, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	checked, tab, err := ReadTable(src)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Scheme != "MBR" || tab.Partitions != 1 {
		t.Fatalf("table %q", tab)
	}
	if got := readAll(t, checked, 1<<20+123); !bytes.Equal(got, img) {
		t.Fatal("the source after ReadTable differs from the image")
	}
}
