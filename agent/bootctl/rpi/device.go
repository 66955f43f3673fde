package rpi

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockDevice is a partition opened for unbuffered, synchronous I/O: every
// WriteAt goes to the device with O_DIRECT|O_SYNC (no page cache copy to
// flush later), in whole logical blocks; reads bypass the page cache too,
// so a read-back sees the medium, not a cached copy.
type BlockDevice struct {
	f     *os.File
	size  int64
	block int64 // logical block size: O_DIRECT's unit of offset and length
	name  string
}

// OpenDevice opens path (normally the bootconfig partition's block
// device) for direct I/O. Files on filesystems without O_DIRECT (tmpfs)
// fall back to O_SYNC, which is as durable but goes through the cache.
func OpenDevice(path string) (*BlockDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT|os.O_SYNC, 0)
	if errors.Is(err, unix.EINVAL) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_SYNC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s for boot control: %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	block := int64(4096) // a safe O_DIRECT unit for regular files
	if bs, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET); err == nil && bs >= 512 && bs <= 65536 && bs&(bs-1) == 0 {
		block = int64(bs)
	}
	return &BlockDevice{f: f, size: size, block: block, name: path}, nil
}

// Size is the device's size in bytes.
func (d *BlockDevice) Size() int64 { return d.size }

// alignedBuf returns n bytes aligned to d.block in memory, as O_DIRECT needs.
func (d *BlockDevice) alignedBuf(n int64) []byte {
	raw := make([]byte, n+d.block)
	shift := (d.block - int64(uintptr(unsafe.Pointer(&raw[0])))%d.block) % d.block
	return raw[shift : shift+n : shift+n]
}

// span is the block-aligned range covering [off, off+n).
func (d *BlockDevice) span(off, n int64) (start, length int64) {
	start = off / d.block * d.block
	end := (off + n + d.block - 1) / d.block * d.block
	return start, end - start
}

// ReadAt reads through an aligned bounce buffer.
func (d *BlockDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= d.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), d.size-off)
	start, length := d.span(off, n)
	buf := d.alignedBuf(length)
	got, err := d.f.ReadAt(buf, start)
	if int64(got) < off-start+n {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("read %s at %d: %w", d.name, off, err)
	}
	copy(p, buf[off-start:off-start+n])
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt writes whole logical blocks; a write that is not block-aligned
// reads the surrounding bytes first (the commit's 512-byte sector on a
// 4096-byte-block device is one block write carrying unchanged
// neighbours).
func (d *BlockDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write %s: %d bytes at %d is outside its %d bytes", d.name, len(p), off, d.size)
	}
	start, length := d.span(off, int64(len(p)))
	buf := d.alignedBuf(length)
	if start != off || length != int64(len(p)) {
		if _, err := d.f.ReadAt(buf, start); err != nil {
			return 0, fmt.Errorf("read %s around %d before writing: %w", d.name, off, err)
		}
	}
	copy(buf[off-start:], p)
	if _, err := d.f.WriteAt(buf, start); err != nil {
		return 0, fmt.Errorf("write %s at %d: %w", d.name, off, err)
	}
	return len(p), nil
}

// Sync flushes the device's write cache (fsync on a block device sends a
// cache flush).
func (d *BlockDevice) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", d.name, err)
	}
	return nil
}

// Close closes the device.
func (d *BlockDevice) Close() error { return d.f.Close() }
