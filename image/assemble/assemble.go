// Package assemble builds a Lekiwi A/B disk image from a base (its boot
// and root trees), a profile and the agent: it plans the layout, adds the
// agent, its configuration, unit, update keys, the profile's files, fstab
// and image metadata to the root tree, renders both boot slots and the
// bootconfig partition, and writes everything into a sparse file that is
// renamed into place only when complete. No root, mount or loop device.
package assemble

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lekiwi/heartbeat/cloudinit"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

// Paths inside the image that the agent, customize and inspect agree on.
const (
	AgentBinary    = "usr/bin/lekiwi-agent"
	AgentConfig    = "etc/lekiwi/agent.yml"
	AgentUnit      = "etc/systemd/system/lekiwi-agent.service"
	AgentDropIn    = "etc/systemd/system/lekiwi-agent.service.d/10-robot.conf"
	UpdateKeysDir  = "etc/lekiwi/update-keys"
	ImageInfoPath  = layout.ImageInfoPath
	BootInfoFile   = layout.BootInfoFile // the same metadata on each boot slot
	PersistentDir  = "/var/lib/lekiwi"
	RobotEnvFile   = "robot.env" // in the persistent partition: per-robot agent settings
	SeedFileSize   = 64 << 10    // each cloud-init seed file, padded so customize rewrites it in place
	systemHeadroom = 130         // percent of the root content a default system slot gets
)

// Info is the image's metadata, in /etc/lekiwi/image.json and on each boot
// slot; its shape is image/layout's, which the agent reads.
type Info = layout.ImageInfo

// Inputs are what the image is made of.
type Inputs struct {
	Boot        *tree.Tree // the base's boot partition (firmware, kernel, config.txt, cmdline.txt)
	Root        *tree.Tree // the base's root filesystem; Build adds to it
	Arch        string     // the root filesystem's architecture, "" if unknown
	Description string     // names the base in image.json
}

// NewestModTime is the latest modification time of any file or directory
// in the base's boot and root trees: a timestamp that depends on the
// inputs alone, for builds that are given none (no SOURCE_DATE_EPOCH) and
// must still be reproducible. It is the zero time when no entry has one.
func (in Inputs) NewestModTime() time.Time {
	var newest time.Time
	for _, t := range []*tree.Tree{in.Boot, in.Root} {
		if t == nil {
			continue
		}
		for _, e := range t.Entries() {
			if e.ModTime.After(newest) {
				newest = e.ModTime
			}
		}
	}
	return newest
}

// Options are the build's settings.
type Options struct {
	Out         string // image path; <Out>.partial while writing
	Profile     *profiles.Profile
	AgentPath   string   // the arm64 agent binary
	AgentUnit   string   // its systemd unit file; the agent owns the text (agent/systemd.Unit())
	ControlURLs []string // agent servers
	UpdateKeys  []string // public key files trusted for updates
	Version     string
	Epoch       time.Time // every timestamp in the image: SOURCE_DATE_EPOCH, or Inputs.NewestModTime
	Sizes       layout.Sizes
	// Sidecars, if set, runs on the finished image (still at its temporary
	// path) to write the .bmap next to Out.
	Sidecars func(ctx context.Context, f *os.File) error
	Progress io.Writer
}

