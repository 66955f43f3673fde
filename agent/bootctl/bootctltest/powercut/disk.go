// Package powercut is a fault-injecting block device for tests of
// anything that must survive losing power mid-write (an A/B commit, a slot
// update): a Device counts every write and "cuts power" at write N — later
// writes fail and are lost, write N itself may be torn (only some of its
// 512-byte sectors land), and writes not yet flushed with Sync sit in a
// volatile write cache of which none, all or a random subset survives.
// Sweep runs a scenario once to count its writes, then once per cut point
// on a fresh disk, and hands every surviving disk to a check.
//
// Disks are copy-on-write overlays of sectors over a read-only base (an
// image file), so a fresh copy per cut point costs nothing and comparing a
// region of two disks reads only the sectors either of them changed.
package powercut

import (
	"bytes"
	"fmt"
	"io"
	"sort"
)

// SectorSize is the granularity of tearing and of the write cache.
const SectorSize = 512

// Disk is an immutable disk image: a base plus sectors written over it.
type Disk struct {
	base    io.ReaderAt
	size    int64
	parent  *Disk            // overlays stack: a disk derived from another
	sectors map[int64][]byte // sector number -> SectorSize bytes
}

// NewDisk wraps a size-byte base image (not modified, not copied).
func NewDisk(base io.ReaderAt, size int64) *Disk {
	return &Disk{base: base, size: size, sectors: map[int64][]byte{}}
}

// Size is the disk's size in bytes.
func (d *Disk) Size() int64 { return d.size }

func (d *Disk) sector(n int64) ([]byte, bool) {
	for x := d; x != nil; x = x.parent {
		if s, ok := x.sectors[n]; ok {
			return s, true
		}
	}
	return nil, false
}

// ReadAt reads the disk's current content.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	return readOverlay(d.base, d.size, d.sector, p, off)
}

func readOverlay(base io.ReaderAt, size int64, lookup func(int64) ([]byte, bool), p []byte, off int64) (int, error) {
	if off < 0 || off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	done := int64(0)
	for done < n {
		pos := off + done
		sec := pos / SectorSize
		in := pos % SectorSize
		chunk := min(SectorSize-in, n-done)
		if s, ok := lookup(sec); ok {
			copy(p[done:done+chunk], s[in:in+chunk])
			done += chunk
			continue
		}
		// Coalesce a run of base sectors into one read.
		end := pos + chunk
		for end < off+n {
			if _, ok := lookup(end / SectorSize); ok {
				break
			}
			end = min((end/SectorSize+1)*SectorSize, off+n)
		}
		if _, err := base.ReadAt(p[done:end-off], pos); err != nil && err != io.EOF {
			return int(done), fmt.Errorf("read base image at %d: %w", pos, err)
		}
		done = end - off
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// derive makes a child disk with the given sectors over d.
func (d *Disk) derive(sectors map[int64][]byte) *Disk {
	return &Disk{base: d.base, size: d.size, parent: d, sectors: sectors}
}

// With returns a copy of d with p written at off (whole sectors or not),
// for preparing an initial state.
func (d *Disk) With(p []byte, off int64) (*Disk, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return nil, fmt.Errorf("%d bytes at %d is outside the %d-byte disk", len(p), off, d.size)
	}
	sectors := map[int64][]byte{}
	look := func(n int64) ([]byte, bool) {
		if s, ok := sectors[n]; ok {
			return s, true
		}
		return d.sector(n)
	}
	if err := overlayWrite(d.base, look, func(n int64, s []byte) { sectors[n] = s }, p, off); err != nil {
		return nil, err
	}
	return d.derive(sectors), nil
}

// overlayWrite splits p into sector images (merging partial sectors with
// the current content) and hands each to put.
func overlayWrite(base io.ReaderAt, lookup func(int64) ([]byte, bool), put func(int64, []byte), p []byte, off int64) error {
	for _, s := range splitSectors(p, off) {
		img := make([]byte, SectorSize)
		if s.partial {
			if cur, ok := lookup(s.n); ok {
				copy(img, cur)
			} else if _, err := base.ReadAt(img, s.n*SectorSize); err != nil && err != io.EOF {
				return fmt.Errorf("read base sector %d: %w", s.n, err)
			}
		}
		copy(img[s.in:], s.data)
		put(s.n, img)
	}
	return nil
}

type piece struct {
	n       int64 // sector number
	in      int64 // offset in the sector
	data    []byte
	partial bool
}

func splitSectors(p []byte, off int64) []piece {
	var out []piece
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		in := pos % SectorSize
		chunk := min(SectorSize-in, int64(len(p))-done)
		out = append(out, piece{n: pos / SectorSize, in: in, data: p[done : done+chunk], partial: chunk != SectorSize})
		done += chunk
	}
	return out
}

