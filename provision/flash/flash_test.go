package flash

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/bmap"
)

const (
	MiB       = 1 << 20
	imageSize = 8 * MiB
	testChunk = 1 * MiB // small chunks so the 8 MiB test image spans many of them
)

// dataRegions are written into the test image besides the GPT sfdisk writes: one
// inside a partition, one across a chunk boundary, one unaligned, holes between.
var dataRegions = []struct{ off, len int64 }{
	{1*MiB + 512<<10, 300 << 10},
	{3*MiB - 8192, 1*MiB + 12288},
	{6*MiB + 100, 5000},
}

// makeImage writes a sparse 8 MiB GPT disk image (partitioned by sfdisk, so it has a
// primary GPT in the first MiB and a backup GPT in the last) with pseudo-random data
// regions, and, if withMap, its .bmap sidecar made by bmap.Scan.
func makeImage(t *testing.T, dir string, withMap bool) string {
	t.Helper()
	sfdisk := needTool(t, "sfdisk")
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(imageSize); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sfdisk, "--no-reread", "--no-tell-kernel", path)
	cmd.Stdin = strings.NewReader("label: gpt\nlabel-id: 6E0C5C3B-3E5B-4C55-9C0C-6C6B6977690A\nstart=2048, size=4096\nstart=6144, size=8192\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	rng := rand.New(rand.NewPCG(6, 6))
	for _, r := range dataRegions {
		buf := make([]byte, r.len)
		for i := range buf {
			buf[i] = byte(rng.Uint32() | 1) // never zero, so zero detection sees all of it
		}
		if _, err := f.WriteAt(buf, r.off); err != nil {
			t.Fatal(err)
		}
	}
	if withMap {
		m, err := bmap.Scan(t.Context(), f, bmap.ScanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var xml bytes.Buffer
		if err := m.WriteXML(&xml); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bmap.SidecarPath(path), xml.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian package fdisk); it makes and checks the test image's GPT", name)
	}
	return p
}

// openTarget opens a file target whose partition-table regions hold garbage first,
// the way a previously used card would, so tests see that Flash clears them.
func openTarget(t *testing.T, path string) *FileTarget {
	t.Helper()
	ft, err := OpenFileTarget(path, imageSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ft.Close() })
	old := bytes.Repeat([]byte{0xAA}, HeaderRegion)
	for _, off := range []int64{0, imageSize - HeaderRegion} {
		if _, err := ft.WriteAt(old, off); err != nil {
			t.Fatal(err)
		}
	}
	return ft
}

// hasPartitionTable asks sfdisk whether path holds a partition table.
func hasPartitionTable(t *testing.T, path string) bool {
	t.Helper()
	out, err := exec.Command(needTool(t, "sfdisk"), "--dump", path).CombinedOutput()
	return err == nil && bytes.Contains(out, []byte("label: gpt"))
}

func mustEqualFiles(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		i := 0
		for i < min(len(a), len(b)) && a[i] == b[i] {
			i++
		}
		t.Errorf("%s differs from the source at offset %d", got, i)
	}
}

func mustZeroHeader(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(b[:HeaderRegion], func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("%s: first MiB not all zeros (byte at %d); an interrupted target must not keep a partition table", path, i)
	}
	if hasPartitionTable(t, path) {
		t.Errorf("%s: sfdisk still finds a partition table after an interrupted flash", path)
	}
}

