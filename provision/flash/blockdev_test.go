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
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Real loop devices stand in for cards: a loop device is a block device with
// a logical block size of our choosing (512 like SD cards, 4096 like some NVMe),
// O_EXCL, BLKGETSIZE64, BLKZEROOUT and BLKDISCARD, backed by a file we can
// inspect and corrupt behind the device's back.

// loopDevice attaches a sparse file of size bytes, first filled with fill (if
// non-zero) to play a used card, as a loop device with the given sector size.
func loopDevice(t *testing.T, size int64, sectorSize int, fill byte) (dev, backing string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root (CI runs the flash tests as root)")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed (Debian package mount)")
	}
	backing = filepath.Join(t.TempDir(), "card.img")
	content := make([]byte, size)
	if fill != 0 {
		for i := range content {
			content[i] = fill
		}
	}
	if err := os.WriteFile(backing, content, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "-f", "--show", "--sector-size", strconv.Itoa(sectorSize), backing).CombinedOutput()
	if err != nil {
		t.Skipf("losetup cannot attach a loop device here: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing
}

// bdImage writes an image of size bytes with pseudo-random data in regions
// (some in the partition-table regions, one unaligned, one at the very end),
// zeros elsewhere.
func bdImage(t *testing.T, size int64) (path string, content []byte) {
	t.Helper()
	content = make([]byte, size)
	rng := rand.New(rand.NewPCG(6, 1))
	for _, r := range []struct{ off, n int64 }{
		{0, 512}, {1 << 20, 300 << 10}, {3<<20 - 8192, 1<<20 + 12288}, {5<<20 + 100, 5000}, {size - 3000, 3000},
	} {
		for i := r.off; i < r.off+r.n; i++ {
			content[i] = byte(rng.Uint32() | 1)
		}
	}
	path = filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, content
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBlockTargetsFlashLoopDevices(t *testing.T) {
	const imgSize = 8<<20 + 4096 + 100 // not a multiple of 512: the end needs read-modify-write
	img, want := bdImage(t, imgSize)
	const devSize = 16 << 20
	type card struct {
		dev, backing string
		t            *BlockTarget
	}
	var cards []card
	var targets []Target
	for _, sector := range []int{512, 4096} {
		dev, backing := loopDevice(t, devSize, sector, 0xAA) // a used card
		bt, err := OpenBlockTarget(dev, imgSize, BlockOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bt.Close() })
		info := bt.Info()
		if !info.Device || !info.Direct || info.Align != sector || info.Size != devSize || info.BufferedReason != "" {
			t.Fatalf("%s: info %+v, want a direct device with %d-byte blocks of %d bytes", dev, info, sector, devSize)
		}
		// No block map: holes must read as zeros on the used card.
		var last int64
		if err := bt.ZeroFill(context.Background(), func(done, total int64) { last = done }); err != nil {
			t.Fatal(err)
		}
		if last < imgSize {
			t.Errorf("%s: ZeroFill progress ended at %d of %d bytes", dev, last, imgSize)
		}
		cards = append(cards, card{dev, backing, bt})
		targets = append(targets, bt)
	}
	src, err := OpenImage(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res := Flash(context.Background(), src, targets, Options{ChunkSize: 1 << 20})
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", cards[i].dev, r.Err)
		}
	}
	for _, c := range cards {
		got := readFile(t, c.backing)
		if i := firstDiff(got[:imgSize], want); i >= 0 {
			t.Errorf("%s: byte %d is %#x, the image has %#x", c.dev, i, got[i], want[i])
		}
		// Beyond the image the card is don't-care, except its last MiB,
		// where an old backup GPT would be: zeroed.
		// (ZeroFill zeroes whole blocks, up to the end of the image's last.)
		if after := roundUp(imgSize, int64(c.t.Info().Align)); got[after] != 0xAA {
			t.Errorf("%s: byte %d after the image is %#x: the card was written beyond the image", c.dev, after, got[after])
		}
		if !allZero(got[devSize-HeaderRegion:]) {
			t.Errorf("%s: the last MiB of the card is not zeroed", c.dev)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func allZero(b []byte) bool { return firstDiff(b, make([]byte, len(b))) < 0 }

// corruptAfterHeader corrupts one byte of the card behind the device's back
// (through the loop device's backing file) after the partition table is
// written, just before verification, and first reads that byte through the
// page cache so that a cached read-back would still see the good byte.
type corruptAfterHeader struct {
	*BlockTarget
	backing string
	at      int64
	syncs   int
	cached  byte // what a buffered read of the device returned after the corruption
}

func (c *corruptAfterHeader) Sync() error {
	if err := c.BlockTarget.Sync(); err != nil {
		return err
	}
	if c.syncs++; c.syncs != 3 { // prepare, data, header
		return nil
	}
	dev, err := os.Open(c.Name()) // buffered: fills the device's page cache
	if err != nil {
		return err
	}
	defer dev.Close()
	b := make([]byte, 1)
	if _, err := dev.ReadAt(b, c.at); err != nil {
		return err
	}
	f, err := os.OpenFile(c.backing, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{b[0] ^ 0xFF}, c.at); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if _, err := dev.ReadAt(b, c.at); err != nil {
		return err
	}
	c.cached = b[0]
	return nil
}

func TestBlockTargetVerifyBypassesPageCache(t *testing.T) {
	const imgSize = 8 << 20
	img, want := bdImage(t, imgSize)
	const at = 3<<20 + 77 // inside a data region
	for _, opts := range []BlockOptions{{}, {Buffered: true}} {
		t.Run(fmt.Sprintf("buffered=%v", opts.Buffered), func(t *testing.T) {
			dev, backing := loopDevice(t, imgSize, 512, 0)
			bt, err := OpenBlockTarget(dev, imgSize, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer bt.Close()
			if bt.Info().Direct == opts.Buffered {
				t.Fatalf("Direct = %v with %+v (reason %q)", bt.Info().Direct, opts, bt.Info().BufferedReason)
			}
			src, err := OpenImage(img)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			target := &corruptAfterHeader{BlockTarget: bt, backing: backing, at: at}
			res := Flash(context.Background(), src, []Target{target}, Options{ChunkSize: 1 << 20})
			if target.syncs < 3 {
				t.Fatalf("the corruption was never injected (%d syncs): %v", target.syncs, res[0].Err)
			}
			wantMsg := fmt.Sprintf("first difference at offset %d", at)
			if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), wantMsg) {
				t.Fatalf("verify after corrupting byte %d: err %v, want %q", at, res[0].Err, wantMsg)
			}
			// The engine's chunk buffers are page-aligned Go allocations and,
			// for an image whose size is a multiple of 4 KiB, its extents are
			// aligned: nothing should need the bounce buffer.
			if b := bt.Info().Bounced; !opts.Buffered && b != 0 {
				t.Errorf("%d bytes went through the bounce buffer; the engine's writes and reads should go direct", b)
			}
			if target.cached == want[at] {
				t.Logf("as expected, a buffered read of %s still returned the old byte from the page cache; the read-back did not", dev)
			}
		})
	}
}

func TestBlockTargetRefuses(t *testing.T) {
	dev, _ := loopDevice(t, 4<<20, 512, 0)
	if _, err := OpenBlockTarget(dev, 4<<20+512, BlockOptions{}); err == nil || !strings.Contains(err.Error(), "use a larger card") {
		t.Errorf("image larger than the device: err %v, want a refusal", err)
	}
	bt, err := OpenBlockTarget(dev, 4<<20, BlockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	if _, err := OpenBlockTarget(dev, 1<<20, BlockOptions{}); !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open of a device held with O_EXCL: err %v, want EBUSY", err)
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	if _, err := OpenBlockTarget(file, 1, BlockOptions{}); err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Errorf("regular file: err %v", err)
	}
	if _, err := OpenBlockTarget(dev, 0, BlockOptions{}); err == nil {
		t.Error("zero image size accepted")
	}
}

// ioCase writes n bytes at off from a buffer that starts skew bytes past an
// aligned address, and reads them back the same way.
type ioCase struct {
	off, n int64
	skew   int
}

var ioCases = []ioCase{
	{0, 4096, 0},
	{0, 0, 0},
	{100, 50, 0},
	{4000, 200, 0},      // across a block boundary
	{4096, 8192, 1},     // aligned offset, unaligned memory
	{4096, 8192 + 7, 0}, // aligned start, partial last block
	{512, 1<<20 + 700, 3},
	{8192, 3 << 20, 0}, // large aligned: straight to the device
	{1<<20 - 10, 2<<20 + 20, 4095},
}

func checkUnalignedIO(t *testing.T, bt *BlockTarget, size int64, model []byte, cases []ioCase) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range append(cases, ioCase{size - 10, 10, 5}, ioCase{size - 5000, 5000, 0}) {
		mem := make([]byte, c.n+2*8192)
		base := int((8192 - addr(mem)%8192) % 8192)
		buf := mem[base+c.skew : base+c.skew+int(c.n)]
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		before := bt.Info().Bounced
		if n, err := bt.WriteAt(buf, c.off); err != nil || n != len(buf) {
			t.Fatalf("%+v: WriteAt = %d, %v", c, n, err)
		}
		copy(model[c.off:], buf)
		aligned := c.skew == 0 && c.off%int64(bt.Info().Align) == 0 && c.n%int64(bt.Info().Align) == 0
		if bounced := bt.Info().Bounced - before; aligned && bounced != 0 {
			t.Errorf("%+v: an aligned write bounced %d bytes", c, bounced)
		}
		got := mem[base+c.skew+1 : base+c.skew+1+int(c.n)] // a differently aligned buffer
		clear(got)
		if n, err := bt.ReadAt(got, c.off); err != nil || n != len(got) {
			t.Fatalf("%+v: ReadAt = %d, %v", c, n, err)
		}
		if i := firstDiff(got, model[c.off:c.off+c.n]); i >= 0 {
			t.Fatalf("%+v: read back byte %d wrong", c, i)
		}
	}
	// Reading across the end returns what there is and io.EOF.
	tail := make([]byte, 100)
	if n, err := bt.ReadAt(tail, size-40); n != 40 || err == nil {
		t.Errorf("read across the end: %d, %v; want 40, EOF", n, err)
	}
	if _, err := bt.WriteAt(tail, size-40); err == nil {
		t.Error("write across the end accepted")
	}
	whole := make([]byte, size)
	if n, err := bt.ReadAt(whole, 0); n != int(size) || err != nil {
		t.Fatalf("read everything: %d, %v", n, err)
	}
	if i := firstDiff(whole, model); i >= 0 {
		t.Fatalf("byte %d wrong after the unaligned writes", i)
	}
}

func TestBlockTargetUnalignedIO(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run(strconv.Itoa(sector), func(t *testing.T) {
			const size = 8 << 20
			dev, backing := loopDevice(t, size, sector, 0x5A)
			bt, err := OpenBlockTarget(dev, size, BlockOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer bt.Close()
			model := bytes.Repeat([]byte{0x5A}, size)
			checkUnalignedIO(t, bt, size, model, ioCases)
			if err := bt.Sync(); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(readFile(t, backing), model); i >= 0 {
				t.Fatalf("backing file byte %d differs from what was written", i)
			}
		})
	}
}

func TestBlockTargetZeroFillAndDiscard(t *testing.T) {
	const devSize, imgSize = 8 << 20, 5<<20 + 1000
	dev, backing := loopDevice(t, devSize, 512, 0xAA)
	bt, err := OpenBlockTarget(dev, imgSize, BlockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	if err := bt.ZeroFill(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, backing)
	end := roundUp(imgSize, 512)
	if !allZero(got[:end]) {
		t.Errorf("ZeroFill left byte %d of the image range non-zero", firstDiff(got[:end], make([]byte, end)))
	}
	if !bytes.Equal(got[end:devSize-HeaderRegion], bytes.Repeat([]byte{0xAA}, int(devSize-HeaderRegion-end))) {
		t.Error("ZeroFill touched the card beyond the image")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := bt.ZeroFill(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("ZeroFill with a cancelled context: %v", err)
	}
	if err := bt.Discard(context.Background()); err != nil {
		t.Fatal(err) // loop devices support discard
	}
	// A discarded loop device punches holes in its backing file.
	if got := readFile(t, backing); !allZero(got) {
		t.Errorf("after Discard byte %d of the loop device is non-zero", firstDiff(got, make([]byte, len(got))))
	}
}

func TestFileTargetDirect(t *testing.T) {
	const imgSize = 6<<20 + 1234
	img, want := bdImage(t, imgSize)
	dir := t.TempDir()
	var targets []Target
	var paths []string
	for i := range 2 {
		p := filepath.Join(dir, fmt.Sprintf("t%d.img", i))
		ft, err := OpenFileTargetDirect(p, imgSize)
		if err != nil {
			t.Fatal(err)
		}
		defer ft.Close()
		info := ft.Info()
		t.Logf("%s: direct=%v align=%d %s", p, info.Direct, info.Align, info.BufferedReason)
		if !info.Direct && !strings.Contains(info.BufferedReason, "O_DIRECT") {
			t.Errorf("buffered without a reason: %+v", info)
		}
		targets = append(targets, ft)
		paths = append(paths, p)
	}
	src, err := OpenImage(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i, r := range Flash(context.Background(), src, targets, Options{ChunkSize: 1 << 20}) {
		if r.Err != nil {
			t.Fatalf("%s: %v", paths[i], r.Err)
		}
	}
	for _, p := range paths {
		got := readFile(t, p)
		if len(got) != imgSize {
			t.Fatalf("%s is %d bytes, want %d", p, len(got), imgSize)
		}
		if i := firstDiff(got, want); i >= 0 {
			t.Errorf("%s: byte %d differs", p, i)
		}
	}
}

func TestFileTargetDirectUnalignedIOAndFallback(t *testing.T) {
	const size = 4<<20 + 777
	p := filepath.Join(t.TempDir(), "t.img")
	ft, err := OpenFileTargetDirect(p, size)
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()
	if !ft.Info().Direct {
		t.Skipf("the test directory's file system has no O_DIRECT: %s", ft.Info().BufferedReason)
	}
	model := make([]byte, size)
	checkUnalignedIO(t, ft, size, model, ioCases)
	// Falling back to buffered I/O mid-way (a driver refusing direct writes)
	// keeps the data and says why.
	if err := ft.fallBack("test"); err != nil {
		t.Fatal(err)
	}
	if info := ft.Info(); info.Direct || !strings.HasPrefix(info.BufferedReason, "test;") {
		t.Fatalf("after fallBack: %+v", info)
	}
	checkUnalignedIO(t, ft, size, model, ioCases[:4])
	if err := ft.Sync(); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(readFile(t, p), model); i >= 0 {
		t.Fatalf("file byte %d differs", i)
	}
}
