package flash

// Block-device targets (and O_DIRECT file targets for the benchmark).
//
// Why O_DIRECT: verification must read back what the device stores. A buffered
// read-back is served from the page cache the writes just filled and proves
// nothing about the card; with O_DIRECT every read goes to the device. Writes go
// direct too, so flashing 4 cards does not push gigabytes of dirty pages through
// the cache (and the final sync does not stall for minutes).
//
// Holes on a used card: Flash never writes the image's holes. With a block map
// that is right (unmapped blocks are free space; bmaptool's contract). Without
// one, every all-zero 4 KiB block is a hole, and some of those must really read
// as zeros (an empty FAT, a zeroed inode table), but a used card still holds
// its old data there. BlockTarget.ZeroFill zeroes the image's range of the
// device before flashing; call it when the source has no block map. We zero the
// whole range first rather than only the holes because the target cannot tell
// which ranges are holes until the engine has finished the data, and telling it
// would mean guessing the engine's phases from its calls. The cost is small or
// nothing: the kernel uses the device's write-zeroes/unmap where it has one
// (NVMe, loop, many SSDs: near instant), and only where it has none (most USB
// card readers) does it write zeros — one pass over the image, which is what
// dd would have cost anyway; ship a .bmap with the image to avoid it.
//
// The backup GPT: the engine writes the image's bytes, so a card larger than
// the image ends up with the image's backup GPT at the image's end, not at the
// card's end. That is a valid disk: the primary GPT points at where its backup
// really is, Linux and the Pi firmware boot from it (the kernel only logs
// "Alternate GPT header not at the end of the disk"), and the first-boot resize
// of our images (growpart/sgdisk -e, or systemd-repart) moves the backup to the
// end while growing the root partition. We do not relocate it: that means
// rewriting the held-back header bytes with new LBAs and CRCs, i.e. the engine
// writing bytes that are not the image's, and verification of those regions
// against the source would then have to know about it. What we do instead, at
// open, is zero the card's own last MiB when the card is larger than the image,
// so a backup GPT left by an earlier, larger image cannot be "restored" by
// gdisk/parted over the new partition table.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockOptions tune OpenBlockTarget.
type BlockOptions struct {
	// Buffered turns O_DIRECT off (for a driver that misbehaves with it). The
	// read-back then still comes from the device: Sync and every ReadAt drop
	// the cached pages first.
	Buffered bool
}

// BlockInfo describes an open BlockTarget.
type BlockInfo struct {
	Path      string
	Device    bool  // a block device; false for an OpenFileTargetDirect file
	Size      int64 // bytes of the device (for a file: the image size)
	ImageSize int64
	// Align is the offset and length granularity of direct I/O: the device's
	// logical block size (BLKSSZGET), or the file system's direct-I/O alignment.
	Align int
	// Direct is true when writes and reads use O_DIRECT.
	Direct bool
	// BufferedReason says why Direct is false.
	BufferedReason string
	// Bounced counts bytes that went through the aligned bounce buffer because
	// the caller's buffer or offset was not aligned (ideally only the image's end).
	Bounced int64
}

// BlockTarget is a whole-disk block device (OpenBlockTarget) or a regular file
// (OpenFileTargetDirect) written and read back with O_DIRECT. Like every Target
// it is used from one goroutine; Info and Name may be called from any.
type BlockTarget struct {
	f *os.File
	// tailFile is a buffered descriptor of the same file for the bytes past the
	// last whole aligned block of a file target, which O_DIRECT cannot write
	// without growing the file; nil for devices (whose size is a multiple of the
	// logical block size).
	tailFile *os.File
	info     BlockInfo // immutable after open; Direct, BufferedReason and Bounced live below
	direct   atomic.Bool
	reason   atomic.Pointer[string]
	bounced  atomic.Int64
	// align is the I/O granularity, memAlign the buffer address alignment.
	align, memAlign int64
	// directLimit is the end of the last whole aligned block within Size.
	directLimit int64
	bounce      []byte // memAlign-aligned, a multiple of align; part of bounceMap
	bounceMap   []byte // the mmap'd memory, for Munmap
}

