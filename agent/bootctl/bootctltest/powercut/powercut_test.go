package powercut

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

const testSize = 64 * SectorSize

func baseImage() []byte {
	b := make([]byte, testSize)
	for i := range b {
		b[i] = byte(i / SectorSize)
	}
	return b
}

// TestDeviceMatchesPlainBuffer writes random, unaligned ranges to a device
// and to a byte slice and compares every read.
func TestDeviceMatchesPlainBuffer(t *testing.T) {
	base := baseImage()
	ref := append([]byte(nil), base...)
	dev := NewDevice(NewDisk(bytes.NewReader(base), testSize), Fault{})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		off := rng.Int64N(testSize - 1)
		n := 1 + rng.Int64N(min(3*SectorSize, testSize-off))
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if _, err := dev.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(ref[off:], p)
		if i%7 == 0 {
			dev.Sync()
		}
		roff := rng.Int64N(testSize)
		got := make([]byte, rng.Int64N(testSize-roff)+1)
		if _, err := dev.ReadAt(got, roff); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ref[roff:roff+int64(len(got))]) {
			t.Fatalf("read %d bytes at %d after write %d differs", len(got), roff, i)
		}
	}
	// Everything was synced or not: with the cache kept the survivor is the whole.
	all := make([]byte, testSize)
	dev.fault.Cache = CacheKeep
	if _, err := dev.PowerOff().ReadAt(all, 0); err != nil || !bytes.Equal(all, ref) {
		t.Fatalf("survivor with a kept cache differs from what was written (%v)", err)
	}
	if _, err := dev.WriteAt([]byte{1}, 0); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("write after power off: %v", err)
	}
}

func sectorOf(t *testing.T, d *Disk, n int64) byte {
	t.Helper()
	b := make([]byte, SectorSize)
	if _, err := d.ReadAt(b, n*SectorSize); err != nil {
		t.Fatal(err)
	}
	for _, c := range b[1:] {
		if c != b[0] {
			t.Fatalf("sector %d is mixed: %v", n, b[:8])
		}
	}
	return b[0]
}

