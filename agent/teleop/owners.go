package teleop

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ownerCache remembers which processes hold the teleop listening sockets,
// so that the full /proc/*/fd scan runs only when the listeners change
// (the teleop server restarted), not on every poll.
type ownerCache struct {
	listeners []uint64 // sorted listener inodes the pids were found for
	pids      []string
}

// socketsOfListeners returns the socket inodes held by the processes that
// hold any of the listener inodes. Processes the agent may not inspect
// (another user's, without root) are skipped.
func (c *ownerCache) socketsOfListeners(proc string, listeners []uint64) (map[uint64]struct{}, error) {
	key := slices.Clone(listeners)
	slices.Sort(key)
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 || !slices.Equal(key, c.listeners) {
			pids, err := scanOwners(proc, key)
			if err != nil {
				return nil, err
			}
			c.listeners, c.pids = key, pids
		}
		inodes := map[uint64]struct{}{}
		stale := len(c.pids) == 0
		for _, pid := range c.pids {
			n := len(inodes)
			socketInodes(filepath.Join(proc, pid, "fd"), func(ino uint64) { inodes[ino] = struct{}{} })
			if len(inodes) == n {
				stale = true // the process is gone
			}
		}
		if !stale || attempt > 0 {
			return inodes, nil
		}
	}
	return nil, nil // not reached
}

// scanOwners lists the pids holding any of the (sorted) inodes.
func scanOwners(proc string, inodes []uint64) ([]string, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("teleop: list processes in %s: %w", proc, err)
	}
	var pids []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		found := false
		socketInodes(filepath.Join(proc, e.Name(), "fd"), func(ino uint64) {
			if _, ok := slices.BinarySearch(inodes, ino); ok {
				found = true
			}
		})
		if found {
			pids = append(pids, e.Name())
		}
	}
	return pids, nil
}

// socketInodes calls fn for every "socket:[N]" link in an fd directory.
func socketInodes(fdDir string, fn func(uint64)) {
	f, err := os.Open(fdDir)
	if err != nil {
		return
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return
	}
	for _, n := range names {
		link, err := os.Readlink(filepath.Join(fdDir, n))
		if err != nil {
			continue
		}
		s, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
			fn(ino)
		}
	}
}
