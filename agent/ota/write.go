package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
)

// Disk is the whole boot disk (/dev/mmcblk0, /dev/nvme0n1): the updater
// reads the GPT and the active slot from it and writes the inactive slot.
// Sync must flush the device's write cache (fsync on a block device does).
type Disk interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Write granularity: blocks of writeBlock bytes are compared with what the
// disk holds in compareBlock pieces and only differing pieces are written,
// so an update that changes little writes little (flash wear, time) and a
// resumed write skips what an interrupted one already wrote.
const (
	writeBlock   = 1 << 20
	compareBlock = 64 << 10
)

// slotWriter writes a partition's bytes sequentially from start, skipping
// pieces the disk already holds.
type slotWriter struct {
	disk     Disk
	pos, end int64 // absolute offsets
	buf, cur []byte
	written  int64 // bytes actually written
	done     int64 // bytes accepted
	progress func(done int64)
}

func newSlotWriter(d Disk, start, limit int64, progress func(int64)) *slotWriter {
	return &slotWriter{disk: d, pos: start, end: start + limit, buf: make([]byte, 0, writeBlock), cur: make([]byte, writeBlock), progress: progress}
}

func (w *slotWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeBlock-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(w.buf) == writeBlock {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flush writes the buffered block where it differs from the disk.
func (w *slotWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if w.pos+int64(len(w.buf)) > w.end {
		return fmt.Errorf("partition content runs past the slot's end at byte %d", w.end)
	}
	cur := w.cur[:len(w.buf)]
	if _, err := w.disk.ReadAt(cur, w.pos); err != nil && err != io.EOF {
		return fmt.Errorf("read slot at byte %d: %w", w.pos, err)
	}
	// Coalesce adjacent differing pieces into one write.
	runStart := -1
	emit := func(from, to int) error {
		if _, err := w.disk.WriteAt(w.buf[from:to], w.pos+int64(from)); err != nil {
			return fmt.Errorf("write slot at byte %d: %w", w.pos+int64(from), err)
		}
		w.written += int64(to - from)
		return nil
	}
	for off := 0; off < len(w.buf); off += compareBlock {
		e := min(off+compareBlock, len(w.buf))
		same := bytes.Equal(w.buf[off:e], cur[off:e])
		switch {
		case !same && runStart < 0:
			runStart = off
		case same && runStart >= 0:
			if err := emit(runStart, off); err != nil {
				return err
			}
			runStart = -1
		}
	}
	if runStart >= 0 {
		if err := emit(runStart, len(w.buf)); err != nil {
			return err
		}
	}
	w.pos += int64(len(w.buf))
	w.done += int64(len(w.buf))
	w.buf = w.buf[:0]
	if w.progress != nil {
		w.progress(w.done)
	}
	return nil
}

// writePartition writes release partition name into the disk partition
// target from the fetcher's local and cached chunks.
func writePartition(ctx context.Context, f *release.Fetcher, name string, d Disk, target layout.Partition, progress func(int64)) (written int64, err error) {
	w := newSlotWriter(d, target.Start, target.Size, progress)
	if err := f.WritePartition(ctx, name, w); err != nil {
		return w.written, err
	}
	if err := w.flush(); err != nil {
		return w.written, fmt.Errorf("partition %s: %w", name, err)
	}
	return w.written, nil
}

// dropCache evicts a region of the disk from the page cache when the disk
// is a file descriptor, so the read-back that follows reads the medium
// rather than the copy the write left in memory. Best effort: a disk that
// is not a file is read as it is.
func dropCache(d Disk, off, n int64) {
	if f, ok := d.(interface{ Fd() uintptr }); ok {
		_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
	}
}

// hashRegion is the sha256 of n bytes of the disk at off.
func hashRegion(ctx context.Context, d io.ReaderAt, off, n int64) (release.Hash, error) {
	h := sha256.New()
	buf := make([]byte, writeBlock)
	for done := int64(0); done < n; {
		if err := ctx.Err(); err != nil {
			return release.Hash{}, err
		}
		k := min(int64(len(buf)), n-done)
		if _, err := d.ReadAt(buf[:k], off+done); err != nil && err != io.EOF {
			return release.Hash{}, fmt.Errorf("read back at byte %d: %w", off+done, err)
		}
		h.Write(buf[:k])
		done += k
	}
	return release.Hash(h.Sum(nil)), nil
}

// checkBootable checks what the firmware will check of the written slot:
// its boot partition is a FAT whose cmdline.txt names this disk's system
// partition of the same slot as root. A release built from an image whose
// partition GUIDs differ from this disk's would otherwise pass every hash
// and never boot.
func checkBootable(d io.ReaderAt, plan *layout.Plan, boot, system int) error {
	bp := plan.Part(boot)
	fsys, err := fat.Open(io.NewSectionReader(d, bp.Start, bp.Size), bp.Size)
	if err != nil {
		return fmt.Errorf("written %s is not a readable FAT: %w", bp.Name, err)
	}
	cmdline, err := fsys.ReadFile("cmdline.txt")
	if err != nil {
		return fmt.Errorf("written %s: %w", bp.Name, err)
	}
	want := plan.Part(system).GUID.String()
	for _, arg := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(arg, "root=PARTUUID="); ok {
			if strings.EqualFold(v, want) {
				return nil
			}
			return fmt.Errorf("written %s boots root=PARTUUID=%s but this disk's %s is %s: the release was made from an image with other partition GUIDs than this robot's", bp.Name, v, plan.Part(system).Name, want)
		}
	}
	return fmt.Errorf("written %s: cmdline.txt has no root=PARTUUID=", bp.Name)
}