func (o Options) progressf(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// Build writes the image. On error nothing is left at Out or Out.partial.
func Build(ctx context.Context, in Inputs, o Options) (err error) {
	p := o.Profile
	if p == nil {
		return errors.New("build: no profile")
	}
	if in.Root == nil || in.Boot == nil {
		return errors.New("build: the base has no boot partition or no root filesystem; use a Raspberry Pi OS image as base")
	}
	if in.Arch != "" && in.Arch != p.Arch {
		return fmt.Errorf("base root filesystem is %s but profile %s needs %s: use an %s base", in.Arch, p.Name, p.Arch, p.Arch)
	}
	if o.Epoch.IsZero() {
		return errors.New("build: no timestamp: set SOURCE_DATE_EPOCH (or Options.Epoch) so the image is reproducible")
	}
	if o.Out == "" {
		return errors.New("build: no output path")
	}
	if o.AgentPath == "" {
		return errors.New("build: no agent binary: build one with `CGO_ENABLED=0 GOARCH=arm64 go build -o lekiwi-agent ./cmd/agent` and pass --agent")
	}
	if o.AgentUnit == "" {
		return errors.New("build: no agent systemd unit: pass the agent's unit file text (agent/systemd.Unit()) in Options.AgentUnit")
	}
	buildAgent := fmt.Sprintf("build it with `CGO_ENABLED=0 GOARCH=%s go build -o lekiwi-agent ./cmd/agent` and pass its path with --agent", p.Arch)
	agentSum, err := fileSHA256(o.AgentPath)
	if err != nil {
		return fmt.Errorf("agent binary: %w: %s", err, buildAgent)
	}
	arch, err := elfArch(o.AgentPath)
	if err != nil {
		return fmt.Errorf("agent binary: %w: %s", err, buildAgent)
	}
	if arch != p.Arch {
		return fmt.Errorf("agent binary %s is built for %s, profile %s needs %s: %s", o.AgentPath, arch, p.Name, p.Arch, buildAgent)
	}
	epoch := o.Epoch.UTC()
	// The disk's identity — partition GUIDs (root=PARTUUID in cmdline.txt,
	// fstab) and filesystem ids — derives from the profile only, never from
	// the version or contents: an over-the-air update writes a later build's
	// boot and system partitions onto a disk made by an earlier one, and
	// the new slot must name partitions that disk has. Contents stay
	// reproducible from the inputs without it.
	seedSum := sha256.Sum256([]byte(strings.Join([]string{"lekiwi-disk-identity-v1", p.Name, p.Arch}, "\x00")))
	seed := seedSum[:]
	info := Info{Version: o.Version, Profile: p.Name, Base: in.Description, BaseArch: in.Arch, Created: epoch.Unix(), AgentSHA256: agentSum, Seed: hex.EncodeToString(seed)}

	sizes := o.Sizes
	root := in.Root
	rootData, rootInodes := ext4.Estimate(root)
	rootData += 32 << 20 // what Build adds (agent, configuration) and slack
	if sizes.System == 0 {
		raw := rootData * systemHeadroom / 100
		sizes.System = max(layout.AlignUp(raw+ext4.Overhead(layout.AlignUp(raw), rootInodes, true)), 128<<20)
	}
	plan, err := layout.New(sizes, seed)
	if err != nil {
		return err
	}
	if need := rootData + ext4.Overhead(sizes.System, rootInodes, true); need > sizes.System && o.Sizes.System != 0 {
		return fmt.Errorf("the root filesystem needs about %d MiB but --system-size is %d MiB: raise --system-size or leave it out to size the slot from the content", need>>20, sizes.System>>20)
	}
	if err := addToRoot(root, o, info, plan, epoch); err != nil {
		return err
	}
	seedFiles, err := buildSeed(p)
	if err != nil {
		return err
	}
	infoJSON, _ := json.MarshalIndent(info, "", "  ")
	infoJSON = append(infoJSON, '\n')

	tmp := o.Out + ".partial"
	// The output's folder is made, as a newcomer's `--out images/x.img`
	// expects; only the folder, never anything else.
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return fmt.Errorf("output folder for %s: %w", o.Out, err)
	}
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(plan.Size); err != nil {
		return fmt.Errorf("size %s: %w", tmp, err)
	}
	if err := layout.WriteGPT(f, plan); err != nil {
		return err
	}
	part := func(n int) (*io.OffsetWriter, int64) {
		pp := plan.Part(n)
		return io.NewOffsetWriter(f, pp.Start), pp.Size
	}
	// bootconfig: autoboot.txt only.
	autoboot, err := layout.Autoboot("a")
	if err != nil {
		return err
	}
	bc := tree.New()
	if err := bc.AddBytes("autoboot.txt", autoboot, 0o644, epoch); err != nil {
		return err
	}
	w, size := part(layout.BootConfig)
	if err := fat.Write(w, size, bc, fat.Params{Type: fat.FAT16, Label: "BOOTCONFIG", VolumeID: layout.DeriveID(seed, "bootconfig"), Time: epoch, HiddenSectors: uint32(plan.Part(layout.BootConfig).Start / 512)}); err != nil {
		return fmt.Errorf("bootconfig partition: %w", err)
	}
	baseCmdline, _ := in.Boot.ReadFile("cmdline.txt")
	baseFstab, _ := root.ReadFile("etc/fstab")
	in.Root = tree.New()
	if baseFstab != nil {
		if err := in.Root.AddBytes("etc/fstab", baseFstab, 0o644, epoch); err != nil {
			return err
		}
	}
	for _, slot := range []struct {
		boot, system int
		label        string
	}{{layout.BootA, layout.SystemA, "BOOT_A"}, {layout.BootB, layout.SystemB, "BOOT_B"}} {
		if err := ctx.Err(); err != nil {
			return err
		}
		bt, err := slotBoot(in.Boot, string(baseCmdline), plan.Part(slot.system).GUID.String(), seedFiles, infoJSON, epoch)
		if err != nil {
			return err
		}
		o.progressf("writing %s (%d MiB)", plan.Part(slot.boot).Name, plan.Part(slot.boot).Size>>20)
		w, size := part(slot.boot)
		if err := fat.Write(w, size, bt, fat.Params{Type: fat.FAT32, Label: slot.label, VolumeID: layout.DeriveID(seed, slot.label), Time: epoch, HiddenSectors: uint32(plan.Part(slot.boot).Start / 512)}); err != nil {
			return fmt.Errorf("%s partition: %w", plan.Part(slot.boot).Name, err)
		}
		fstab, err := Fstab(in.Root, plan, slot.boot, slot.system)
		if err != nil {
			return err
		}
		if err := root.AddBytes("etc/fstab", fstab, 0o644, epoch); err != nil {
			return err
		}
		o.progressf("writing %s (%d MiB)", plan.Part(slot.system).Name, plan.Part(slot.system).Size>>20)
		name := plan.Part(slot.system).Name
		w, size = part(slot.system)
		if err := ext4.Write(w, size, root, ext4.Params{Label: name, UUID: layout.DeriveGUID(seed, "fs:"+name), HashSeed: layout.DeriveGUID(seed, "hash:"+name), Time: epoch, Journal: true, ReservedPercent: 5}); err != nil {
			if errors.Is(err, ext4.ErrNoSpace) {
				return fmt.Errorf("%s: %w (raise --system-size)", name, err)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	w, size = part(layout.Persistent)
	if err := WritePersistent(w, size, seed, epoch, nil, false); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if o.Sidecars != nil {
		if err := o.Sidecars(ctx, f); err != nil {
			return fmt.Errorf("sidecar files: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		f = nil
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	f = nil
	if err := os.Rename(tmp, o.Out); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, o.Out, err)
	}
	o.progressf("wrote %s (%d MiB)", o.Out, plan.Size>>20)
	return nil
}

// PersistentParams are the ext4 parameters of the persistent partition,
// the same at build and customize time.
func PersistentParams(seed []byte, epoch time.Time, inPlace bool) ext4.Params {
	return ext4.Params{Label: "persistent", UUID: layout.DeriveGUID(seed, "fs:persistent"), HashSeed: layout.DeriveGUID(seed, "hash:persistent"), Time: epoch, Journal: true, ZeroMetadata: inPlace}
}

// WritePersistent writes the persistent filesystem: the agent's state
// directory and, when given, per-robot files (paths relative to
// /var/lib/lekiwi).
func WritePersistent(w io.WriterAt, size int64, seed []byte, epoch time.Time, robot map[string]RobotFile, inPlace bool) error {
	t := tree.New()
	if err := t.Add(tree.Entry{Path: ".", Kind: tree.Dir, Mode: 0o755, ModTime: epoch}); err != nil {
		return err
	}
	if err := t.Add(tree.Entry{Path: "agent", Kind: tree.Dir, Mode: 0o700, ModTime: epoch}); err != nil {
		return err
	}
	names := make([]string, 0, len(robot))
	for n := range robot {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rf := robot[n]
		if d := path.Dir(n); d != "." {
			if _, ok := t.Get(d); !ok {
				if err := t.Add(tree.Entry{Path: d, Kind: tree.Dir, Mode: 0o700, ModTime: epoch}); err != nil {
					return err
				}
			}
		}
		if err := t.AddBytes(n, rf.Data, rf.Mode, epoch); err != nil {
			return err
		}
	}
	if err := ext4.Write(w, size, t, PersistentParams(seed, epoch, inPlace)); err != nil {
		return fmt.Errorf("persistent partition: %w", err)
	}
	return nil
}

// RobotFile is one per-robot file for the persistent partition.
type RobotFile struct {
	Data []byte
	Mode os.FileMode
}

func buildSeed(p *profiles.Profile) (map[string][]byte, error) {
	s, err := cloudinit.FromProfile(p, cloudinit.Identity{RobotID: "unprovisioned-" + p.Name, Hostname: p.Name + "-unprovisioned"})
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	return SeedFiles(s)
}

// SeedFiles renders a seed padded to SeedFileSize per file.
func SeedFiles(s cloudinit.Seed) (map[string][]byte, error) {
	files, err := s.Files()
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	out := map[string][]byte{}
	for name, b := range files {
		padded, err := layout.Pad(b, SeedFileSize)
		if err != nil {
			return nil, fmt.Errorf("cloud-init %s: %w", name, err)
		}
		out[name] = padded
	}
	return out, nil
}

func slotBoot(base *tree.Tree, cmdline, rootGUID string, seed map[string][]byte, info []byte, epoch time.Time) (*tree.Tree, error) {
	t := tree.New()
	for _, e := range base.Entries() {
		if err := t.Add(*e); err != nil {
			return nil, fmt.Errorf("boot partition: %w", err)
		}
	}
	// Raspberry Pi OS's first-boot and seed files would fight ours.
	for _, name := range []string{"firstrun.sh", "user-data", "meta-data", "network-config", "autoboot.txt"} {
		t.Remove(name)
	}
	if err := t.AddBytes("cmdline.txt", []byte(layout.Cmdline(cmdline, rootGUID, cloudinit.CmdlineArg)), 0o644, epoch); err != nil {
		return nil, err
	}
	for name, b := range seed {
		if err := t.AddBytes(name, b, 0o644, epoch); err != nil {
			return nil, err
		}
	}
	if err := t.AddBytes(BootInfoFile, info, 0o644, epoch); err != nil {
		return nil, err
	}
	return t, nil
}

type agentYAML struct {
	RobotType         string            `yaml:"robot_type"`
	Servers           []string          `yaml:"servers,omitempty"`
	HeartbeatInterval string            `yaml:"heartbeat_interval,omitempty"`
	TelemetryMin      string            `yaml:"telemetry_min_interval,omitempty"`
	UpdateEnabled     bool              `yaml:"update_enabled,omitempty"`
	Extra             map[string]string `yaml:",inline"`
}

func addToRoot(root *tree.Tree, o Options, info Info, plan *layout.Plan, epoch time.Time) error {
	p := o.Profile
	add := func(name string, data []byte, mode os.FileMode) error {
		return root.AddBytes(name, data, mode, epoch)
	}
	if err := root.AddHostFile(AgentBinary, o.AgentPath, 0o755, epoch); err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	// An image that trusts update keys accepts over-the-air updates; one
	// without keys could verify none, so it does not take update commands.
	cfg := agentYAML{RobotType: string(p.RobotType), Servers: o.ControlURLs, UpdateEnabled: len(o.UpdateKeys) > 0, Extra: p.Agent.Extra}
	if p.Agent.HeartbeatInterval > 0 {
		cfg.HeartbeatInterval = p.Agent.HeartbeatInterval.String()
	}
	if p.Agent.TelemetryMinInterval > 0 {
		cfg.TelemetryMin = p.Agent.TelemetryMinInterval.String()
	}
	y, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("agent configuration: %w", err)
	}
	header := "# Written by `provision image build` for profile " + p.Name + ". Per-robot settings\n# (robot_id, CA, enrollment token) come from " + PersistentDir + "/" + RobotEnvFile + ".\n"
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{AgentConfig, append([]byte(header), y...), 0o644},
		{AgentUnit, []byte(o.AgentUnit), 0o644},
		{AgentDropIn, []byte("# Per-robot settings written by `provision image customize` into the persistent partition.\n[Unit]\nRequiresMountsFor=" + PersistentDir + "\n[Service]\nEnvironmentFile=-" + PersistentDir + "/" + RobotEnvFile + "\n"), 0o644},
	}
	for _, f := range files {
		if err := add(f.name, f.data, f.mode); err != nil {
			return err
		}
	}
	if err := root.Add(tree.Entry{Path: "etc/systemd/system/multi-user.target.wants/lekiwi-agent.service", Kind: tree.Symlink, Link: "/" + AgentUnit, Mode: 0o777, ModTime: epoch}); err != nil {
		return err
	}
	for _, k := range o.UpdateKeys {
		if err := root.AddHostFile(path.Join(UpdateKeysDir, filepath.Base(k)), k, 0o644, epoch); err != nil {
			return fmt.Errorf("update key: %w", err)
		}
	}
	for _, pf := range p.Files {
		if err := add(strings.TrimPrefix(pf.Path, "/"), []byte(pf.Content), pf.Mode); err != nil {
			return fmt.Errorf("profile %s file %s: %w", p.Name, pf.Path, err)
		}
	}
	if err := root.Add(tree.Entry{Path: strings.TrimPrefix(PersistentDir, "/"), Kind: tree.Dir, Mode: 0o755, ModTime: epoch}); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(info, "", "  ")
	return add(ImageInfoPath, append(j, '\n'), 0o644)
}

// Fstab keeps the base's fstab lines except those for /, /boot and
// /boot/firmware, and mounts the slot's root and boot partitions and the
// persistent partition by PARTUUID. It is the one file in which the two
// system slots differ.
func Fstab(root *tree.Tree, plan *layout.Plan, boot, system int) ([]byte, error) {
	var keep []string
	if old, err := root.ReadFile("etc/fstab"); err == nil {
		for _, line := range strings.Split(string(old), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && (f[1] == "/" || f[1] == "/boot" || f[1] == "/boot/firmware" || f[1] == PersistentDir) {
				continue
			}
			if strings.TrimSpace(line) != "" {
				keep = append(keep, line)
			}
		}
	}
	keep = append(keep,
		"# Lekiwi A/B layout (provision image build)",
		"PARTUUID="+plan.Part(system).GUID.String()+"  /               ext4  defaults,noatime  0 1",
		"PARTUUID="+plan.Part(boot).GUID.String()+"  /boot/firmware  vfat  defaults,noatime  0 2",
		"PARTUUID="+plan.Part(layout.Persistent).GUID.String()+"  "+PersistentDir+"  ext4  defaults,noatime  0 2",
	)
	return []byte(strings.Join(keep, "\n") + "\n"), nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// elfArch names the Debian architecture of an ELF executable.
func elfArch(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := make([]byte, 20)
	if _, err := io.ReadFull(f, h); err != nil || string(h[:4]) != "\x7fELF" {
		return "", fmt.Errorf("%s is not an ELF executable", p)
	}
	switch machine := uint16(h[18]) | uint16(h[19])<<8; machine {
	case 183:
		return "arm64", nil
	case 62:
		return "amd64", nil
	case 40:
		return "armhf", nil
	default:
		return fmt.Sprintf("an unknown architecture (ELF machine %d)", machine), nil
	}
}
