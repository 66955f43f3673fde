package pid1

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/image/layout"
)

// blockDisk is a whole disk the kernel knows (sysfs block/<name>), with
// its partitions' device names by partition number (for GPT, the entry's
// slot, which is what layout.Partition.Number holds).
type blockDisk struct {
	Name  string
	Size  int64
	Parts map[int]string
}

// listDisks reads sysRoot/block: every disk with a size, and its
// partitions (the subdirectories with a "partition" file).
func listDisks(sysRoot string) ([]blockDisk, error) {
	dir := filepath.Join(sysRoot, "block")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var disks []blockDisk
	for _, e := range entries {
		sectors, err := readInt(filepath.Join(dir, e.Name(), "size"))
		if err != nil || sectors == 0 {
			continue // gone, or an empty loop device or card reader
		}
		d := blockDisk{Name: e.Name(), Size: sectors * 512, Parts: map[int]string{}}
		subs, _ := os.ReadDir(filepath.Join(dir, e.Name()))
		for _, s := range subs {
			if n, err := readInt(filepath.Join(dir, e.Name(), s.Name(), "partition")); err == nil {
				d.Parts[int(n)] = s.Name()
			}
		}
		disks = append(disks, d)
	}
	slices.SortFunc(disks, func(a, b blockDisk) int { return strings.Compare(a.Name, b.Name) })
	return disks, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// diskView is what one disk showed when searched: its GPT, or why it has
// none readable.
type diskView struct {
	disk blockDisk
	gpt  *layout.Plan
	err  error
}

func (v diskView) String() string {
	s := fmt.Sprintf("%s (%.1f GB)", v.disk.Name, float64(v.disk.Size)/1e9)
	switch {
	case v.err != nil:
		return s + ": " + v.err.Error()
	case len(v.gpt.Partitions) == 0:
		return s + ": GPT without partitions"
	}
	var parts []string
	for _, p := range v.gpt.Partitions {
		parts = append(parts, fmt.Sprintf("%d %s %s", p.Number, p.Name, p.GUID))
	}
	return s + ": GPT " + strings.Join(parts, ", ")
}

// findPartition reads each disk's GPT (devRoot/<disk>) and returns the
// device path of the partition whose GUID is want, with what every disk
// showed (for the console when it is not there).
func findPartition(disks []blockDisk, devRoot string, want layout.GUID) (string, []diskView) {
	var views []diskView
	for _, d := range disks {
		v := diskView{disk: d}
		v.gpt, v.err = readDiskGPT(filepath.Join(devRoot, d.Name), d.Size)
		views = append(views, v)
		if v.err != nil {
			continue
		}
		for _, p := range v.gpt.Partitions {
			if p.GUID != want {
				continue
			}
			name, ok := d.Parts[p.Number]
			if !ok {
				v.err = fmt.Errorf("partition %d is %s but the kernel shows no device for it", p.Number, want)
				views[len(views)-1] = v
				break
			}
			return filepath.Join(devRoot, name), views
		}
	}
	return "", views
}

func readDiskGPT(path string, size int64) (*layout.Plan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := layout.ReadGPT(f, size)
	if errors.Is(err, layout.ErrNotGPT) {
		return nil, errors.New("no GPT")
	}
	return p, err
}

// describe joins what the disks showed for one console line.
func describe(views []diskView) string {
	if len(views) == 0 {
		return "no disks at all"
	}
	var s []string
	for _, v := range views {
		s = append(s, v.String())
	}
	return strings.Join(s, "; ")
}

// mountRoot mounts dev on dir as b asks.
func mountRoot(dev, dir string, b Boot) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var flags uintptr
	mode := "rw"
	if b.ReadOnly {
		flags, mode = unix.MS_RDONLY, "ro"
	}
	err := unix.Mount(dev, dir, b.RootFSType, flags, b.RootFlags)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("mount %s (%s, %s): %w: the kernel has no %s filesystem: is its module in the initramfs's manifest, and did it load (see above)?", dev, b.RootFSType, mode, err, b.RootFSType)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("mount %s (%s, %s, options %q): %w: it holds no %s filesystem, or an option is wrong (rootfstype=, rootflags=)", dev, b.RootFSType, mode, b.RootFlags, err, b.RootFSType)
	}
	return fmt.Errorf("mount %s (%s, %s): %w", dev, b.RootFSType, mode, err)
}

