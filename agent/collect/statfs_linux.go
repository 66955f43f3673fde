package collect

import (
	"fmt"
	"syscall"
)

// Statfs reports the filesystem holding path the way df(1) does: used is
// total blocks minus free blocks (including blocks reserved for root).
func Statfs(path string) (DiskUsage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return DiskUsage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := uint64(st.Bsize)
	return DiskUsage{TotalBytes: st.Blocks * bs, UsedBytes: (st.Blocks - st.Bfree) * bs}, nil
}
