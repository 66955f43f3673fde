package piboot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// DiskOptions are the board and the boot for FromDisk.
type DiskOptions struct {
	Board Board
	// Dir receives the loaded kernel and initramfs. Required.
	Dir string
	// UART is the kernel name serial0 becomes; default DefaultUART.
	UART string
}

// FromDisk boots image as the Pi firmware boots its boot device, reading
// it with the Debian tools rather than the project's own readers (the
// point is an independent reading): the GPT's partitions from sfdisk
// --json; partition 1's autoboot.txt, if any, for the boot partition
// ([tryboot] applying when o.Board.Tryboot; without autoboot.txt the
// firmware boots partition 1); that partition's config.txt — tryboot.txt
// on a tryboot whose autoboot.txt lacks tryboot_a_b=1 — through
// ParseConfig; then the kernel (kernel=, else the model's default names
// that exist), the initramfs files (or auto_initramfs's, if present) and
// cmdline.txt (or cmdline=), all with mtools.
func FromDisk(ctx context.Context, image string, o DiskOptions) (Boot, error) {
	b := Boot{Source: Disk, Tryboot: o.Board.Tryboot}
	if o.Dir == "" {
		return b, errors.New("piboot: DiskOptions.Dir is required")
	}
	if o.UART == "" {
		o.UART = DefaultUART
	}
	board, err := o.Board.Revision.Decode()
	if err != nil {
		return b, fmt.Errorf("piboot: board revision %v: %w", o.Board.Revision, err)
	}
	parts, err := partitions(ctx, image)
	if err != nil {
		return b, err
	}
	first, ok := parts[1]
	if !ok {
		return b, fmt.Errorf("piboot: %s has no partition 1, where the firmware looks for autoboot.txt", image)
	}
	fat := fatReader{image: image}
	b.Partition, b.ConfigFile = 1, "config.txt"
	names, err := fat.list(ctx, first)
	if err != nil {
		return b, err
	}
	if names["autoboot.txt"] {
		text, err := fat.read(ctx, first, "autoboot.txt")
		if err != nil {
			return b, err
		}
		a, err := ParseAutoboot(string(text), o.Board.Tryboot)
		if err != nil {
			return b, err
		}
		b.Partition = a.Partition
		if o.Board.Tryboot && !a.TrybootAB {
			b.ConfigFile = "tryboot.txt"
		}
	}
	boot, ok := parts[b.Partition]
	if !ok {
		return b, fmt.Errorf("piboot: autoboot.txt boots partition %d, which %s does not have", b.Partition, image)
	}
	if names, err = fat.list(ctx, boot); err != nil {
		return b, err
	}
	if !names[b.ConfigFile] {
		return b, fmt.Errorf("piboot: partition %d of %s has no %s: the firmware would not boot it", b.Partition, image, b.ConfigFile)
	}
	text, err := fat.read(ctx, boot, b.ConfigFile)
	if err != nil {
		return b, err
	}
	if b.Config, err = ParseConfig(string(text), o.Board); err != nil {
		return b, fmt.Errorf("%w (partition %d, %s)", err, b.Partition, b.ConfigFile)
	}
	c := b.Config

	b.KernelName = c.Kernel
	if b.KernelName == "" {
		for _, k := range defaultKernels(board.Generation()) {
			if names[strings.ToLower(k)] {
				b.KernelName = k
				break
			}
		}
		if b.KernelName == "" {
			return b, fmt.Errorf("piboot: partition %d names no kernel= and has none of the default kernels %v", b.Partition, defaultKernels(board.Generation()))
		}
	}
	b.InitramfsNames = c.Initramfs
	if len(b.InitramfsNames) == 0 && c.AutoInitramfs {
		if name, ok := autoInitramfs(b.KernelName); ok && names[strings.ToLower(name)] {
			b.InitramfsNames = []string{name}
		}
	}
	cmdlineName := c.Cmdline
	if cmdlineName == "" {
		cmdlineName = "cmdline.txt"
	}
	if names[strings.ToLower(cmdlineName)] {
		text, err := fat.read(ctx, boot, cmdlineName)
		if err != nil {
			return b, err
		}
		if b.Cmdline, err = kernelCmdline(string(text), o.UART); err != nil {
			return b, err
		}
	}
	kernel, err := fat.read(ctx, boot, b.KernelName)
	if err != nil {
		return b, err
	}
	var initramfs [][]byte
	for _, name := range b.InitramfsNames {
		data, err := fat.read(ctx, boot, name)
		if err != nil {
			return b, err
		}
		initramfs = append(initramfs, data)
	}
	return b, writeLoaded(o.Dir, &b, kernel, initramfs)
}

// partitions returns each partition's byte offset, by number, from
// sfdisk's reading of the image's partition table.
func partitions(ctx context.Context, image string) (map[int]int64, error) {
	if _, err := exec.LookPath("sfdisk"); err != nil {
		return nil, errors.New("piboot: reading a disk's partitions needs sfdisk (apt-get install fdisk)")
	}
	out, err := exec.CommandContext(ctx, "sfdisk", "--json", image).Output()
	if err != nil {
		return nil, fmt.Errorf("piboot: sfdisk --json %s: %w%s", image, err, stderrOf(err))
	}
	var t struct {
		PartitionTable struct {
			Label      string `json:"label"`
			SectorSize int64  `json:"sectorsize"`
			Partitions []struct {
				Node  string `json:"node"`
				Start int64  `json:"start"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &t); err != nil {
		return nil, fmt.Errorf("piboot: sfdisk --json %s: %w", image, err)
	}
	ss := t.PartitionTable.SectorSize
	if ss == 0 {
		ss = 512
	}
	parts := map[int]int64{}
	for _, p := range t.PartitionTable.Partitions {
		// Nodes are the image's name followed by the number.
		num := strings.TrimPrefix(p.Node, image)
		var n int
		if _, err := fmt.Sscanf(num, "%d", &n); err != nil || n <= 0 {
			return nil, fmt.Errorf("piboot: sfdisk node %q of %s: no partition number", p.Node, image)
		}
		parts[n] = p.Start * ss
	}
	return parts, nil
}

// fatReader reads FAT partitions of an image with mtools at a byte offset.
type fatReader struct{ image string }

func (f fatReader) target(offset int64) string { return fmt.Sprintf("%s@@%d", f.image, offset) }

// mtools refuses file systems whose geometry looks odd to it unless told
// to skip the check; mkfs.fat and image/fat's geometries vary.
func (f fatReader) run(ctx context.Context, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(args[0]); err != nil {
		return nil, fmt.Errorf("piboot: reading FAT partitions needs %s (apt-get install mtools)", args[0])
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("piboot: %s: %w%s", strings.Join(args, " "), err, stderrOf(err))
	}
	return out, nil
}

// list returns the lower-cased names in the partition's root directory
// (FAT names compare without case).
func (f fatReader) list(ctx context.Context, offset int64) (map[string]bool, error) {
	out, err := f.run(ctx, "mdir", "-b", "-i", f.target(offset), "::/")
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(l), "::/"); ok && name != "" {
			names[strings.ToLower(name)] = true
		}
	}
	return names, nil
}

// read returns a file of the partition's root directory.
func (f fatReader) read(ctx context.Context, offset int64, name string) ([]byte, error) {
	if strings.ContainsAny(name, "/\\") {
		return nil, fmt.Errorf("piboot: %q: the lab reads boot files from the partition's root only", name)
	}
	return f.run(ctx, "mcopy", "-n", "-i", f.target(offset), "::/"+name, "-")
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(bytes.TrimSpace(ee.Stderr)) > 0 {
		return ": " + string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}