// changed lists the sector numbers any overlay of d holds in [first, last].
func (d *Disk) changed(first, last int64, into map[int64]bool) {
	for x := d; x != nil; x = x.parent {
		for n := range x.sectors {
			if n >= first && n <= last {
				into[n] = true
			}
		}
	}
}

// Changed lists, in order, the sectors in [off, off+n) whose content may
// differ from the base image.
func (d *Disk) Changed(off, n int64) []int64 {
	set := map[int64]bool{}
	d.changed(off/SectorSize, (off+n-1)/SectorSize, set)
	out := make([]int64, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// EqualRegion reports whether a and b hold the same bytes in [off, off+n).
// Disks over the same base compare only the sectors either one changed;
// others are compared in full.
func EqualRegion(a, b *Disk, off, n int64) (bool, error) {
	if off < 0 || n < 0 || off+n > a.size || off+n > b.size {
		return false, fmt.Errorf("region %d+%d is outside the disks", off, n)
	}
	ba, bb := make([]byte, SectorSize), make([]byte, SectorSize)
	cmp := func(pos, l int64) (bool, error) {
		if _, err := a.ReadAt(ba[:l], pos); err != nil && err != io.EOF {
			return false, err
		}
		if _, err := b.ReadAt(bb[:l], pos); err != nil && err != io.EOF {
			return false, err
		}
		return bytes.Equal(ba[:l], bb[:l]), nil
	}
	if a.base != b.base {
		for pos := off; pos < off+n; pos += SectorSize {
			if eq, err := cmp(pos, min(SectorSize, off+n-pos)); err != nil || !eq {
				return false, err
			}
		}
		return true, nil
	}
	set := map[int64]bool{}
	first, last := off/SectorSize, (off+n-1)/SectorSize
	a.changed(first, last, set)
	b.changed(first, last, set)
	for s := range set {
		lo, hi := max(s*SectorSize, off), min((s+1)*SectorSize, off+n)
		if eq, err := cmp(lo, hi-lo); err != nil || !eq {
			return false, err
		}
	}
	return true, nil
}

// WriteTo copies the whole disk into w (an image file for fsck, say).
func (d *Disk) WriteTo(w io.WriterAt) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.size; off += int64(len(buf)) {
		n := min(int64(len(buf)), d.size-off)
		if _, err := d.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return err
		}
		if bytes.Count(buf[:n], []byte{0}) == int(n) {
			continue // keep a sparse target sparse
		}
		if _, err := w.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("copy disk at %d: %w", off, err)
		}
	}
	return nil
}

// Section is a partition-sized window of a disk or device, with offsets
// relative to its start.
type Section struct {
	dev interface {
		io.ReaderAt
		io.WriterAt
	}
	sync      func() error
	off, size int64
}

// ReadAt reads within the section.
func (s *Section) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.size-off)
	got, err := s.dev.ReadAt(p[:n], s.off+off)
	if err == nil && n < int64(len(p)) {
		err = io.EOF
	}
	return got, err
}

// WriteAt writes within the section.
func (s *Section) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the %d-byte section", len(p), off, s.size)
	}
	return s.dev.WriteAt(p, s.off+off)
}

// Sync flushes the whole device.
func (s *Section) Sync() error { return s.sync() }

// Size is the section's size.
func (s *Section) Size() int64 { return s.size }