func openSource(t *testing.T, path string) *ImageFile {
	t.Helper()
	src, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func mappedBytes(t *testing.T, src *ImageFile) int64 {
	if m := src.BlockMap(); m != nil {
		return m.MappedBytes()
	}
	b, err := os.ReadFile(src.Name())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range nonZeroRuns(b, 0) {
		n += e.end - e.off
	}
	return n
}

// headBytes is how many non-zero bytes (in 4 KiB blocks) the first MiB of src has.
func headBytes(t *testing.T, src *ImageFile) int64 {
	b := make([]byte, HeaderRegion)
	if _, err := src.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range nonZeroRuns(b, 0) {
		n += e.end - e.off
	}
	return n
}

func TestFlashFourTargets(t *testing.T) {
	for _, withMap := range []bool{true, false} {
		t.Run(fmt.Sprintf("bmap=%v", withMap), func(t *testing.T) {
			dir := t.TempDir()
			src := openSource(t, makeImage(t, dir, withMap))
			if (src.BlockMap() != nil) != withMap {
				t.Fatalf("OpenImage found a block map: %v, want %v", src.BlockMap() != nil, withMap)
			}
			var targets []Target
			for i := range 4 {
				targets = append(targets, openTarget(t, filepath.Join(dir, fmt.Sprintf("card%d.img", i))))
			}
			var mu sync.Mutex
			phases := map[string][]Phase{}
			opts := Options{ChunkSize: testChunk, QueueDepth: 2, Progress: func(target string, ph Phase, done, total int64) {
				mu.Lock()
				defer mu.Unlock()
				if p := phases[target]; len(p) == 0 || p[len(p)-1] != ph {
					phases[target] = append(p, ph)
				}
			}}
			results := Flash(t.Context(), src, targets, opts)
			want := mappedBytes(t, src)
			for i, r := range results {
				if r.Err != nil || r.Phase != PhaseDone {
					t.Fatalf("target %d: phase %s, err %v", i, r.Phase, r.Err)
				}
				if r.BytesWritten != want {
					t.Errorf("target %d wrote %d bytes, want the %d mapped bytes", i, r.BytesWritten, want)
				}
				if r.Target != targets[i].Name() || r.Duration <= 0 {
					t.Errorf("result %d = %+v", i, r)
				}
				mustEqualFiles(t, src.Name(), targets[i].Name())
				if !hasPartitionTable(t, targets[i].Name()) {
					t.Errorf("sfdisk finds no GPT on %s", targets[i].Name())
				}
				got := fmt.Sprint(phases[targets[i].Name()])
				if got != "[prepare write header verify done]" {
					t.Errorf("phases of %s = %s", targets[i].Name(), got)
				}
			}
		})
	}
}

// faultTarget wraps a file target with injected faults.
type faultTarget struct {
	*FileTarget
	flipAt    int64         // >= 0: after a write covering this offset, flip the byte on disk
	failAfter int64         // > 0: writes beyond this many bytes fail with ENOSPC
	block     chan struct{} // non-nil: every write waits until it is closed
	written   int64
}

func newFault(ft *FileTarget) *faultTarget { return &faultTarget{FileTarget: ft, flipAt: -1} }

func (f *faultTarget) WriteAt(p []byte, off int64) (int, error) {
	if f.block != nil {
		select {
		case <-f.block:
		case <-time.After(30 * time.Second):
			return 0, errors.New("slow target was never released: the fast targets did not finish while it was blocked")
		}
	}
	if f.failAfter > 0 && f.written+int64(len(p)) > f.failAfter {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	n, err := f.FileTarget.WriteAt(p, off)
	f.written += int64(n)
	if err == nil && f.flipAt >= off && f.flipAt < off+int64(len(p)) {
		if _, err := f.FileTarget.WriteAt([]byte{p[f.flipAt-off] ^ 0x40}, f.flipAt); err != nil {
			return n, err
		}
	}
	return n, err
}

func TestFlashFaults(t *testing.T) {
	flipAt := dataRegions[1].off + 1000
	tests := []struct {
		name    string
		withMap bool
		fault   func(f *faultTarget, src *ImageFile)
		wantErr string
		is      error
		phase   Phase
		// header: whether the faulty target ends up with the partition table
		header bool
	}{
		{
			name: "flipped byte fails verification (bmap)", withMap: true,
			fault:   func(f *faultTarget, _ *ImageFile) { f.flipAt = flipAt },
			wantErr: fmt.Sprintf("verify: byte range %d–%d differs from the source (first difference at offset %d)", dataRegions[1].off, dataRegions[1].off+dataRegions[1].len-1, flipAt),
			phase:   PhaseVerify, header: true,
		},
		{
			name: "flipped byte fails verification (zero detection)", withMap: false,
			fault: func(f *faultTarget, _ *ImageFile) { f.flipAt = flipAt },
			// Without a map, checks are per written extent within a chunk: the
			// chunk from 3 MiB on holds the flipped byte.
			wantErr: fmt.Sprintf("differs from the source (first difference at offset %d)", flipAt),
			phase:   PhaseVerify, header: true,
		},
		{
			name: "ENOSPC mid-way fails alone", withMap: true,
			fault:   func(f *faultTarget, _ *ImageFile) { f.failAfter = 2*HeaderRegion + 400<<10 },
			wantErr: "no space left on device", is: syscall.ENOSPC,
			phase: PhaseWrite,
		},
		{
			// Room for zeroing, the data and the backup GPT at the end, not for
			// the primary GPT: the card must still not look partitioned.
			name: "error while writing the primary partition table", withMap: false,
			fault: func(f *faultTarget, src *ImageFile) {
				f.failAfter = 2*HeaderRegion + mappedBytes(t, src) - headBytes(t, src)
			},
			wantErr: "partition table", is: syscall.ENOSPC,
			phase: PhaseHeader,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := openSource(t, makeImage(t, dir, tc.withMap))
			var targets []Target
			for i := range 4 {
				targets = append(targets, openTarget(t, filepath.Join(dir, fmt.Sprintf("card%d.img", i))))
			}
			bad := newFault(targets[2].(*FileTarget))
			tc.fault(bad, src)
			targets[2] = bad
			results := Flash(t.Context(), src, targets, Options{ChunkSize: testChunk, QueueDepth: 1})
			for i, r := range results {
				if i == 2 {
					continue
				}
				if r.Err != nil || r.Phase != PhaseDone {
					t.Errorf("healthy target %d: phase %s, err %v", i, r.Phase, r.Err)
				}
				mustEqualFiles(t, src.Name(), targets[i].Name())
			}
			r := results[2]
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.wantErr) {
				t.Fatalf("faulty target err = %v, want it to contain %q", r.Err, tc.wantErr)
			}
			if !strings.HasPrefix(r.Err.Error(), bad.Name()+": ") {
				t.Errorf("error %q does not name the target", r.Err)
			}
			if tc.is != nil && !errors.Is(r.Err, tc.is) {
				t.Errorf("error %v is not %v", r.Err, tc.is)
			}
			if r.Phase != tc.phase {
				t.Errorf("faulty target reached phase %s, want %s", r.Phase, tc.phase)
			}
			if tc.phase == PhaseHeader {
				// The backup GPT (last sector) was written before the failure.
				want, got := make([]byte, 512), make([]byte, 512)
				if _, err := src.ReadAt(want, imageSize-512); err != nil {
					t.Fatal(err)
				}
				if _, err := bad.ReadAt(got, imageSize-512); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(want, got) || !bytes.HasPrefix(got, []byte("EFI PART")) {
					t.Errorf("backup GPT header not written before the primary one")
				}
			}
			if tc.header {
				if !hasPartitionTable(t, bad.Name()) {
					t.Errorf("sfdisk finds no GPT on %s", bad.Name())
				}
			} else {
				mustZeroHeader(t, bad.Name())
			}
		})
	}
}

