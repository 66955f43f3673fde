package powercut

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sync"
)

// ErrPowerCut is what every write and sync returns once the power is gone.
var ErrPowerCut = errors.New("power cut")

// Tear says how much of the write at the cut point reaches the medium.
type Tear int

const (
	// TearLose: none of it.
	TearLose Tear = iota
	// TearPrefix: its first k sectors, 0 < k < all (random k); a one-sector
	// write cannot tear this way.
	TearPrefix
	// TearSubset: a random subset of its sectors, in no order (flash
	// translation layers do not promise one).
	TearSubset
	// TearWhole: all of it, then the power goes.
	TearWhole
)

func (t Tear) String() string {
	return [...]string{"lost", "torn-prefix", "torn-subset", "whole"}[t]
}

// Cache says which completed but unsynced writes survive the cut: the
// device's volatile write cache.
type Cache int

const (
	// CacheLose: only what a Sync flushed survives.
	CacheLose Cache = iota
	// CacheKeep: every completed write survives (the cache had drained).
	CacheKeep
	// CacheRandom: each unsynced sector write survives or not on its own,
	// so later writes may survive where earlier ones did not.
	CacheRandom
)

func (c Cache) String() string { return [...]string{"cache-lost", "cache-kept", "cache-random"}[c] }

// Fault is where and how the power fails.
type Fault struct {
	// At is the 1-based number of the write during which power is lost; 0
	// never cuts (until PowerOff).
	At    int
	Tear  Tear
	Cache Cache
	Seed  uint64 // for the random choices of Tear and Cache
}

// WriteRecord describes one write a device received.
type WriteRecord struct {
	Off  int64
	Len  int
	Hash uint64 // FNV-1a of the data, to spot a scenario that is not deterministic
}

type pendingSector struct {
	n    int64
	data []byte
}

// Device is a writable disk that loses power as its Fault says. It is safe
// for concurrent use.
type Device struct {
	mu       sync.Mutex
	initial  *Disk
	durable  map[int64][]byte
	pending  []pendingSector // written since the last Sync, in order
	current  map[int64][]byte
	fault    Fault
	rng      *rand.Rand
	writes   []WriteRecord
	syncs    int
	survivor *Disk // set when the power is cut
}

// NewDevice makes a device whose content starts as initial.
func NewDevice(initial *Disk, f Fault) *Device {
	return &Device{initial: initial, durable: map[int64][]byte{}, current: map[int64][]byte{}, fault: f,
		rng: rand.New(rand.NewPCG(f.Seed, uint64(f.At)))}
}

// Size is the device's size in bytes.
func (d *Device) Size() int64 { return d.initial.size }

func (d *Device) lookup(n int64) ([]byte, bool) {
	if s, ok := d.current[n]; ok {
		return s, true
	}
	return d.initial.sector(n)
}

// ReadAt reads what the running system sees: every completed write.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return readOverlay(d.initial.base, d.initial.size, d.lookup, p, off)
}

// WriteAt writes p, or — at and after the cut point — fails with
// ErrPowerCut.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.survivor != nil {
		return 0, ErrPowerCut
	}
	if off < 0 || off+int64(len(p)) > d.initial.size {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the %d-byte device", len(p), off, d.initial.size)
	}
	h := fnv.New64a()
	h.Write(p)
	d.writes = append(d.writes, WriteRecord{Off: off, Len: len(p), Hash: h.Sum64()})
	var sectors []pendingSector
	err := overlayWrite(d.initial.base, d.lookup, func(n int64, s []byte) { sectors = append(sectors, pendingSector{n, s}) }, p, off)
	if err != nil {
		return 0, err
	}
	if len(d.writes) == d.fault.At {
		d.cut(d.tear(sectors))
		return 0, ErrPowerCut
	}
	for _, s := range sectors {
		d.current[s.n] = s.data
		d.pending = append(d.pending, s)
	}
	return len(p), nil
}

// tear picks the sectors of the cut write that land.
func (d *Device) tear(sectors []pendingSector) []pendingSector {
	switch d.fault.Tear {
	case TearPrefix:
		if len(sectors) < 2 {
			return nil
		}
		return sectors[:1+d.rng.IntN(len(sectors)-1)]
	case TearSubset:
		var out []pendingSector
		for _, s := range sectors {
			if d.rng.IntN(2) == 0 {
				out = append(out, s)
			}
		}
		return out
	case TearWhole:
		return sectors
	}
	return nil
}

// cut freezes the surviving disk: flushed sectors, the unsynced ones the
// cache policy keeps, then what landed of the cut write.
func (d *Device) cut(landed []pendingSector) {
	survived := make(map[int64][]byte, len(d.durable)+len(d.pending))
	for n, s := range d.durable {
		survived[n] = s
	}
	for _, s := range d.pending {
		keep := d.fault.Cache == CacheKeep || d.fault.Cache == CacheRandom && d.rng.IntN(2) == 0
		if keep {
			survived[s.n] = s.data
		}
	}
	for _, s := range landed {
		survived[s.n] = s.data
	}
	d.survivor = d.initial.derive(survived)
}

// Sync flushes the write cache: everything written so far is durable.
func (d *Device) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.survivor != nil {
		return ErrPowerCut
	}
	d.syncs++
	for _, s := range d.pending {
		d.durable[s.n] = s.data
	}
	d.pending = nil
	return nil
}

// PowerOff cuts the power now if it has not been cut yet (the cache policy
// decides the fate of unsynced writes) and returns the surviving disk.
func (d *Device) PowerOff() *Disk {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.survivor == nil {
		d.cut(nil)
	}
	return d.survivor
}

// IsCut reports whether the power has been cut.
func (d *Device) IsCut() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.survivor != nil
}

// Current is the content the running system sees (every completed write),
// as a disk.
func (d *Device) Current() *Disk {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp := make(map[int64][]byte, len(d.current))
	for n, s := range d.current {
		cp[n] = s
	}
	return d.initial.derive(cp)
}

// Writes lists the writes received so far, including the one cut.
func (d *Device) Writes() []WriteRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]WriteRecord(nil), d.writes...)
}

// Syncs counts the successful Sync calls.
func (d *Device) Syncs() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncs
}

// Section is the window [off, off+size) of the device, for code that
// writes one partition.
func (d *Device) Section(off, size int64) (*Section, error) {
	if off < 0 || size <= 0 || off+size > d.initial.size {
		return nil, fmt.Errorf("section %d+%d is outside the %d-byte device", off, size, d.initial.size)
	}
	return &Section{dev: d, sync: d.Sync, off: off, size: size}, nil
}
