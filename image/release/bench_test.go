package release

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/sparse"
)

// TestDeltaBenchmark is the delta-update comparison (docs/BENCHMARKS.md): an
// ext4 root file system of 1 GiB holding ~600 MB of files, of which ~50 MB
// change between two versions (20 files rewritten, 5 added); bytes a robot
// on version 1 downloads to get version 2 with our release, casync,
// zstd --patch-from and xdelta3, and the time to apply our release to a
// slot. It takes minutes and GiBs of disk, so it runs only with
// LEKIWI_RELEASE_BENCH=1:
//
//	LEKIWI_RELEASE_BENCH=1 go test -run TestDeltaBenchmark -v -timeout 30m ./image/release/
//
// Tools: mke2fs (e2fsprogs), zstd, xdelta3, casync (Debian packages);
// a missing comparison tool is reported and skipped.
func TestDeltaBenchmark(t *testing.T) {
	if os.Getenv("LEKIWI_RELEASE_BENCH") != "1" {
		t.Skip("set LEKIWI_RELEASE_BENCH=1 to run the delta benchmark (minutes, ~6 GiB of disk)")
	}
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs (e2fsprogs) is not installed")
	}
	work := t.TempDir()
	const (
		files    = 300
		fileSize = 2 << 20
		fsSize   = 1 << 30
	)
	// Version 1 and 2 trees: file i has content seed i; in version 2,
	// files 0, 15, 30, … (20 of them) get new content and 5 are added.
	changed := int64(0)
	for v, dir := range []string{"v1", "v2"} {
		root := filepath.Join(work, dir)
		for i := range files {
			seed := uint64(i)
			if v == 1 && i%15 == 0 {
				seed += 10000
				changed += fileSize
			}
			writeTreeFile(t, filepath.Join(root, fmt.Sprintf("usr/lib/pkg%03d/lib%03d.so", i/10, i)), seed, fileSize)
		}
		if v == 1 {
			for i := range 5 {
				writeTreeFile(t, filepath.Join(root, fmt.Sprintf("usr/share/new/data%d", i)), uint64(20000+i), fileSize)
				changed += fileSize
			}
		}
	}
	imgs := map[string]string{}
	for _, v := range []string{"v1", "v2"} {
		p := filepath.Join(work, v+".ext4")
		cmd := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", "6d6f6f6e-0000-4000-8000-000000000001",
			"-E", "hash_seed=6d6f6f6e-0000-4000-8000-000000000002,root_owner=0:0", "-d", filepath.Join(work, v), p, fmt.Sprint(fsSize>>10)+"k")
		cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mke2fs: %v\n%s", err, out)
		}
		imgs[v] = p
	}
	t.Logf("changed: %d bytes in files (20 rewritten, 5 added) of a %d MiB ext4 with %d MB of files", changed, fsSize>>20, files*fileSize/1000000)

	// Ours: a GPT image whose system_a is version 2's file system.
	plan, err := layout.New(layout.Sizes{Boot: 64 << 20, System: fsSize, Persistent: 16 << 20}, []byte("bench"))
	if err != nil {
		t.Fatal(err)
	}
	gptImg := filepath.Join(work, "v2.img")
	g, err := os.Create(gptImg)
	if err != nil {
		t.Fatal(err)
	}
	g.Truncate(plan.Size)
	if err := layout.WriteGPT(g, plan); err != nil {
		t.Fatal(err)
	}
	copySparse(t, g, plan.Part(layout.SystemA).Start, imgs["v2"])
	g.Close()
	relDir := filepath.Join(work, "rel")
	start := time.Now()
	if _, err := Create(context.Background(), gptImg, relDir, Meta{Version: "2", SecurityVersion: 2}, CreateOptions{Partitions: []string{"system_a"}}); err != nil {
		t.Fatal(err)
	}
	createTime := time.Since(start)
	raw, cfgBytes, err := ReadDir(relDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := Inspect(raw, cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	v1f, err := os.Open(imgs["v1"])
	if err != nil {
		t.Fatal(err)
	}
	defer v1f.Close()
	start = time.Now()
	local := NewSlotChunks()
	if err := local.Add(context.Background(), v1f, fsSize); err != nil {
		t.Fatal(err)
	}
	indexTime := time.Since(start)
	f := &Fetcher{Release: &Release{Config: cfg}, Source: DirSource{relDir}, Local: local, CacheDir: filepath.Join(work, "cache")}
	p, err := f.Plan("system_a")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := f.Fetch(context.Background(), "system_a"); err != nil {
		t.Fatal(err)
	}
	slot, err := os.Create(filepath.Join(work, "slot_b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WritePartition(context.Background(), "system_a", slot); err != nil {
		t.Fatal(err)
	}
	slot.Sync()
	slot.Close()
	applyTime := time.Since(start)
	ours := p.DownloadBytes + int64(len(cfgBytes)) + int64(len(raw))

	type result struct {
		name  string
		bytes int64
		took  time.Duration
		note  string
	}
	results := []result{{"lekiwi release (index+frames)", ours, applyTime,
		fmt.Sprintf("%d requests, index %d bytes; create %s, chunk active slot %s", p.Requests, len(cfgBytes), createTime.Round(time.Millisecond), indexTime.Round(time.Millisecond))}}
	run := func(name string, args ...string) (time.Duration, error) {
		if _, err := exec.LookPath(name); err != nil {
			return 0, err
		}
		start := time.Now()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return time.Since(start), nil
	}
	size := func(path string) int64 {
		st, err := os.Stat(path)
		if err != nil {
			return -1
		}
		return st.Size()
	}
	if d, err := run("zstd", "-q", "-f", "-T0", "--long=31", "--patch-from="+imgs["v1"], imgs["v2"], "-o", filepath.Join(work, "p.zst")); err == nil {
		results = append(results, result{"zstd --patch-from (level 3)", size(filepath.Join(work, "p.zst")), d, "whole-image diff, needs v1 bytes at build time"})
	} else {
		t.Logf("zstd: %v", err)
	}
	if d, err := run("xdelta3", "-e", "-f", "-B", fmt.Sprint(fsSize), "-s", imgs["v1"], imgs["v2"], filepath.Join(work, "p.xd3")); err == nil {
		results = append(results, result{"xdelta3 -B 1GiB", size(filepath.Join(work, "p.xd3")), d, "whole-image diff, needs v1 bytes at build time"})
	} else {
		t.Logf("xdelta3: %v", err)
	}
	store := filepath.Join(work, "castr")
	if _, err := run("casync", "make", "--store="+store, filepath.Join(work, "v1.caibx"), imgs["v1"]); err == nil {
		before := storeChunks(t, store)
		d, err := run("casync", "make", "--store="+store, filepath.Join(work, "v2.caibx"), imgs["v2"])
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for name, sz := range storeChunks(t, store) {
			if _, ok := before[name]; !ok {
				n += sz
			}
		}
		n += size(filepath.Join(work, "v2.caibx"))
		results = append(results, result{"casync (new chunks + caibx)", n, d, "time is `casync make` of v2"})
	} else {
		t.Logf("casync: %v", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "\n%-32s %14s %8s %10s  %s\n", "method", "bytes", "×changed", "time", "note")
	for _, r := range results {
		fmt.Fprintf(&b, "%-32s %14d %8.2f %10s  %s\n", r.name, r.bytes, float64(r.bytes)/float64(changed), r.took.Round(time.Millisecond), r.note)
	}
	fmt.Fprintf(&b, "(lekiwi time = fetch from a local directory + write and verify the 1 GiB slot)\n")
	t.Log(b.String())
}

func writeTreeFile(t *testing.T, path string, seed uint64, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// Half-compressible content, like binaries: runs of words from a small
	// vocabulary mixed with random bytes.
	r := mrand.New(mrand.NewPCG(seed, 1))
	b := make([]byte, 0, n)
	words := []string{"lekiwi ", "robot ", "servo ", "\x00\x00\x00\x00", "heartbeat ", "libc.so.6 ", "\x7fELF", "GLIBC_2.34 "}
	for len(b) < n {
		if r.IntN(2) == 0 {
			for range 64 {
				b = append(b, words[r.IntN(len(words))]...)
			}
		} else {
			for range 256 {
				b = append(b, byte(r.Uint32()))
			}
		}
	}
	if err := os.WriteFile(path, b[:n], 0o644); err != nil {
		t.Fatal(err)
	}
}

// copySparse copies src into w at off, skipping zero blocks.
func copySparse(t *testing.T, w io.WriterAt, off int64, src string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for pos := int64(0); ; {
		n, err := io.ReadFull(f, buf)
		if n > 0 && !sparse.IsZero(buf[:n]) {
			if _, werr := w.WriteAt(buf[:n], off+pos); werr != nil {
				t.Fatal(werr)
			}
		}
		pos += int64(n)
		if err != nil {
			break
		}
	}
}

func storeChunks(t *testing.T, store string) map[string]int64 {
	m := map[string]int64{}
	filepath.WalkDir(store, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				m[d.Name()] = info.Size()
			}
		}
		return nil
	})
	return m
}