const bounceSize = 1 << 20

// OpenBlockTarget opens the whole-disk block device at path for flashing an
// image of imageSize bytes. It opens with O_EXCL, which the kernel refuses
// while the device or one of its partitions is mounted or otherwise held
// (device mapper, md, another flasher), and refuses an image larger than the
// device. If the device is larger than the image it zeroes the device's last
// MiB (see the package notes on the backup GPT). The caller runs the safety
// checks of package device first.
func OpenBlockTarget(path string, imageSize int64, opts BlockOptions) (*BlockTarget, error) {
	if imageSize <= 0 {
		return nil, fmt.Errorf("flash: target %s: image size %d must be positive", path, imageSize)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("flash: target %s: %w", path, err)
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return nil, fmt.Errorf("flash: target %s is not a block device (for image files use a file target)", path)
	}
	flags := os.O_RDWR | unix.O_EXCL | unix.O_CLOEXEC
	t := &BlockTarget{info: BlockInfo{Path: path, Device: true, ImageSize: imageSize}}
	f, reason, err := openMaybeDirect(path, flags, 0, opts.Buffered)
	if err != nil {
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("flash: target %s is in use (mounted, or held by another program, device mapper or RAID): unmount it and try again: %w", path, err)
		case errors.Is(err, unix.EROFS), errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("flash: target %s cannot be opened for writing (write-protected card? check its lock switch; or run as root): %w", path, err)
		}
		return nil, fmt.Errorf("flash: open target %s: %w", path, err)
	}
	t.f = f
	fail := func(err error) (*BlockTarget, error) {
		t.Close()
		return nil, err
	}
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return fail(fmt.Errorf("flash: size of %s (BLKGETSIZE64): %w", path, err))
	}
	lbs, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		return fail(fmt.Errorf("flash: logical block size of %s (BLKSSZGET): %w", path, err))
	}
	if lbs <= 0 || lbs&(lbs-1) != 0 || lbs > bounceSize {
		return fail(fmt.Errorf("flash: %s reports a logical block size of %d bytes, which is not a power of two up to 1 MiB", path, lbs))
	}
	t.info.Size = int64(size)
	if imageSize > t.info.Size {
		return fail(fmt.Errorf("flash: the image is %d bytes (%.2f GB) but %s holds only %d bytes (%.2f GB): use a larger card",
			imageSize, float64(imageSize)/1e9, path, t.info.Size, float64(t.info.Size)/1e9))
	}
	// Page alignment for buffers satisfies any device's DMA alignment.
	if err := t.setup(int64(lbs), max(int64(lbs), 4096), reason); err != nil {
		return fail(err)
	}
	if t.info.Size > imageSize {
		start := max(imageSize, t.info.Size-HeaderRegion)
		if err := t.zeroRange(start, t.info.Size); err != nil {
			return fail(fmt.Errorf("flash: zero the last MiB of %s (where an old backup GPT would be): %w", path, err))
		}
	}
	return t, nil
}

// OpenFileTargetDirect creates (or truncates) the regular file at path, sizes it
// to size bytes (unwritten ranges read as zeros) and writes and reads it with
// O_DIRECT when its file system supports that (ext4, xfs, btrfs do); otherwise it
// falls back to buffered I/O, says so in Info().BufferedReason, and drops the
// file's cached pages on Sync so the read-back still comes from the disk.
func OpenFileTargetDirect(path string, size int64) (*BlockTarget, error) {
	if size <= 0 {
		return nil, fmt.Errorf("flash: target %s: size %d must be positive", path, size)
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("flash: target %s is not a regular file (use a block-device target for devices)", path)
	}
	f, reason, err := openMaybeDirect(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o644, false)
	if err != nil {
		return nil, fmt.Errorf("flash: open target %s: %w", path, err)
	}
	t := &BlockTarget{f: f, info: BlockInfo{Path: path, Size: size, ImageSize: size}}
	if err := f.Truncate(size); err != nil {
		t.Close()
		return nil, fmt.Errorf("flash: size target %s to %d bytes: %w", path, size, err)
	}
	align, memAlign := int64(4096), int64(4096)
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil &&
		stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align > 0 {
		align = int64(stx.Dio_offset_align)
		memAlign = max(int64(stx.Dio_mem_align), 4096)
	}
	if align&(align-1) != 0 || align > bounceSize {
		align = 4096
	}
	if err := t.setup(align, memAlign, reason); err != nil {
		t.Close()
		return nil, err
	}
	if t.direct.Load() && t.directLimit < size {
		if t.tailFile, err = os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			t.Close()
			return nil, fmt.Errorf("flash: open target %s for its last partial block: %w", path, err)
		}
	}
	return t, nil
}