// checkInit makes sure newRoot has an executable file at init, resolving
// symlinks inside newRoot (/sbin/init is usually an absolute link), before
// the initramfs is given up.
func checkInit(newRoot, init string) error {
	dir, err := unix.Open(newRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, strings.TrimPrefix(init, "/"), &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if err != nil {
		return fmt.Errorf("the root filesystem has no %s: %w (wrong partition, a damaged system, or a wrong init=)", init, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return fmt.Errorf("%s in the root filesystem is not an executable file (mode %o)", init, st.Mode)
	}
	return nil
}

// switchRoot makes newRoot (a mount point under root) the root, as
// util-linux's switch_root does, and execs init there with argv and env;
// it returns only if that fails. root must be an initramfs (ramfs or
// tmpfs). It moves root's /dev, /proc, /sys and /run mounts into newRoot
// (unmounting those newRoot has no directory for) and drops /tmp, makes
// newRoot the root, then deletes the initramfs's files to give their RAM
// back, never crossing into another filesystem. logf says what was freed.
func switchRoot(root, newRoot, init string, argv, env []string, logf func(string, ...any)) error {
	var rootFS unix.Statfs_t
	if err := unix.Statfs(root, &rootFS); err != nil {
		return err
	}
	if rootFS.Type != unix.RAMFS_MAGIC && rootFS.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s is not an initramfs (ramfs or tmpfs): refusing to switch a running system's root", root)
	}
	var rootSt, newSt unix.Stat_t
	if err := unix.Stat(root, &rootSt); err != nil {
		return err
	}
	if err := unix.Stat(newRoot, &newSt); err != nil {
		return err
	}
	if newSt.Dev == rootSt.Dev {
		return fmt.Errorf("%s is not a mount point: nothing to switch to", newRoot)
	}
	_ = unix.Unmount(filepath.Join(root, "tmp"), unix.MNT_DETACH)
	for _, m := range []string{"dev", "proc", "sys", "run"} {
		old, target := filepath.Join(root, m), filepath.Join(newRoot, m)
		var st unix.Stat_t
		if unix.Stat(old, &st) != nil || st.Dev == rootSt.Dev {
			continue // not mounted
		}
		if unix.Stat(target, &st) != nil || st.Dev != newSt.Dev {
			logf("switch root: the root filesystem has no /%s: unmounting it", m)
			_ = unix.Unmount(old, unix.MNT_DETACH)
			continue
		}
		if err := unix.Mount(old, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move /%s into the root filesystem: %w", m, err)
		}
	}
	oldRoot, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the initramfs's root: %w", err)
	}
	defer unix.Close(oldRoot)
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, root, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the root filesystem onto %s: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the root filesystem: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	files, kept, bytes, err := removeTree(oldRoot, rootSt.Dev)
	if err != nil {
		logf("switch root: freeing the initramfs: %v (some of its RAM stays in use)", err)
	}
	logf("switch root: freed the initramfs: %d files, %.1f MiB; %d mount points left in it", files, float64(bytes)/(1<<20), kept)
	logf("switch root: exec %s %s", init, strings.Join(argv[1:], " "))
	if err := unix.Exec(init, argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", init, err)
	}
	return nil
}

// removeTree deletes what directory dirfd holds, depth first, staying on
// filesystem dev: a mount point, or a file bind-mounted from elsewhere, is
// left alone, and so are the directories leading to it (kept counts
// those entries). It goes on after a failure and returns the first one.
func removeTree(dirfd int, dev uint64) (files, kept int, bytes int64, err error) {
	names, err := readNames(dirfd)
	if err != nil {
		return 0, 0, 0, err
	}
	var first error
	keep := func(e error) {
		if first == nil {
			first = e
		}
	}
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			keep(err)
			continue
		}
		if st.Dev != dev {
			kept++
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				keep(err)
				continue
			}
			f, k, b, err := removeTree(sub, dev)
			unix.Close(sub)
			files, kept, bytes = files+f, kept+k, bytes+b
			if err != nil {
				keep(err)
			}
			if k > 0 {
				continue // holds a mount point
			}
			if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
				keep(fmt.Errorf("remove directory %s: %w", name, err))
			}
			continue
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			keep(fmt.Errorf("remove %s: %w", name, err))
			continue
		}
		files++
		bytes += st.Size
	}
	return files, kept, bytes, first
}

// readNames lists a directory through a descriptor the caller keeps.
func readNames(dirfd int) ([]string, error) {
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	if _, err := unix.Seek(dup, 0, 0); err != nil {
		return nil, err
	}
	return f.Readdirnames(-1)
}
