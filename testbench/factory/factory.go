// Package factory simulates the factory floor end to end: a bare Raspberry Pi netboots
// from the station (TFTP, as the bootloader does it), its provisioning
// environment runs the real `agent factory run` on fixture /proc and /sys
// trees with simulated servo buses, writing onto a file that stands in for
// its disk, and after the "reboot" the robot starts from that disk: the
// agent's configuration is read out of the installed image (the root
// filesystem's agent.yml, the persistent partition's robot.env, enrollment
// token and CA) and the real agent daemon enrolls with control and connects.
//
// A Board is one such Pi; BuildImage makes the image the station serves.
// The scenarios that drive boards through a station and a control node are
// TestFactory* in package testbench.
package factory

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/daemon"
	"github.com/lekiwi/heartbeat/agent/factory"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/agent/systemd"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/netboot/tftp/tftptest"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/provision/flash"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/pisim"
)

// BuildImage builds a small robot image for profile (a few MiB of
// data in a sparse file) whose agent connects to controlURLs, with its
// .bmap next to it, as `provision image build` would; it returns the
// image's path.
func BuildImage(ctx context.Context, dir, profile string, controlURLs []string) (string, error) {
	p, err := profiles.Load(profile)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	epoch := time.Unix(1715000000, 0)
	boot, root := tree.New(), tree.New()
	if err := boot.AddBytes("cmdline.txt", []byte("console=tty1 rootwait\n"), 0o644, epoch); err != nil {
		return "", err
	}
	if err := root.AddBytes("etc/hostname", []byte("localhost\n"), 0o644, epoch); err != nil {
		return "", err
	}
	// Incompressible-looking data, so the block map has something to carry.
	data := bytes.Repeat([]byte(profile+" robot data "), (2<<20)/(len(profile)+12))
	if err := root.AddBytes("usr/share/lekiwi/data.bin", data, 0o644, epoch); err != nil {
		return "", err
	}
	// The agent binary is only checked to be an arm64 ELF file: the
	// simulated robot runs the agent in-process.
	agent := filepath.Join(dir, "agent-"+profile)
	elf := make([]byte, 64)
	copy(elf, "\x7fELF")
	elf[18] = 183 // EM_AARCH64
	if err := os.WriteFile(agent, elf, 0o755); err != nil {
		return "", err
	}
	img := filepath.Join(dir, profile+".img")
	if err := assemble.Build(ctx, assemble.Inputs{Boot: boot, Root: root, Arch: "arm64", Description: "testbench factory image"},
		assemble.Options{Out: img, Profile: p, AgentPath: agent, AgentUnit: systemd.Unit(), ControlURLs: controlURLs, Version: "testbench-" + profile,
			Epoch: epoch, Sizes: layout.Sizes{Boot: 64 << 20, Persistent: 16 << 20}}); err != nil {
		return "", fmt.Errorf("build the %s image: %w", profile, err)
	}
	f, err := os.Open(img)
	if err != nil {
		return "", err
	}
	defer f.Close()
	m, err := bmap.Scan(ctx, f, bmap.ScanOptions{})
	if err != nil {
		return "", fmt.Errorf("block map of %s: %w", img, err)
	}
	var x bytes.Buffer
	if err := m.WriteXML(&x); err != nil {
		return "", err
	}
	if err := os.WriteFile(img+".bmap", x.Bytes(), 0o644); err != nil {
		return "", err
	}
	return img, nil
}

// Board is one bare board on the factory floor.
type Board struct {
	// Serial is the board's 16-hex-digit serial (/proc/cpuinfo); the
	// station and control know it by its last 8 digits.
	Serial string
	// Fixture is a board tree under agent/factory/testdata (proc/, sys/):
	// copied, with the serial replaced.
	Fixture string
	// Buses are the servo IDs that answer on each serial port, by device
	// name (ttyACM0); a port not listed is silent.
	Buses map[string][]int
	// Dir holds the board's trees and its disk.
	Dir string
	// Log receives the provisioning environment's console and the agent's
	// log; nil discards them.
	Log io.Writer

	mu       sync.Mutex
	rebooted bool
	disk     string // the disk the run installed onto
}

// ShortSerial is the serial as the bootloader, the station and control
// name the board: its last 8 hex digits.
func (b *Board) ShortSerial() string {
	return b.Serial[len(b.Serial)-8:]
}

func (b *Board) log() io.Writer {
	if b.Log == nil {
		return io.Discard
	}
	return b.Log
}

func (b *Board) fixtureRoot() string { return filepath.Join(b.Dir, "board") }

