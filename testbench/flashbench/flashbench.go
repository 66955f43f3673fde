// Package flashbench is the flash benchmark: the real `provision flash`
// binary against `bmaptool copy` and `dd bs=4M conv=fsync` on the same image
// and the same kind of target, in one run, and 4 targets against 1 when the
// targets are the bottleneck (loop devices throttled with the blkio cgroup
// controller, like SD cards in USB readers).
//
// Every figure is wall time of the whole command, fsync (and for flash the
// O_DIRECT read-back) included. The source image is read once before the
// runs so that every tool sees it in the page cache alike.
package flashbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/image/bmap"
)

const MiB = 1 << 20

// Config sizes the benchmark.
type Config struct {
	Provision string // path to the provision binary
	Dir       string // work directory on the disk under test (not tmpfs)
	ImageSize int64  // e.g. 4 GiB
	DataSize  int64  // mapped data in it, e.g. 1 GiB
	// Throttled scenario: image and data sizes, and per-device limits.
	ThrottleImage, ThrottleData int64
	WriteBPS, ReadBPS           int64 // bytes/s per loop device
	Out                         io.Writer
}

// Row is one measured command.
type Row struct {
	Name    string
	Targets int
	Data    int64 // mapped bytes per target
	Elapsed time.Duration
}

// Throughput is mapped data written per second, summed over targets.
func (r Row) Throughput() float64 {
	return float64(int64(r.Targets)*r.Data) / MiB / r.Elapsed.Seconds()
}

// Run runs every scenario and prints a table to cfg.Out.
func Run(ctx context.Context, cfg Config) ([]Row, error) {
	for _, tool := range []string{"bmaptool", "dd", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("flashbench needs %s (apt-get install bmap-tools coreutils mount): %w", tool, err)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	var rows []Row
	img, err := MakeImage(ctx, filepath.Join(cfg.Dir, "bench.img"), cfg.ImageSize, cfg.DataSize)
	if err != nil {
		return nil, err
	}
	defer os.Remove(img)
	defer os.Remove(bmap.SidecarPath(img))
	if err := warm(img); err != nil {
		return nil, err
	}
	targets := func(n int) []string {
		var out []string
		for i := range n {
			p := filepath.Join(cfg.Dir, fmt.Sprintf("target%d.img", i))
			os.Remove(p)
			out = append(out, p)
		}
		return out
	}
	timeIt := func(name string, n int, data int64, cmd *exec.Cmd) error {
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w\n%s", name, err, out.String())
		}
		r := Row{Name: name, Targets: n, Data: data, Elapsed: time.Since(start)}
		rows = append(rows, r)
		fmt.Fprintf(cfg.Out, "%-52s %9v %8.0f MiB/s\n", r.Name, r.Elapsed.Round(time.Millisecond), r.Throughput())
		return nil
	}
	fmt.Fprintf(cfg.Out, "file targets in %s, image %d MiB with %d MiB mapped (throughput = mapped MiB written per second, all targets)\n",
		cfg.Dir, cfg.ImageSize/MiB, cfg.DataSize/MiB)
	steps := []struct {
		name string
		n    int
		cmd  func(t []string) *exec.Cmd
	}{
		{"provision flash, 1 file target, O_DIRECT verify", 1, func(t []string) *exec.Cmd {
			return exec.CommandContext(ctx, cfg.Provision, append([]string{"flash", "--yes", "--force", "--output", "json", "--image", img}, t...)...)
		}},
		{"bmaptool copy (checks source hashes, no read-back)", 1, func(t []string) *exec.Cmd {
			return exec.CommandContext(ctx, "bmaptool", "copy", img, t[0])
		}},
		{"dd bs=4M conv=fsync (whole image)", 1, func(t []string) *exec.Cmd {
			return exec.CommandContext(ctx, "dd", "if="+img, "of="+t[0], "bs=4M", "conv=fsync")
		}},
		{"provision flash, 4 file targets, O_DIRECT verify", 4, func(t []string) *exec.Cmd {
			return exec.CommandContext(ctx, cfg.Provision, append([]string{"flash", "--yes", "--force", "--output", "json", "--image", img}, t...)...)
		}},
	}
	for _, s := range steps {
		t := targets(s.n)
		err := timeIt(s.name, s.n, cfg.DataSize, s.cmd(t))
		for _, p := range t {
			os.Remove(p)
		}
		if err != nil {
			return rows, err
		}
	}
	os.Remove(img)
	os.Remove(bmap.SidecarPath(img))

	if cfg.ThrottleImage == 0 {
		return rows, nil
	}
	thr, err := throttled(ctx, cfg, timeIt)
	rows = append(rows, thr...)
	return rows, err
}

