//go:build !linux

package collect

import (
	"fmt"
	"runtime"
)

// Statfs is only implemented on Linux, the only OS robots run; elsewhere
// (a developer's laptop) inject Options.Statfs.
func Statfs(path string) (DiskUsage, error) {
	return DiskUsage{}, fmt.Errorf("statfs %s: not implemented on %s, inject collect.Options.Statfs", path, runtime.GOOS)
}