// Netboot fetches the boot files the station serves this board over TFTP
// the way a Pi 5 bootloader does (each file probed with tsize first, then
// read at blksize 1468; config.txt decides the kernel and initramfs) and
// returns cmdline.txt: the kernel command line of the provisioning
// environment.
func (b *Board) Netboot(ctx context.Context, server netip.AddrPort) (string, error) {
	if len(b.Serial) != 16 {
		return "", fmt.Errorf("board serial %q: want 16 hex digits", b.Serial)
	}
	c := tftptest.Client{Server: server, Timeout: 2 * time.Second}
	prefix := b.ShortSerial() + "/"
	get := func(name string) ([]byte, error) {
		data, res, err := c.Fetch(ctx, prefix+name)
		if err != nil {
			return nil, fmt.Errorf("board %s: TFTP %s%s: %w", b.Serial, prefix, name, err)
		}
		if res.BlockSize != 1468 {
			return nil, fmt.Errorf("board %s: TFTP %s%s was sent with blksize %d, the Pi asks for 1468", b.Serial, prefix, name, res.BlockSize)
		}
		return data, nil
	}
	cfgTxt, err := get("config.txt")
	if err != nil {
		return "", err
	}
	bc := pisim.ParseConfigTxt(string(cfgTxt), 5)
	if bc.Kernel == "" || len(bc.Initramfs) == 0 {
		return "", fmt.Errorf("board %s: config.txt names no kernel or initramfs:\n%s", b.Serial, cfgTxt)
	}
	cmdlineName := bc.Cmdline
	if cmdlineName == "" {
		cmdlineName = "cmdline.txt"
	}
	dtb := bc.DeviceTree
	if dtb == "" {
		dtb = "bcm2712-rpi-5-b.dtb"
	}
	var cmdline []byte
	for _, f := range append([]string{dtb, cmdlineName, bc.Kernel}, bc.Initramfs...) {
		data, err := get(f)
		if err != nil {
			return "", err
		}
		if f == cmdlineName {
			cmdline = data
		}
	}
	return string(cmdline), nil
}

var (
	cpuinfoSerial = regexp.MustCompile(`(?m)^(Serial\s*:\s*)[0-9a-fA-F]+$`)
	cpuinfoField  = regexp.MustCompile(`(?m)^(Revision|Model)\s*:\s*(.+)$`)
	partitionName = regexp.MustCompile(`[0-9]p[0-9]+$`) // mmcblk0p1, nvme0n1p1
)

// prepare copies the fixture with the board's serial and the kernel
// command line, and makes the disk files the fixture's block devices name.
func (b *Board) prepare(cmdline string, diskSize int64) error {
	root := b.fixtureRoot()
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	if err := copyTree(b.Fixture, root); err != nil {
		return fmt.Errorf("board %s: copy fixture %s: %w", b.Serial, b.Fixture, err)
	}
	cpuinfo := filepath.Join(root, "proc", "cpuinfo")
	raw, err := os.ReadFile(cpuinfo)
	if err != nil {
		return err
	}
	if !cpuinfoSerial.Match(raw) {
		return fmt.Errorf("fixture %s has no Serial line in proc/cpuinfo", b.Fixture)
	}
	raw = cpuinfoSerial.ReplaceAll(raw, []byte("${1}"+b.Serial))
	files := map[string][]byte{"proc/cpuinfo": raw, "proc/cmdline": []byte(cmdline)}
	if _, err := os.Stat(filepath.Join(root, "proc/device-tree/serial-number")); err == nil {
		files["proc/device-tree/serial-number"] = []byte(b.Serial + "\x00")
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			return err
		}
	}
	// /dev: the fixture's serial ports, and a disk file for each whole
	// block device the fixture's sysfs lists.
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	blocks, err := os.ReadDir(filepath.Join(root, "sys", "class", "block"))
	if err != nil {
		return fmt.Errorf("fixture %s: %w", b.Fixture, err)
	}
	for _, e := range blocks {
		name := e.Name()
		if strings.HasPrefix(name, "zram") || partitionName.MatchString(name) {
			continue
		}
		p := filepath.Join(dev, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(p, diskSize); err != nil {
			return err
		}
	}
	return nil
}

// copyTree copies a directory tree, symbolic links as links (sysfs
// fixtures are made of them).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, out)
		case d.IsDir():
			return os.MkdirAll(out, 0o755)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(out, data, 0o644)
		}
	})
}

// RunOptions tune Provision.
type RunOptions struct {
	// DiskSize is the size of each of the board's disks; it must hold the
	// image.
	DiskSize int64
	// PingTimeout bounds each servo ping; default 3 ms (simulated buses
	// answer at once).
	PingTimeout time.Duration
	// HoldPoll is how often a held board re-probes; default 1 s.
	HoldPoll time.Duration
	// MaxWait caps every wait of the run (the station's RetryAfterSeconds,
	// retry backoffs): a lab compresses time. Default 300 ms.
	MaxWait time.Duration
}