// throttled flashes loop devices limited by a blkio cgroup to 1 and then 4
// at once: the targets are the bottleneck, as SD cards are on a bench.
func throttled(ctx context.Context, cfg Config, timeIt func(string, int, int64, *exec.Cmd) error) ([]Row, error) {
	const cg = "/sys/fs/cgroup/blkio"
	if _, err := os.Stat(filepath.Join(cg, "blkio.throttle.write_bps_device")); err != nil {
		return nil, fmt.Errorf("throttled scenario needs the cgroup v1 blkio controller at %s: %w", cg, err)
	}
	img, err := MakeImage(ctx, filepath.Join(cfg.Dir, "small.img"), cfg.ThrottleImage, cfg.ThrottleData)
	if err != nil {
		return nil, err
	}
	defer os.Remove(img)
	defer os.Remove(bmap.SidecarPath(img))
	if err := warm(img); err != nil {
		return nil, err
	}
	group := filepath.Join(cg, fmt.Sprintf("lekiwi-flashbench-%d", os.Getpid()))
	if err := os.Mkdir(group, 0o755); err != nil {
		return nil, fmt.Errorf("make blkio cgroup: %w", err)
	}
	defer os.Remove(group)
	var devs []string
	defer func() {
		for _, d := range devs {
			exec.Command("losetup", "-d", d).Run()
		}
	}()
	for i := range 4 {
		back := filepath.Join(cfg.Dir, fmt.Sprintf("loop%d.img", i))
		if err := os.Truncate(back, 0); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
		f, err := os.Create(back)
		if err != nil {
			return nil, err
		}
		f.Truncate(cfg.ThrottleImage + 64*MiB)
		f.Close()
		defer os.Remove(back)
		out, err := exec.Command("losetup", "-f", "--show", back).Output()
		if err != nil {
			return nil, fmt.Errorf("losetup: %w", err)
		}
		dev := strings.TrimSpace(string(out))
		devs = append(devs, dev)
		mm, err := majorMinor(dev)
		if err != nil {
			return nil, err
		}
		for file, bps := range map[string]int64{"blkio.throttle.write_bps_device": cfg.WriteBPS, "blkio.throttle.read_bps_device": cfg.ReadBPS} {
			if err := os.WriteFile(filepath.Join(group, file), []byte(mm+" "+strconv.FormatInt(bps, 10)), 0o644); err != nil {
				return nil, fmt.Errorf("throttle %s: %w", dev, err)
			}
		}
	}
	fmt.Fprintf(cfg.Out, "loop devices throttled to %d MiB/s write, %d MiB/s read each; image %d MiB with %d MiB mapped\n",
		cfg.WriteBPS/MiB, cfg.ReadBPS/MiB, cfg.ThrottleImage/MiB, cfg.ThrottleData/MiB)
	var rows []Row
	for _, n := range []int{1, 4} {
		// The shell puts itself into the cgroup, then becomes provision, so
		// every I/O of the flash is throttled.
		script := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec \"$@\"", group)
		args := append([]string{"-c", script, "sh", cfg.Provision, "flash", "--yes", "--force", "--output", "json", "--image", img}, devs[:n]...)
		name := fmt.Sprintf("provision flash, %d throttled loop device(s)", n)
		if err := timeIt(name, n, cfg.ThrottleData, exec.CommandContext(ctx, "sh", args...)); err != nil {
			return rows, err
		}
	}
	return rows, nil
}

func majorMinor(dev string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "dev"))
	if err != nil {
		return "", fmt.Errorf("major:minor of %s: %w", dev, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// MakeImage writes a sparse image of size bytes with data bytes of random
// data in 2 MiB regions spread over it, and its .bmap sidecar.
func MakeImage(ctx context.Context, path string, size, data int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return "", err
	}
	rng := rand.NewChaCha8([32]byte{'f', 'l', 'a', 's', 'h'})
	buf := make([]byte, 2*MiB)
	regions := data / int64(len(buf))
	stride := size / regions
	for i := range regions {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, i*stride+(i%7)*13*4096); err != nil {
			return "", err
		}
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	m, err := bmap.Scan(ctx, f, bmap.ScanOptions{})
	if err != nil {
		return "", err
	}
	var x bytes.Buffer
	if err := m.WriteXML(&x); err != nil {
		return "", err
	}
	return path, os.WriteFile(bmap.SidecarPath(path), x.Bytes(), 0o644)
}

// warm reads the image once so that every tool finds it in the page cache.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}