// openMaybeDirect opens path with O_DIRECT unless buffered, and without it when
// the file system refuses O_DIRECT (EINVAL); reason explains a buffered result.
func openMaybeDirect(path string, flags int, perm os.FileMode, buffered bool) (f *os.File, reason string, err error) {
	if buffered {
		f, err = os.OpenFile(path, flags, perm)
		return f, "O_DIRECT turned off by option", err
	}
	f, err = os.OpenFile(path, flags|unix.O_DIRECT, perm)
	if errors.Is(err, unix.EINVAL) {
		f, err = os.OpenFile(path, flags, perm)
		return f, "the file system does not support O_DIRECT (EINVAL); using buffered I/O and dropping cached pages before read-back", err
	}
	return f, "", err
}

func (t *BlockTarget) setup(align, memAlign int64, reason string) error {
	t.align, t.memAlign = align, memAlign
	t.info.Align = int(align)
	t.reason.Store(&reason)
	t.direct.Store(reason == "")
	t.directLimit = t.info.Size / align * align
	// mmap returns page-aligned memory; memAlign beyond a page is not needed
	// by any device we know, but is honoured by over-allocating.
	n := bounceSize + int(memAlign)
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("flash: allocate an aligned buffer for %s: %w", t.info.Path, err)
	}
	skip := int64(0)
	if r := addr(m) % memAlign; r != 0 {
		skip = memAlign - r
	}
	t.bounce = m[skip : skip+bounceSize : skip+bounceSize]
	t.bounceMap = m
	return nil
}