func TestFlashCancelledLeavesNoPartitionTable(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, true))
	var targets []Target
	for i := range 3 {
		targets = append(targets, openTarget(t, filepath.Join(dir, fmt.Sprintf("card%d.img", i))))
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	results := Flash(ctx, src, targets, Options{ChunkSize: testChunk, QueueDepth: 1,
		Progress: func(_ string, ph Phase, done, _ int64) {
			if ph == PhaseWrite && done > 3*MiB {
				cancel()
			}
		}})
	for i, r := range results {
		if !errors.Is(r.Err, context.Canceled) {
			t.Errorf("target %d: err %v, want context.Canceled", i, r.Err)
		}
		// A target a chunk or two ahead may have finished writing data when the
		// cancel came; it must still stop before the partition table.
		if r.Phase != PhaseWrite && r.Phase != PhaseHeader {
			t.Errorf("target %d stopped in phase %s, want %s or %s", i, r.Phase, PhaseWrite, PhaseHeader)
		}
		mustZeroHeader(t, targets[i].Name())
	}
}

// TestFlashSlowTargetDoesNotHoldBackFastOnes blocks every write of one target until
// the three others have finished (verified): it can only pass if the fast targets
// get the whole image while the slow one has not written a byte. The queue is deep
// enough to hold the image's chunks, which is exactly the bound Options.QueueDepth
// sets.
func TestFlashSlowTargetDoesNotHoldBackFastOnes(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, true))
	var targets []Target
	for i := range 4 {
		targets = append(targets, openTarget(t, filepath.Join(dir, fmt.Sprintf("card%d.img", i))))
	}
	slow := newFault(targets[0].(*FileTarget))
	slow.block = make(chan struct{})
	targets[0] = slow
	var fastDone atomic.Int32
	results := Flash(t.Context(), src, targets, Options{ChunkSize: testChunk, QueueDepth: imageSize / testChunk,
		Progress: func(target string, ph Phase, _, _ int64) {
			if ph == PhaseDone && target != slow.Name() && fastDone.Add(1) == 3 {
				close(slow.block)
			}
		}})
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("target %d: %v", i, r.Err)
		}
		mustEqualFiles(t, src.Name(), targets[i].Name())
	}
	// No comparison of Result.Duration: a fast target's goroutine may return after
	// the released slow one. The gate above is the assertion: the slow target's
	// writes fail after 30 s unless all three fast ones reported PhaseDone first.
}

