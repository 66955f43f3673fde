package source

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/lekiwi/heartbeat/image/layout"
)

// headSize is how much of a source ReadTable reads and keeps: the MBR,
// the primary GPT and its entries fit many times over.
const headSize = 1 << 20

// Table is the partition table at the start of a source.
type Table struct {
	Scheme     string // "GPT" or "MBR"; "" when there is none
	Partitions int
	// Problem says, when Scheme is "", what the first sectors hold instead.
	Problem string
	size    int64
}

// String describes the source in a line, e.g. "4.0 GiB image, GPT with 6
// partitions" or "100.0 KiB, no partition table (…)".
func (t Table) String() string {
	if t.Scheme == "" {
		return fmt.Sprintf("%s, no partition table (%s)", humanSize(t.size), t.Problem)
	}
	plural := "s"
	if t.Partitions == 1 {
		plural = ""
	}
	return fmt.Sprintf("%s image, %s with %d partition%s", humanSize(t.size), t.Scheme, t.Partitions, plural)
}

// ReadTable reads the partition table at the start of src. It returns src
// wrapped so that the bytes it read stay readable: a streamed source cannot
// go back to them. The error is for a source that cannot be read; a
// source without a partition table is not an error but a Table with an
// empty Scheme.
func ReadTable(src Source) (Source, Table, error) {
	size := src.Size()
	head := make([]byte, min(size, headSize))
	if n, err := src.ReadAt(head, 0); err != nil && !(errors.Is(err, io.EOF) && n == len(head)) {
		return nil, Table{}, fmt.Errorf("read the start of %s: %w", src.Name(), err)
	}
	return &withHead{Source: src, head: head}, tableOf(head, size), nil
}

// tableOf reads the partition table in head, the first bytes of an image
// of size bytes.
func tableOf(head []byte, size int64) Table {
	t := Table{size: size}
	const sector = 512
	if len(head) < 2*sector {
		t.Problem = fmt.Sprintf("only %d bytes, less than an MBR and a GPT header", size)
		return t
	}
	if string(head[sector:sector+8]) == "EFI PART" {
		plan, err := layout.ReadGPT(bytes.NewReader(head), size)
		if err != nil {
			t.Problem = "sector 1 starts a GPT header, but: " + err.Error()
			return t
		}
		t.Scheme, t.Partitions = "GPT", len(plan.Partitions)
		return t
	}
	if head[510] != 0x55 || head[511] != 0xAA {
		t.Problem = "sector 0 has no MBR signature and sector 1 no GPT header"
		return t
	}
	sectors := uint64(size / sector)
	for i := range 4 {
		e := head[446+16*i : 446+16*(i+1)]
		typ, start, n := e[4], uint64(binary.LittleEndian.Uint32(e[8:])), uint64(binary.LittleEndian.Uint32(e[12:]))
		if typ == 0 || n == 0 {
			continue
		}
		// A FAT or NTFS boot sector also ends in 55 AA; its boot code
		// read as entries has bad flags or runs off the disk.
		if e[0] != 0 && e[0] != 0x80 || start == 0 || start+n > sectors {
			t.Problem = fmt.Sprintf("sector 0 ends in the MBR signature, but entry %d is not a partition (a filesystem image rather than a disk image?)", i+1)
			return t
		}
		if typ == 0xEE {
			t.Problem = "sector 0 is a protective MBR, but sector 1 has no GPT header"
			return t
		}
		t.Partitions++
	}
	if t.Partitions == 0 {
		t.Problem = "the MBR lists no partitions"
		return t
	}
	t.Scheme = "MBR"
	return t
}

// withHead is a source whose first bytes were already read: they are
// served from memory, the rest from the source.
type withHead struct {
	Source
	head []byte
}

func (w *withHead) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(w.head)) {
		return w.Source.ReadAt(p, off)
	}
	n := copy(p, w.head[off:])
	if n == len(p) {
		return n, nil
	}
	if int64(len(w.head)) == w.Size() {
		return n, io.EOF
	}
	m, err := w.Source.ReadAt(p[n:], int64(len(w.head)))
	return n + m, err
}

// humanSize formats bytes in binary units.
func humanSize(b int64) string {
	switch {
	case b >= 1<<40:
		return fmt.Sprintf("%.1f TiB", float64(b)/(1<<40))
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
