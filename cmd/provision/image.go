package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/agent/systemd"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/base"
	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/inspect"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

func newImageCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, customise and inspect A/B Raspberry Pi images (no root, no loop devices)",
	}
	c.AddCommand(newImageBuild(lookupEnv), newImageCustomize(), newImageInspect(), newImagePush(lookupEnv), newImagePull(lookupEnv))
	return c
}

func newImageBuild(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		baseSrc, profile, out, agent, version, tmp  string
		firmware                                    string
		controls, keys                              []string
		bootMiB, systemMiB, persistentMiB, imageMiB int64
		insecure                                    bool
	)
	c := &cobra.Command{
		Use:   "build --base SRC --profile lekiwi --agent PATH --out IMG",
		Short: "Build an A/B image from a Raspberry Pi OS image, root filesystem tarball or OCI image",
		Long: `Build writes a GPT image: bootconfig (FAT16, autoboot.txt), boot_a and boot_b
(FAT32), system_a and system_b (ext4), persistent (ext4), all 8 MiB aligned,
with the agent, its configuration and unit, update keys and the profile's
files in the root filesystem and a cloud-init seed on both boot slots.

The agent binary must be built for the robot:
  CGO_ENABLED=0 GOARCH=arm64 go build -o lekiwi-agent ./cmd/agent

Reproducible: the same inputs give the same bytes. Every timestamp in the
image is SOURCE_DATE_EPOCH when it is set, otherwise the newest modification
time of the base's files (and --firmware's); the build prints which.
The image is written to OUT.partial and renamed when complete; OUT.bmap
(the block map for flashing) is written next to it.

Boot files come from the base's boot partition (Raspberry Pi OS images) or,
for a root filesystem tarball or OCI base, from --firmware DIR (for example
the contents of Debian's raspi-firmware package plus the kernel, initramfs
and config.txt); files in DIR replace the base's. Without a cmdline.txt a
default one is used (console on serial0 and tty1, ext4 root, rootwait).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			var epoch time.Time
			if s, ok := lookupEnv("SOURCE_DATE_EPOCH"); ok && s != "" {
				sec, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970 (e.g. $(git log -1 --format=%%ct)), or unset it to use the newest file time in the base: %w", s, err)
				}
				epoch = time.Unix(sec, 0)
			}
			p, err := profiles.Load(profile)
			if err != nil {
				return err
			}
			b, err := base.Open(ctx, baseSrc, base.Options{TempDir: tmp, Insecure: insecure, Progress: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			defer b.Close()
			o := assemble.Options{Out: out, Profile: p, AgentPath: agent, AgentUnit: systemd.Unit(), ControlURLs: controls, UpdateKeys: keys, Version: version,
				Progress: cmd.ErrOrStderr(),
				Sizes:    layout.Sizes{Boot: bootMiB << 20, System: systemMiB << 20, Persistent: persistentMiB << 20, Image: imageMiB << 20},
				Sidecars: func(ctx context.Context, f *os.File) error { return writeSidecars(ctx, f, out) }}
			if firmware != "" {
				if b.Boot, err = withFirmware(b.Boot, firmware); err != nil {
					return err
				}
			}
			in := assemble.Inputs{Boot: b.Boot, Root: b.Root, Arch: b.Arch, Description: b.Description}
			if o.Epoch, err = buildTimestamp(cmd.ErrOrStderr(), epoch, in); err != nil {
				return err
			}
			return assemble.Build(ctx, in, o)
		},
	}
	f := c.Flags()
	f.StringVar(&firmware, "firmware", "", "folder of boot files (firmware, kernel, dtbs, config.txt) for the boot slots; overrides the base's")
	f.StringVar(&baseSrc, "base", "", "Raspberry Pi OS image (.img, .img.xz, .img.zst), root filesystem tarball, or OCI image reference")
	f.StringVar(&profile, "profile", "lekiwi", "robot profile: lekiwi or xle")
	f.StringVar(&out, "out", "", "output image path")
	f.StringVar(&agent, "agent", "", "the arm64 agent binary (CGO_ENABLED=0 GOARCH=arm64 go build ./cmd/agent)")
	f.StringVar(&version, "version", "dev", "image version recorded in /etc/lekiwi/image.json")
	f.StringVar(&tmp, "temp-dir", "", "directory for decompressed bases (default: system temp)")
	f.StringArrayVar(&controls, "control-url", nil, "control server URL for the agent (repeatable)")
	f.StringArrayVar(&keys, "update-key", nil, "trusted update-signing public key file (repeatable) → /etc/lekiwi/update-keys/")
	f.Int64Var(&bootMiB, "boot-size", 256, "size of each boot slot in MiB (multiple of 8)")
	f.Int64Var(&systemMiB, "system-size", 0, "size of each system slot in MiB (default: root content + 30%)")
	f.Int64Var(&persistentMiB, "persistent-size", 64, "size of the persistent partition in MiB (it grows on first boot)")
	f.Int64Var(&imageMiB, "image-size", 0, "whole image size in MiB (persistent fills the rest)")
	f.BoolVar(&insecure, "insecure", false, "allow a plain-HTTP OCI registry for --base")
	_ = c.MarkFlagRequired("base")
	_ = c.MarkFlagRequired("out")
	return c
}

// buildTimestamp is the time stamped on everything in the image: fromEnv
// (SOURCE_DATE_EPOCH) when set, else the newest file time in the inputs,
// so that a build without the variable is reproducible too. It says on w
// which it used.
func buildTimestamp(w io.Writer, fromEnv time.Time, in assemble.Inputs) (time.Time, error) {
	if !fromEnv.IsZero() {
		fmt.Fprintf(w, "timestamp %s (SOURCE_DATE_EPOCH)\n", fromEnv.UTC().Format(time.RFC3339))
		return fromEnv, nil
	}
	t := in.NewestModTime()
	if t.IsZero() {
		return time.Time{}, fmt.Errorf("the base (%s) has no file modification times to derive the image's timestamp from: set SOURCE_DATE_EPOCH (e.g. $(git log -1 --format=%%ct))", in.Description)
	}
	fmt.Fprintf(w, "timestamp %s (newest file time in the base; set SOURCE_DATE_EPOCH to override)\n", t.UTC().Format(time.RFC3339))
	return t, nil
}

// writeSidecars writes IMG.bmap for the image open as f.
func writeSidecars(ctx context.Context, f *os.File, img string) error {
	m, err := bmap.Scan(ctx, f, bmap.ScanOptions{BlockSize: 4096})
	if err != nil {
		return err
	}
	return writeSidecar(bmap.SidecarPath(img), m.WriteXML)
}

func writeSidecar(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

func newImageCustomize() *cobra.Command {
	var r customize.Robot
	var cert, key, ca string
	var refresh bool
	c := &cobra.Command{
		Use:   "customize IMG --robot-id ID (--cert FILE --key FILE | --enroll-token T) [--ca FILE] [--hostname NAME]",
		Short: "Write one robot's identity and cloud-init seed into a built image, in place",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			read := func(p string) []byte {
				if p == "" || err != nil {
					return nil
				}
				var b []byte
				b, err = os.ReadFile(p)
				return b
			}
			r.CertPEM, r.KeyPEM, r.CAPEM = read(cert), read(key), read(ca)
			if err != nil {
				return err
			}
			if err := customize.Apply(args[0], r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "customized %s for robot %s\n", args[0], r.RobotID)
			// The .bmap made by build describes the image before
			// customize: a stale one would fail every verified flash.
			// Refreshing reads all mapped data (seconds for a 4 GiB
			// image), so it is asked for; otherwise it is removed.
			sidecar := bmap.SidecarPath(args[0])
			if _, err := os.Stat(sidecar); err != nil {
				return nil
			}
			if !refresh {
				if err := os.Remove(sidecar); err != nil && !os.IsNotExist(err) {
					return fmt.Errorf("remove the stale %s: %w", sidecar, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed the stale %s (use --refresh-sidecars to rewrite it)\n", sidecar)
				return nil
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			start := time.Now()
			if err := writeSidecars(ctx, f, args[0]); err != nil {
				return fmt.Errorf("customize succeeded but refreshing %s failed (delete it or rerun): %w", sidecar, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "refreshed %s in %s\n", sidecar, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&r.RobotID, "robot-id", "", "robot id (becomes the cloud-init instance id)")
	f.StringVar(&r.Hostname, "hostname", "", "host name (default: the profile's pattern)")
	f.StringVar(&cert, "cert", "", "robot certificate (PEM)")
	f.StringVar(&key, "key", "", "robot private key (PEM)")
	f.StringVar(&ca, "ca", "", "fleet CA certificate (PEM)")
	f.StringVar(&r.EnrollToken, "enroll-token", "", "enrollment token, when the robot enrolls itself on first boot")
	f.BoolVar(&refresh, "refresh-sidecars", false, "rewrite IMG.bmap for the customized image (reads all its data); without it the stale one is removed")
	return c
}

func newImageInspect() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "inspect IMG [--output text|json]",
		Short: "Show an A/B image's layout, PARTUUIDs, active slot, slot versions and key file checksums",
		Long: `Reads a built image (or a card, e.g. /dev/sdb) without mounting it: the GPT
partitions with their filesystems and PARTUUIDs, which slot autoboot.txt boots,
each slot's version, profile and base, whether each slot's cmdline.txt points
root= at its own system partition, and SHA-256 of the files that decide how the
robot boots (cmdline.txt, config.txt, the cloud-init seed, the agent binary and
its configuration). Problems a technician should act on are listed last; the
exit status is 1 when there are any.`,
		Example: "  provision image inspect lekiwi-1.4.0.img\n  provision image inspect /dev/sdb --output json | jq .slots[].info.version",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := inspect.Inspect(args[0])
			if err != nil {
				return err
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			case "text":
				r.WriteText(cmd.OutOrStdout())
			default:
				return fmt.Errorf("--output %q: use text or json", output)
			}
			if r.LayoutProblem != "" {
				return fmt.Errorf("%s is not a Lekiwi A/B image: %s", args[0], r.LayoutProblem)
			}
			if len(r.Problems) > 0 {
				return fmt.Errorf("%s: %d problem(s), listed above", args[0], len(r.Problems))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return c
}

// defaultCmdline is used when neither the base nor --firmware has one.
const defaultCmdline = "console=serial0,115200 console=tty1 rootfstype=ext4 fsck.repair=yes rootwait\n"

// withFirmware overlays the boot files of dir on boot (nil for bases
// without a boot partition).
func withFirmware(boot *tree.Tree, dir string) (*tree.Tree, error) {
	fw, err := base.FirmwareDir(dir)
	if err != nil {
		return nil, err
	}
	if boot == nil {
		boot = tree.New()
	}
	for _, e := range fw.Entries() {
		if e.Path == "." {
			continue
		}
		if err := boot.Add(*e); err != nil {
			return nil, fmt.Errorf("--firmware %s: %w", dir, err)
		}
	}
	if _, ok := boot.Get("cmdline.txt"); !ok {
		if err := boot.AddBytes("cmdline.txt", []byte(defaultCmdline), 0o644, time.Unix(0, 0)); err != nil {
			return nil, err
		}
	}
	return boot, nil
}