// TestFlashFailedTargetDoesNotStall uses the smallest queue: a target that fails at
// its first write must keep draining, or the reader and the others would block.
func TestFlashFailedTargetDoesNotStall(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, false))
	good := openTarget(t, filepath.Join(dir, "good.img"))
	bad := newFault(openTarget(t, filepath.Join(dir, "bad.img")))
	bad.failAfter = 1
	results := Flash(t.Context(), src, []Target{bad, good}, Options{ChunkSize: testChunk, QueueDepth: 1})
	if !errors.Is(results[0].Err, syscall.ENOSPC) || results[0].Phase != PhasePrepare {
		t.Errorf("bad target: phase %s, err %v", results[0].Phase, results[0].Err)
	}
	if results[1].Err != nil {
		t.Fatalf("good target: %v", results[1].Err)
	}
	mustEqualFiles(t, src.Name(), good.Name())
}

func TestFlashRefuses(t *testing.T) {
	dir := t.TempDir()
	img := makeImage(t, dir, true)
	src := openSource(t, img)
	tgt := openTarget(t, filepath.Join(dir, "card.img"))
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"chunk not a multiple of 4096", Options{ChunkSize: 5000}, "chunk size 5000"},
		{"negative queue", Options{QueueDepth: -1}, "queue depth -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Flash(t.Context(), src, []Target{tgt}, tc.opts)
			if r[0].Err == nil || !strings.Contains(r[0].Err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want %q", r[0].Err, tc.wantErr)
			}
		})
	}
	t.Run("sidecar of another image", func(t *testing.T) {
		if err := os.Truncate(img, imageSize+4096); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenImage(img); err == nil || !strings.Contains(err.Error(), "belongs to another image") {
			t.Errorf("OpenImage err = %v", err)
		}
	})
	t.Run("corrupt sidecar", func(t *testing.T) {
		if err := os.WriteFile(bmap.SidecarPath(img), []byte("<bmap>"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenImage(img); err == nil || !strings.Contains(err.Error(), "regenerate it") {
			t.Errorf("OpenImage err = %v", err)
		}
	})
}

// TestFlashStalledTargetIsDropped blocks one target's writes until the others have
// finished, with the smallest queue: only StallTimeout lets them finish, and the
// stalled target must fail without a partition table.
func TestFlashStalledTargetIsDropped(t *testing.T) {
	dir := t.TempDir()
	src := openSource(t, makeImage(t, dir, true))
	var targets []Target
	for i := range 3 {
		targets = append(targets, openTarget(t, filepath.Join(dir, fmt.Sprintf("card%d.img", i))))
	}
	stuck := newFault(targets[1].(*FileTarget))
	stuck.block = make(chan struct{})
	targets[1] = stuck
	var fastDone atomic.Int32
	results := Flash(t.Context(), src, targets, Options{ChunkSize: testChunk, QueueDepth: 1, StallTimeout: 3 * time.Second, // long enough that a healthy target under load (fsync) is never dropped
		Progress: func(target string, ph Phase, _, _ int64) {
			if ph == PhaseDone && target != stuck.Name() && fastDone.Add(1) == 2 {
				close(stuck.block)
			}
		}})
	for _, i := range []int{0, 2} {
		if results[i].Err != nil {
			t.Fatalf("target %d: %v", i, results[i].Err)
		}
		mustEqualFiles(t, src.Name(), targets[i].Name())
	}
	if err := results[1].Err; err == nil || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("stuck target: err %v, want a stall", err)
	}
	if results[1].Phase != PhaseWrite {
		t.Errorf("stuck target reached phase %s", results[1].Phase)
	}
	mustZeroHeader(t, stuck.Name())
}