// Provision boots the provisioning environment with cmdline (from Netboot)
// as its kernel command line and runs `agent factory run` until the board
// reboots into its installed system. The station's URL and the board's
// token come from cmdline, as on a real board. A board the station holds
// keeps waiting (and re-probing) until ctx ends.
func (b *Board) Provision(ctx context.Context, cmdline string, o RunOptions) error {
	if o.PingTimeout <= 0 {
		o.PingTimeout = 3 * time.Millisecond
	}
	if o.HoldPoll <= 0 {
		o.HoldPoll = time.Second
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 300 * time.Millisecond
	}
	if err := b.prepare(cmdline, o.DiskSize); err != nil {
		return err
	}
	root := b.fixtureRoot()
	err := factory.Run(ctx, factory.RunOptions{
		Probe: factory.Options{ProcRoot: filepath.Join(root, "proc"), SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev"),
			PingTimeout: o.PingTimeout,
			OpenBus: func(dev string) (servo.Pinger, error) {
				return servo.NewBus(&servo.Sim{IDs: b.Buses[filepath.Base(dev)]}, dev, o.PingTimeout), nil
			}},
		OpenTarget: func(p string, imageSize int64) (flash.Target, int64, error) {
			b.mu.Lock()
			b.disk = p
			b.mu.Unlock()
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				return nil, 0, err
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return nil, 0, err
			}
			return fileTarget{f}, fi.Size(), nil
		},
		Reboot: reboot.Func(func(context.Context, string) error {
			b.mu.Lock()
			b.rebooted = true
			b.mu.Unlock()
			return nil
		}),
		Log:           b.log(),
		HoldPoll:      o.HoldPoll,
		ProgressEvery: 200 * time.Millisecond,
		Backoff:       200 * time.Millisecond,
		Sleep: func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(min(d, o.MaxWait))
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	if err != nil {
		return err
	}
	if !b.Rebooted() {
		return fmt.Errorf("board %s: the factory run ended without rebooting", b.Serial)
	}
	return nil
}

// fileTarget is a regular file as a flash target.
type fileTarget struct{ *os.File }

func (t fileTarget) Name() string { return t.File.Name() }

// Rebooted reports whether the factory run rebooted the board.
func (b *Board) Rebooted() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rebooted
}

// Disk is the disk the factory run installed onto ("" before).
func (b *Board) Disk() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.disk
}

// InstalledSystem is what the robot finds on its disk when it boots.
type InstalledSystem struct {
	Info   *assemble.Info    // the image's metadata (its profile)
	Config config.Config     // the agent's configuration as the daemon loads it
	Files  map[string][]byte // the persistent partition's files, by path
	Root   string            // where the installed files were put
}

