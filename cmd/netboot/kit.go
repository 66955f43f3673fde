package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/image/aptfetch"
	"github.com/lekiwi/heartbeat/netboot/kit"
)

func newKit() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kit",
		Short: "Build the station's boot directory (firmware, kernel, provisioning initramfs)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newKitBuild())
	return cmd
}

type kitFlags struct {
	debs, modules       []string
	pios, agent, out    string
	cacheDir, tempDir   string
	fetch, force, quiet bool
}

func newKitBuild() *cobra.Command {
	var f kitFlags
	var groups strings.Builder
	for _, g := range kit.ModuleGroups() {
		fmt.Fprintf(&groups, "  %s:\n    %s\n", g.Purpose, strings.Join(g.Modules, " "))
	}
	cmd := &cobra.Command{
		Use:   "build --out DIR (--fetch | --deb KERNEL.deb --deb FIRMWARE.deb | --pios IMAGE)",
		Short: "Write a complete --boot-dir for netboot serve",
		Long: `Write the directory netboot serve --boot-dir serves: the Raspberry Pi boot
firmware (start4.elf, fixup4.dat, bootcode.bin, ...), device trees and
overlays, the provisioning kernel (vmlinuz) and an initramfs made for it
(initrd.img) that runs the agent as /init with the kernel modules the
factory flow needs, and kit.json listing every file with its sha256, the
sources, the kernel release and the modules.

Sources, one kind per kit:

  --fetch       download Debian bookworm's current arm64 kernel
                (linux-image-arm64's package) and raspi-firmware with a
                private apt (its own lists and cache under --cache-dir; the
                host's apt configuration is not used). Needs apt-get and
                the debian-archive-keyring.
  --deb FILE    the same from .deb files you have: the versioned
                linux-image-<release>-arm64 package (not the
                linux-image-arm64 metapackage) and raspi-firmware; more
                --deb files (e.g. firmware-realtek) add their /lib/firmware.
  --pios IMAGE  a 64-bit Raspberry Pi OS image (.img, .img.xz): its boot
                partition's firmware, device trees, overlays and kernels,
                its root partition's modules and firmware. kernel8.img
                boots the Pi 4; kernel_2712.img, with its own initramfs in
                pi5/, the Pi 5.

Debian bookworm's kernel has no Pi 5 device tree: a Debian kit boots Pi 4
boards (and QEMU's virt machine), not the Pi 5. Use --pios for Pi 5 boards.

The agent (--agent) must be the static linux/arm64 build: make build writes
bin/agent-linux-arm64, and netboot finds it there, next to bin/netboot.

Default modules, loaded in dependency order at boot; those a kernel lacks
are reported and skipped (Debian and Pi OS build different drivers in):
` + groups.String() + `
--modules adds more; one the kernel does not have is an error.

The build is reproducible: SOURCE_DATE_EPOCH (seconds) stamps the
initramfs and kit.json, and the same sources, agent and epoch give the same
bytes; without it the current time is used. The directory is written next
to --out and renamed into place: an error leaves nothing behind.`,
		Example: `  # From Debian's archive (needs network to deb.debian.org):
  make build
  bin/netboot kit build --fetch --out /srv/netboot/boot

  # From .deb files fetched elsewhere, with an extra module:
  netboot kit build --deb linux-image-6.1.0-57-arm64_6.1.192-3_arm64.deb \
    --deb raspi-firmware_1.20220830+ds-1_all.deb \
    --agent bin/agent-linux-arm64 --modules btrfs --out /srv/netboot/boot

  # Pi 4 and Pi 5 from a Raspberry Pi OS image:
  netboot kit build --pios 2024-11-19-raspios-bookworm-arm64-lite.img.xz \
    --out /srv/netboot/boot

  # Then serve it:
  netboot serve --boot-dir /srv/netboot/boot --server-ip 10.0.0.5 ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runKitBuild(ctx, f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.out, "out", "", "boot directory to write (required; must not exist unless --force)")
	fl.BoolVar(&f.fetch, "fetch", false, "download the Debian kernel and raspi-firmware with a private apt")
	fl.StringArrayVar(&f.debs, "deb", nil, "a Debian package to build from (repeat: kernel, raspi-firmware, firmware packages)")
	fl.StringVar(&f.pios, "pios", "", "a 64-bit Raspberry Pi OS image (.img, .img.xz, .img.zst) to build from")
	fl.StringVar(&f.agent, "agent", "", "the static arm64 agent (default: agent-linux-arm64 next to this binary)")
	fl.StringSliceVar(&f.modules, "modules", nil, "modules to load besides the defaults (comma-separated or repeated)")
	fl.StringVar(&f.cacheDir, "cache-dir", "", "--fetch's apt state and downloaded packages (default /var/cache/lekiwi/kit for root, else $XDG_CACHE_HOME/lekiwi/kit)")
	fl.StringVar(&f.tempDir, "temp-dir", "", "where sources are unpacked while building (default $TMPDIR; a kernel package needs ~400 MB)")
	fl.BoolVar(&f.force, "force", false, "replace an existing --out (the old kit is removed once the new one is in place)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress lines")
	return cmd
}

func runKitBuild(ctx context.Context, f kitFlags, stdout, stderr io.Writer) error {
	if f.out == "" {
		return fmt.Errorf("missing --out: see netboot kit build --help")
	}
	sourcesGiven := 0
	for _, given := range []bool{f.fetch, len(f.debs) > 0, f.pios != ""} {
		if given {
			sourcesGiven++
		}
	}
	if sourcesGiven != 1 {
		return fmt.Errorf("give one source: --fetch, --deb files or --pios IMAGE (see netboot kit build --help)")
	}
	agent, err := kit.FindAgent(f.agent)
	if err != nil {
		return err
	}
	epoch := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		secs, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s)
		}
		epoch = time.Unix(secs, 0)
	}
	var progress io.Writer
	if !f.quiet {
		progress = stderr
	}
	o := kit.Options{Debs: f.debs, PiOS: f.pios, Agent: agent, Out: f.out, Force: f.force, Modules: f.modules,
		Epoch: epoch, TempDir: f.tempDir, Progress: progress}
	if f.fetch {
		dir := f.cacheDir
		if dir == "" {
			if dir, err = aptfetch.DefaultDir("kit"); err != nil {
				return err
			}
		}
		if o.Debs, err = kit.FetchDebs(ctx, dir, progress); err != nil {
			return err
		}
	}
	k, err := kit.Build(ctx, o)
	if err != nil {
		return err
	}
	printKit(stdout, f.out, k)
	return nil
}

func printKit(w io.Writer, out string, k *kit.Kit) {
	var total int64
	for _, f := range k.Files {
		total += f.Size
	}
	fmt.Fprintf(w, "Kit %s: %d files, %.1f MiB\n", out, len(k.Files)+1, float64(total)/(1<<20))
	for _, s := range k.Sources {
		name := s.File
		if s.Package != "" {
			name = s.Package + " " + s.Version
		}
		fmt.Fprintf(w, "  source  %s (sha256 %s…)\n", name, s.SHA256[:12])
	}
	for _, b := range k.Boots {
		fmt.Fprintf(w, "  %-6s  %s %s (%.1f MiB) + %s (%.1f MiB, %d modules, %.1f MiB uncompressed)\n", strings.Join(b.Boards, ","),
			b.Kernel, b.KernelRelease, float64(b.KernelSize)/(1<<20), b.Initramfs, float64(b.InitramfsSize)/(1<<20), len(b.Modules), float64(b.InitramfsUncompressed)/(1<<20))
	}
	for _, n := range k.Notes {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
	for _, warn := range k.Warnings {
		fmt.Fprintf(w, "Warning: %s\n", warn)
	}
	fmt.Fprintf(w, "Serve it: netboot serve --boot-dir %s --server-ip <this station's IP> --image <robot image> ... (netboot serve --help)\n", out)
}
