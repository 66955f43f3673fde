package main

import (
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/agent/pid1"
)

func newInitCmd() *cobra.Command {
	var o pid1.Options
	cmd := &cobra.Command{
		Use:   "init [-- ARGUMENT...]",
		Short: "Be an initramfs's PID 1: mounts, modules, then the factory run or the disk boot",
		Long: `In an initramfs the agent is /init (a link to /usr/bin/lekiwi-agent): the
kernel starts it as PID 1 under the name init, and it does this without being
asked. ` + "`agent init`" + ` does the same in an ordinary process, under --root, for tests.

Every step prints one line on the console, prefixed with the time since boot:
  1. mount /proc, /sys, /dev, /dev/pts, and tmpfs on /run and /tmp;
  2. reap every orphan (it is everyone's parent);
  3. load the kernel modules listed in /` + pid1.ManifestPath + `, in order
     (a failure is reported with the module's name, and loading goes on);
  4. read the kernel command line:
     lekiwi.station=URL lekiwi.token=T (the netboot station's cmdline.txt):
       bring up every wired link, lease an address by DHCP (vendor class
       "` + pid1.VendorClass + `"), write /etc/resolv.conf, and run
       ` + "`agent factory run`" + `'s flow until it reboots the board; a failed
       run starts again after a backoff (10 s doubling to 5 min), and skips
       what it already did.
     root=PARTUUID=GUID [rootfstype=ext4] [rootflags=...] [ro|rw]
     [rootdelay=30] [init=/sbin/init] (the robot's own cmdline.txt):
       find the GPT partition with that GUID on any disk, mount it on
       /sysroot, move /dev /proc /sys /run into it, delete the initramfs's
       files, make it / and exec init with the kernel's arguments for init
       (what util-linux's switch_root does), as the same PID 1.

PID 1 never exits: on a failure it prints the reason and what to do, and
retries (network, factory run), keeps looking (the disk), or waits for a
technician (a command line asking for neither). Not PID 1, ` + "`agent init`" + ` returns
that error instead.`,
		Example: `  # What the kernel does (cmdline.txt: ... rdinit=/init lekiwi.station=... ):
  /init

  # A test, in a mount namespace, over a directory laid out as an initramfs:
  unshare --mount --propagation private \
    agent init --root /tmp/initramfs --cmdline "root=PARTUUID=$GUID ro" -- single`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Args = args
			o.Console = cmd.ErrOrStderr()
			return pid1.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Root, "root", "", "the initramfs's root directory: mounts, modules, /etc and /sysroot are under it (required: only PID 1 works on /)")
	f.StringVar(&o.Cmdline, "cmdline", "", "kernel command line to follow (default: <root>/proc/cmdline)")
	return cmd
}
