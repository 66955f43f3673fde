package pid1

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// earlyMount is one of the filesystems the init mounts before anything
// else, relative to its root.
type earlyMount struct {
	fstype, dir string
	flags       uintptr
	data        string
}

// earlyMounts are PID 1's mounts, in order (/dev before /dev/pts).
func earlyMounts() []earlyMount {
	const hardened = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return []earlyMount{
		{"proc", "proc", hardened, ""},
		{"sysfs", "sys", hardened, ""},
		{"devtmpfs", "dev", unix.MS_NOSUID, "mode=0755"},
		// gid 5 is tty on Debian and Pi OS, which inherit these mounts.
		{"devpts", "dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,gid=5,ptmxmode=0666"},
		{"tmpfs", "run", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
}

// mountEarly mounts earlyMounts under root, creating their directories,
// and skips those already mounted (a second run, or a kernel that mounted
// devtmpfs itself). It goes on after a failure and returns what it
// mounted and every failure.
func mountEarly(root string) (mounted []string, err error) {
	var errs []error
	for _, m := range earlyMounts() {
		dir := filepath.Join(root, m.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("create /%s: %w", m.dir, err))
			continue
		}
		if isMountPoint(dir) {
			continue
		}
		if err := unix.Mount(m.fstype, dir, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on /%s: %w", m.fstype, m.dir, err))
			continue
		}
		mounted = append(mounted, "/"+m.dir)
	}
	return mounted, errors.Join(errs...)
}

// isMountPoint reports whether dir is the root of a filesystem other than
// its parent's (a bind mount of a directory onto itself is not seen, which
// PID 1 never meets).
func isMountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Lstat(dir, &st) != nil || unix.Lstat(filepath.Join(dir, ".."), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