// ReadInstalled reads the installed system from the board's disk: the
// image metadata, the root filesystem's agent.yml, and every file of the
// persistent partition (robot.env, the enrollment token, the CA), placed
// under Dir/installed as if mounted there, and loads the agent's
// configuration from them as the daemon would under systemd (robot.env
// is the unit's EnvironmentFile).
func (b *Board) ReadInstalled() (*InstalledSystem, error) {
	disk := b.Disk()
	if disk == "" {
		return nil, fmt.Errorf("board %s has nothing installed", b.Serial)
	}
	f, err := os.Open(disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	plan, err := layout.ReadGPT(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("board %s disk %s: %w", b.Serial, disk, err)
	}
	info, err := customize.ReadInfo(f, plan)
	if err != nil {
		return nil, fmt.Errorf("board %s disk %s: %w", b.Serial, disk, err)
	}
	sys := &InstalledSystem{Info: info, Root: filepath.Join(b.Dir, "installed"), Files: map[string][]byte{}}
	if err := os.RemoveAll(sys.Root); err != nil {
		return nil, err
	}
	readFS := func(part int, want func(string) bool, into func(string, []byte) error) error {
		p := plan.Part(part)
		fsys, err := ext4.Open(io.NewSectionReader(f, p.Start, p.Size), p.Size)
		if err != nil {
			return fmt.Errorf("board %s partition %s: %w", b.Serial, p.Name, err)
		}
		return fsys.Walk(func(name string, in *ext4.Inode) error {
			if in.Type() != ext4.TypeRegular || !want(name) {
				return nil
			}
			r, err := fsys.Reader(in)
			if err != nil {
				return err
			}
			data, err := io.ReadAll(r)
			if err != nil {
				return fmt.Errorf("board %s partition %s: %s: %w", b.Serial, p.Name, name, err)
			}
			return into(name, data)
		})
	}
	put := func(name string, data []byte) error {
		p := filepath.Join(sys.Root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, data, 0o600)
	}
	var agentYML []byte
	if err := readFS(layout.SystemA, func(n string) bool { return n == assemble.AgentConfig }, func(n string, data []byte) error {
		agentYML = data
		return put(n, data)
	}); err != nil {
		return nil, err
	}
	if agentYML == nil {
		return nil, fmt.Errorf("board %s: the installed root filesystem has no %s", b.Serial, assemble.AgentConfig)
	}
	persistent := strings.TrimPrefix(assemble.PersistentDir, "/")
	if err := readFS(layout.Persistent, func(n string) bool { return !strings.HasPrefix(n, "lost+found") }, func(n string, data []byte) error {
		sys.Files[n] = data
		return put(path.Join(persistent, n), data)
	}); err != nil {
		return nil, err
	}
	envFile, ok := sys.Files[assemble.RobotEnvFile]
	if !ok {
		return nil, fmt.Errorf("board %s: the persistent partition has no %s: the identity was not written", b.Serial, assemble.RobotEnvFile)
	}
	// systemd's EnvironmentFile, with the installed system's absolute
	// paths moved under Root.
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(envFile))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if line == "" || strings.HasPrefix(line, "#") || !ok {
			continue
		}
		if strings.HasPrefix(v, "/") {
			v = filepath.Join(sys.Root, v)
		}
		env[k] = v
	}
	robot, err := b.robotTree()
	if err != nil {
		return nil, err
	}
	env[config.EnvStateDir] = filepath.Join(sys.Root, config.DefaultStateDir)
	env[config.EnvProcRoot], env[config.EnvSysRoot], env[config.EnvEtcRoot] = robot.Proc, robot.Sys, robot.Etc
	env[config.EnvDiskPath] = b.Dir
	env[config.EnvFirstReconnectJitter] = "100ms"
	env[config.EnvBackoffBase], env[config.EnvBackoffCap] = "100ms", "1s"
	env[config.EnvTelemetrySampleInterval] = "1s"
	// A booted test robot neither advertises on the host's LAN nor dials
	// the host's system bus.
	env[config.EnvMDNSEnabled], env[config.EnvServicesEnabled] = "false", "false"
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	sys.Config, err = config.Load(config.Sources{File: filepath.Join(sys.Root, assemble.AgentConfig), LookupEnv: lookup})
	if err != nil {
		return nil, fmt.Errorf("board %s: the installed agent configuration: %w", b.Serial, err)
	}
	return sys, nil
}

// robotTree writes the running robot's /proc, /sys and /etc (the
// installed system's, not the provisioning environment's) for the agent's
// collector, with the board's serial, revision and model.
func (b *Board) robotTree() (struct{ Proc, Sys, Etc string }, error) {
	var out struct{ Proc, Sys, Etc string }
	raw, err := os.ReadFile(filepath.Join(b.fixtureRoot(), "proc", "cpuinfo"))
	if err != nil {
		return out, err
	}
	board := lab.Pi5(0, "robot-"+b.ShortSerial())
	board.Serial = b.Serial
	for _, m := range cpuinfoField.FindAllSubmatch(raw, -1) {
		switch string(m[1]) {
		case "Revision":
			board.Revision = strings.TrimSpace(string(m[2]))
		case "Model":
			board.Model = strings.TrimSpace(string(m[2]))
		}
	}
	roots, err := board.WriteTree(filepath.Join(b.Dir, "running"))
	if err != nil {
		return out, err
	}
	out.Proc, out.Sys, out.Etc = roots.Proc, roots.Sys, roots.Etc
	return out, nil
}

// Boot starts the installed robot: the agent daemon with the installed
// configuration, until ctx ends or the returned stop is called. The daemon
// enrolls with the token on the disk first, then connects over mTLS.
func (b *Board) Boot(ctx context.Context, sys *InstalledSystem) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(b.log(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("board", b.Serial)
	go func() { done <- daemon.Run(ctx, sys.Config, "testbench-factory", log) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			cancel()
			err = <-done
			if errors.Is(err, context.Canceled) {
				err = nil
			}
		})
		return err
	}
}

// IdentityDir is where the booted agent keeps its identity.
func (s *InstalledSystem) IdentityDir() string {
	return filepath.Join(s.Config.StateDir, "identity")
}

// RobotType is the robot type the installed image's profile makes.
func (s *InstalledSystem) RobotType() (protocol.RobotType, error) {
	p, err := profiles.Load(s.Info.Profile)
	if err != nil {
		return "", err
	}
	return protocol.RobotType(p.RobotType), nil
}