func addr(b []byte) int64 { return int64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

// Info reports how the target is opened; safe to call while flashing.
func (t *BlockTarget) Info() BlockInfo {
	i := t.info
	i.Direct = t.direct.Load()
	i.Bounced = t.bounced.Load()
	if r := t.reason.Load(); r != nil {
		i.BufferedReason = *r
	}
	return i
}

func (t *BlockTarget) Name() string { return t.info.Path }

// Close closes the device or file; it does not sync.
func (t *BlockTarget) Close() error {
	var err error
	if t.f != nil {
		err = t.f.Close()
	}
	if t.tailFile != nil {
		t.tailFile.Close()
	}
	if t.bounceMap != nil {
		unix.Munmap(t.bounceMap)
		t.bounceMap, t.bounce = nil, nil
	}
	return err
}

// WriteAt writes p at off. With O_DIRECT, aligned parts of p go straight to the
// device and the rest through the aligned bounce buffer, reading partial blocks
// first so their other bytes are kept.
func (t *BlockTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > t.info.Size {
		return 0, fmt.Errorf("flash: write of %d bytes at offset %d is outside %s (%d bytes)", len(p), off, t.info.Path, t.info.Size)
	}
	done := 0
	for done < len(p) {
		n, err := t.writeStep(p[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (t *BlockTarget) writeStep(p []byte, off int64) (int, error) {
	if !t.direct.Load() {
		return t.f.WriteAt(p, off)
	}
	if off >= t.directLimit {
		// A file's last partial block: O_DIRECT would grow the file to a
		// whole block, so these few bytes are written buffered.
		return t.tailFile.WriteAt(p, off)
	}
	p = p[:min(int64(len(p)), t.directLimit-off)]
	if n := t.alignedPrefix(p, off); n > 0 {
		k, err := t.f.WriteAt(p[:n], off)
		if err != nil && k == 0 && errors.Is(err, unix.EINVAL) {
			if ferr := t.fallBack("a direct write was refused (EINVAL)"); ferr != nil {
				return 0, ferr
			}
			return t.f.WriteAt(p, off)
		}
		return k, err
	}
	a0 := off / t.align * t.align
	end := off + min(int64(len(p)), int64(len(t.bounce))-(off-a0))
	a1 := roundUp(end, t.align)
	buf := t.bounce[:a1-a0]
	if off != a0 {
		if err := t.readDirect(buf[:t.align], a0); err != nil {
			return 0, fmt.Errorf("read the block at %d to update part of it: %w", a0, err)
		}
	}
	if end != a1 && (off == a0 || a1-t.align != a0) {
		if err := t.readDirect(buf[a1-a0-t.align:], a1-t.align); err != nil {
			return 0, fmt.Errorf("read the block at %d to update part of it: %w", a1-t.align, err)
		}
	}
	n := copy(buf[off-a0:], p[:end-off])
	if _, err := t.f.WriteAt(buf, a0); err != nil {
		return 0, err
	}
	t.bounced.Add(int64(n))
	return n, nil
}

// alignedPrefix is how many bytes from the start of p can go to the device
// directly: p and off aligned, whole blocks only.
func (t *BlockTarget) alignedPrefix(p []byte, off int64) int64 {
	if off%t.align != 0 || len(p) == 0 || addr(p)%t.memAlign != 0 {
		return 0
	}
	return int64(len(p)) / t.align * t.align
}

// readDirect fills the aligned buf from the aligned offset off.
func (t *BlockTarget) readDirect(buf []byte, off int64) error {
	n, err := t.f.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// fallBack turns O_DIRECT off on the open descriptor.
func (t *BlockTarget) fallBack(why string) error {
	fd := int(t.f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_DIRECT)
	}
	if err != nil {
		return fmt.Errorf("flash: %s: %s, and turning O_DIRECT off failed: %w", t.info.Path, why, err)
	}
	reason := why + "; using buffered I/O and dropping cached pages before read-back"
	t.reason.Store(&reason)
	t.direct.Store(false)
	return nil
}

// ReadAt reads p from off. With O_DIRECT it never reads the page cache, so a
// verification sees what the device holds.
func (t *BlockTarget) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("flash: read at negative offset %d of %s", off, t.info.Path)
	}
	if off >= t.info.Size {
		return 0, io.EOF
	}
	var eof error
	if rest := t.info.Size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	done := 0
	for done < len(p) {
		n, err := t.readStep(p[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, io.ErrUnexpectedEOF
		}
	}
	return done, eof
}

func (t *BlockTarget) readStep(p []byte, off int64) (int, error) {
	if !t.direct.Load() {
		// Drop whatever the page cache holds for the range (someone, udev's
		// probing for one, may have read it since Sync), so the read
		// comes from the device. Dirty pages are kept, but Sync ran.
		if err := unix.Fadvise(int(t.f.Fd()), off, int64(len(p)), unix.FADV_DONTNEED); err != nil {
			return 0, fmt.Errorf("drop cached pages before reading back: %w", err)
		}
		n, err := t.f.ReadAt(p, off)
		if errors.Is(err, io.EOF) && n == len(p) {
			err = nil
		}
		return n, err
	}
	if off >= t.directLimit {
		// A file's last partial block: a direct read of the whole block
		// stops at the end of the file.
		buf := t.bounce[:t.align]
		n, err := t.f.ReadAt(buf, t.directLimit)
		want := int(off-t.directLimit) + len(p)
		if n < want {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		t.bounced.Add(int64(len(p)))
		return copy(p, buf[off-t.directLimit:]), nil
	}
	p = p[:min(int64(len(p)), t.directLimit-off)]
	if n := t.alignedPrefix(p, off); n > 0 {
		if err := t.readDirect(p[:n], off); err != nil {
			return 0, err
		}
		return int(n), nil
	}
	a0 := off / t.align * t.align
	end := off + min(int64(len(p)), int64(len(t.bounce))-(off-a0))
	a1 := roundUp(end, t.align)
	buf := t.bounce[:a1-a0]
	if err := t.readDirect(buf, a0); err != nil {
		return 0, err
	}
	n := copy(p[:end-off], buf[off-a0:])
	t.bounced.Add(int64(n))
	return n, nil
}

// Sync makes the written data durable: fdatasync, which on a block device also
// flushes the device's write cache. Without O_DIRECT it then drops the cached
// pages, so that the read-back comes from the device and not from memory.
func (t *BlockTarget) Sync() error {
	fd := int(t.f.Fd())
	if err := unix.Fdatasync(fd); err != nil {
		return fmt.Errorf("flash: sync %s: %w", t.info.Path, err)
	}
	if !t.direct.Load() {
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			return fmt.Errorf("flash: drop cached pages of %s before read-back: %w", t.info.Path, err)
		}
	}
	return nil
}

// ZeroFill makes the image's range of the target read as zeros; call it before
// Flash when the source has no block map (see the notes at the top of this
// file). On a device it uses BLKZEROOUT, which the kernel turns into the
// device's write-zeroes or unmap where it has one and into written zeros where
// it has not; on a file it punches a hole. progress, if set, is called after
// each step with bytes done of total.
func (t *BlockTarget) ZeroFill(ctx context.Context, progress func(done, total int64)) error {
	total := t.info.ImageSize
	if t.info.Device {
		total = roundUp(total, t.align) // a device's size is a multiple of align
	}
	const step = 256 << 20
	for off := int64(0); off < total; off += step {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(step, total-off)
		var err error
		if t.info.Device {
			err = ioctlRange(t.f.Fd(), unix.BLKZEROOUT, off, n)
		} else {
			err = unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
			if errors.Is(err, unix.EOPNOTSUPP) {
				err = t.writeZeros(off, off+n)
			}
		}
		if err != nil {
			return fmt.Errorf("flash: zero bytes %d–%d of %s: %w", off, off+n-1, t.info.Path, err)
		}
		if progress != nil {
			progress(off+n, total)
		}
	}
	return nil
}

// Discard tells the device that all its blocks are unused (BLKDISCARD; a hole
// punched through a file target): good for a card's wear levelling and write
// speed before a full rewrite. What discarded blocks read as is up to the
// device, so it does not replace ZeroFill. A device without discard support
// (most USB card readers) returns an error wrapping errors.ErrUnsupported,
// which the caller may ignore.
func (t *BlockTarget) Discard(ctx context.Context) error {
	const step = 1 << 30
	for off := int64(0); off < t.info.Size; off += step {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(step, t.info.Size-off)
		var err error
		if t.info.Device {
			err = ioctlRange(t.f.Fd(), unix.BLKDISCARD, off, n)
		} else {
			err = unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		}
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("flash: %s does not support discard: %w", t.info.Path, errors.ErrUnsupported)
		}
		if err != nil {
			return fmt.Errorf("flash: discard bytes %d–%d of %s: %w", off, off+n-1, t.info.Path, err)
		}
	}
	// Discarded blocks may read back as their old contents: keep an earlier
	// image's backup GPT from reappearing.
	if t.info.Device && t.info.Size > t.info.ImageSize {
		if err := t.zeroRange(max(t.info.ImageSize, t.info.Size-HeaderRegion), t.info.Size); err != nil {
			return fmt.Errorf("flash: zero the last MiB of %s after discarding: %w", t.info.Path, err)
		}
	}
	return nil
}

// zeroRange writes zeros to [off, end), at most 1 MiB.
func (t *BlockTarget) zeroRange(off, end int64) error {
	if _, err := t.WriteAt(make([]byte, end-off), off); err != nil {
		return err
	}
	return t.Sync()
}

// writeZeros writes zeros to [off, end) in 1 MiB pieces.
func (t *BlockTarget) writeZeros(off, end int64) error {
	zeros := make([]byte, min(bounceSize, end-off))
	for off < end {
		n := min(int64(len(zeros)), end-off)
		if _, err := t.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// ioctlRange issues a block ioctl that takes a {start, length} pair in bytes.
func ioctlRange(fd uintptr, req uint, off, n int64) error {
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&r))); e != 0 {
		return e
	}
	return nil
}

func roundUp(n, align int64) int64 { return (n + align - 1) / align * align }
