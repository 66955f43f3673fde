package blockindex

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const headerSize = len(Magic) + 4 + 4 + 8 + 8

// WriteTo writes the index in the format described in the package comment.
func (ix *Index) WriteTo(w io.Writer) (int64, error) {
	if err := ix.validate(); err != nil {
		return 0, fmt.Errorf("blockindex: refusing to write an invalid index: %w", err)
	}
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, sum), 256<<10)
	var hdr [headerSize]byte
	copy(hdr[:], Magic)
	binary.BigEndian.PutUint32(hdr[8:], FormatVersion)
	binary.BigEndian.PutUint32(hdr[12:], uint32(ix.BlockSize))
	binary.BigEndian.PutUint64(hdr[16:], uint64(ix.ImageSize))
	binary.BigEndian.PutUint64(hdr[24:], uint64(len(ix.Hashes)))
	bw.Write(hdr[:])
	for i := range ix.Hashes {
		bw.Write(ix.Hashes[i][:])
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("blockindex: write index: %w", err)
	}
	n, err := w.Write(sum.Sum(nil))
	if err != nil {
		return 0, fmt.Errorf("blockindex: write index checksum: %w", err)
	}
	return int64(headerSize+32*len(ix.Hashes)) + int64(n), nil
}

// Read reads an index written by WriteTo. It checks the magic, version, header
// consistency, the trailing checksum and that nothing follows it; memory grows with
// the bytes actually read, never with what a header claims.
func Read(r io.Reader) (*Index, error) {
	sum := sha256.New()
	tr := io.TeeReader(r, sum)
	var hdr [headerSize]byte
	if _, err := io.ReadFull(tr, hdr[:]); err != nil {
		return nil, fmt.Errorf("blockindex: read header: %w", eofIsTruncation(err))
	}
	if !bytes.Equal(hdr[:8], []byte(Magic)) {
		return nil, fmt.Errorf("blockindex: bad magic %q, want %q; not a block index", hdr[:8], Magic)
	}
	if v := binary.BigEndian.Uint32(hdr[8:]); v != FormatVersion {
		return nil, fmt.Errorf("blockindex: format version %d not supported (want %d); update the reader or rebuild the index", v, FormatVersion)
	}
	bs := int64(binary.BigEndian.Uint32(hdr[12:]))
	if err := validBlockSize(bs); err != nil {
		return nil, fmt.Errorf("blockindex: header: %w", err)
	}
	size, count := binary.BigEndian.Uint64(hdr[16:]), binary.BigEndian.Uint64(hdr[24:])
	if size > maxImageSize {
		return nil, fmt.Errorf("blockindex: header: image size %d beyond the %d-byte limit", size, int64(maxImageSize))
	}
	if want := blockCount(int64(size), bs); count != uint64(want) {
		return nil, fmt.Errorf("blockindex: header: block count %d does not match a %d-byte image of %d-byte blocks (want %d)", count, size, bs, want)
	}

	ix := &Index{BlockSize: int(bs), ImageSize: int64(size)}
	const batch = 4096 // hashes per read: 128 KiB
	buf := make([]byte, 32*batch)
	for left := int64(count); left > 0; {
		n := min(left, batch)
		if _, err := io.ReadFull(tr, buf[:32*n]); err != nil {
			return nil, fmt.Errorf("blockindex: read block hashes (%d of %d read): %w", int64(count)-left, count, eofIsTruncation(err))
		}
		for i := range n {
			ix.Hashes = append(ix.Hashes, [32]byte(buf[32*i:32*i+32]))
		}
		left -= n
	}

	want := sum.Sum(nil)
	var got [32]byte
	if _, err := io.ReadFull(r, got[:]); err != nil {
		return nil, fmt.Errorf("blockindex: read trailing checksum: %w", eofIsTruncation(err))
	}
	if !bytes.Equal(got[:], want) {
		return nil, fmt.Errorf("blockindex: checksum mismatch (file says %x, content hashes to %x); the index is corrupted, fetch or rebuild it", got, want)
	}
	if n, _ := io.ReadFull(r, got[:1]); n != 0 {
		return nil, errors.New("blockindex: data after the trailing checksum; not a single block index")
	}
	return ix, nil
}

func eofIsTruncation(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("index truncated: %w", io.ErrUnexpectedEOF)
	}
	return err
}