func TestCutSemantics(t *testing.T) {
	base := baseImage()
	disk := NewDisk(bytes.NewReader(base), testSize)
	fill := func(v byte, sectors int) []byte { return bytes.Repeat([]byte{v}, sectors*SectorSize) }
	// write 1: sector 0 (synced), write 2: sector 1 (unsynced), write 3:
	// sectors 10..17 (the cut one).
	run := func(f Fault) (*Disk, error) {
		dev := NewDevice(disk, f)
		if _, err := dev.WriteAt(fill(0xA1, 1), 0); err != nil {
			return nil, err
		}
		if err := dev.Sync(); err != nil {
			return nil, err
		}
		if _, err := dev.WriteAt(fill(0xA2, 1), SectorSize); err != nil {
			return nil, err
		}
		_, err := dev.WriteAt(fill(0xA3, 8), 10*SectorSize)
		if !errors.Is(err, ErrPowerCut) {
			return nil, fmt.Errorf("cut write returned %v", err)
		}
		if err := dev.Sync(); !errors.Is(err, ErrPowerCut) {
			return nil, fmt.Errorf("sync after the cut returned %v", err)
		}
		return dev.PowerOff(), nil
	}
	landed := func(d *Disk) int {
		n := 0
		for s := int64(10); s < 18; s++ {
			switch sectorOf(t, d, s) {
			case 0xA3:
				n++
			case byte(s):
			default:
				t.Fatalf("sector %d holds neither old nor new data", s)
			}
		}
		return n
	}
	for _, c := range []struct {
		f          Fault
		wantS1     byte
		minL, maxL int
	}{
		{Fault{At: 3, Tear: TearLose, Cache: CacheLose}, 1, 0, 0},
		{Fault{At: 3, Tear: TearWhole, Cache: CacheLose}, 1, 8, 8},
		{Fault{At: 3, Tear: TearLose, Cache: CacheKeep}, 0xA2, 0, 0},
		{Fault{At: 3, Tear: TearPrefix, Cache: CacheKeep, Seed: 5}, 0xA2, 1, 7},
		{Fault{At: 3, Tear: TearSubset, Cache: CacheKeep, Seed: 5}, 0xA2, 0, 8},
	} {
		t.Run(fmt.Sprintf("%s/%s", c.f.Tear, c.f.Cache), func(t *testing.T) {
			d, err := run(c.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := sectorOf(t, d, 0); got != 0xA1 {
				t.Errorf("synced sector 0 = %#x, lost", got)
			}
			if got := sectorOf(t, d, 1); got != c.wantS1 {
				t.Errorf("unsynced sector 1 = %#x, want %#x", got, c.wantS1)
			}
			n := landed(d)
			if n < c.minL || n > c.maxL {
				t.Errorf("%d sectors of the cut write landed, want %d..%d", n, c.minL, c.maxL)
			}
			if c.f.Tear == TearPrefix {
				for s := int64(10); s < 10+int64(n); s++ {
					if sectorOf(t, d, s) != 0xA3 {
						t.Errorf("prefix tear left a hole at sector %d", s)
					}
				}
			}
		})
	}
}

func TestEqualRegion(t *testing.T) {
	base := baseImage()
	d := NewDisk(bytes.NewReader(base), testSize)
	a, _ := d.With([]byte{9}, 5*SectorSize+3)
	b, _ := a.With([]byte{9}, 5*SectorSize+3) // same byte again
	c, _ := a.With([]byte{7}, 6*SectorSize)
	plain := NewDisk(bytes.NewReader(append([]byte(nil), base...)), testSize) // another base
	for _, x := range []struct {
		name      string
		p, q      *Disk
		off, n    int64
		wantEqual bool
	}{
		{"same overlay", a, b, 0, testSize, true},
		{"changed sector", a, c, 0, testSize, false},
		{"change outside region", a, c, 0, 6 * SectorSize, true},
		{"base vs overlay", d, a, 5 * SectorSize, SectorSize, false},
		{"different bases, equal bytes", d, plain, 0, testSize, true},
		{"different bases, different bytes", a, plain, 0, testSize, false},
	} {
		got, err := EqualRegion(x.p, x.q, x.off, x.n)
		if err != nil || got != x.wantEqual {
			t.Errorf("%s: %v, %v; want %v", x.name, got, err, x.wantEqual)
		}
	}
	if got := a.Changed(0, testSize); len(got) != 1 || got[0] != 5 {
		t.Errorf("Changed = %v, want [5]", got)
	}
}

// A toy A/B record: sectors 8.. hold a payload, sector 0 a pointer naming
// which of two payload areas is current, with a checksum byte. The check:
// the pointer must name a complete payload.
const (
	areaA, areaB = 8, 24
	payloadLen   = 8 // sectors
)

func writeUpdate(syncBeforeCommit bool) Scenario {
	return func(ctx context.Context, dev *Device) error {
		for i := range payloadLen {
			if _, err := dev.WriteAt(bytes.Repeat([]byte{0xB0 + byte(i)}, SectorSize), int64(areaB+i)*SectorSize); err != nil {
				return fmt.Errorf("write payload: %w", err)
			}
		}
		if syncBeforeCommit {
			if err := dev.Sync(); err != nil {
				return err
			}
		}
		if _, err := dev.WriteAt(bytes.Repeat([]byte{'B'}, SectorSize), 0); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return dev.Sync()
	}
}

func checkPointer(ctx context.Context, c Cut) error {
	ptr := make([]byte, 1)
	c.Disk.ReadAt(ptr, 0)
	area := int64(areaA)
	switch ptr[0] {
	case 'B':
		area = areaB
	case 0: // the initial pointer names A
	default:
		return fmt.Errorf("pointer is %q", ptr)
	}
	if area == areaA {
		return nil // A is never written
	}
	ok, err := EqualRegion(c.Disk, c.Final, area*SectorSize, payloadLen*SectorSize)
	if err != nil || !ok {
		return fmt.Errorf("pointer names area B but its payload is incomplete (%v)", err)
	}
	return nil
}

func TestSweep(t *testing.T) {
	initial := NewDisk(bytes.NewReader(make([]byte, testSize)), testSize)
	ctx := context.Background()
	rep, err := Sweep(ctx, Config{Initial: initial, Scenario: writeUpdate(true), Check: checkPointer, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("correct update: %d writes, %d cut points, %d runs", rep.Writes, rep.CutPoints, rep.Runs)
	if rep.Writes != payloadLen+1 || rep.CutPoints != rep.Writes+1 || rep.Syncs != 2 {
		t.Errorf("report %+v", rep)
	}
	// One-sector writes are only lost or whole: 2 tears × 3 caches each,
	// plus 3 cache variants after the end.
	if want := rep.Writes*2*3 + 3; rep.Runs != want {
		t.Errorf("%d runs, want %d", rep.Runs, want)
	}

	// Without the flush before the pointer write, a cache that keeps a
	// later write but not an earlier one exposes a half payload.
	_, err = Sweep(ctx, Config{Initial: initial, Scenario: writeUpdate(false), Check: checkPointer, Seed: 1})
	if err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("the sweep missed the unflushed payload: %v", err)
	}
	t.Logf("unflushed update caught: %v", strings.SplitN(err.Error(), "\n", 2)[0])
}

func TestSweepRejectsBadScenarios(t *testing.T) {
	initial := NewDisk(bytes.NewReader(make([]byte, testSize)), testSize)
	ctx := context.Background()
	pass := func(context.Context, Cut) error { return nil }
	runs := 0
	nondeterministic := func(ctx context.Context, dev *Device) error {
		runs++
		for i := range 3 {
			if _, err := dev.WriteAt([]byte{1}, int64(runs+i)*SectorSize); err != nil {
				return err
			}
		}
		return nil
	}
	ignoring := func(ctx context.Context, dev *Device) error {
		for i := range 3 {
			dev.WriteAt([]byte{1}, int64(i)*SectorSize)
		}
		return nil
	}
	for name, s := range map[string]Scenario{"not deterministic": nondeterministic, "ignored write error": ignoring} {
		_, err := Sweep(ctx, Config{Initial: initial, Scenario: s, Check: pass})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
