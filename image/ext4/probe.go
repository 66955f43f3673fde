package ext4

import (
	"encoding/binary"
	"fmt"
	"io"
)

// HasSuperblock reports whether the partition r starts with an ext2/3/4
// superblock, judged by its magic number alone: two bytes read, nothing
// else checked. It is the agent's quick "was this slot ever written"
// check before it trusts a system partition; use Open to read one. The
// error is for a failed read only.
func HasSuperblock(r io.ReaderAt) (bool, error) {
	var magic [2]byte
	if _, err := r.ReadAt(magic[:], superblockOffset+sMagic); err != nil {
		return false, fmt.Errorf("read the ext4 superblock magic at byte %d: %w", superblockOffset+sMagic, err)
	}
	return binary.LittleEndian.Uint16(magic[:]) == superblockMagic, nil
}
