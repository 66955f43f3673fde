// Package pid1 is the agent running as the first process of an initramfs
// (`/init`, a link to the agent): the netboot provisioning environment of
// the factory, and the robot's own disk boot when its kernel keeps storage
// and ext4 in modules.
//
// Run does what PID 1 must, in this order, printing one line per step on
// every console the kernel prints on (serial and screen), each prefixed
// with the time since boot like the kernel's messages — the console is
// the technician's only window:
//
//  1. mount /proc, /sys, /dev (devtmpfs), /dev/pts, and tmpfs on /run and
//     /tmp, skipping what is mounted already;
//  2. reap every child that exits (PID 1 is every orphan's parent);
//  3. load the initramfs's kernel modules with finit_module(2), in the
//     order of its manifest (etc/lekiwi/initramfs.json, written by the
//     initramfs builder): a module already loaded is fine, any other
//     failure is reported with the module's name and loading goes on —
//     the step that needs the device says what is missing;
//  4. follow the kernel command line:
//     - lekiwi.station= (Factory): bring up every wired link, lease an
//     address by DHCP (option 60 "lekiwi-provisioning", so the station's
//     logs tell the provisioning environment from the bootloader), and run
//     the factory flow (agent/factory), again after a backoff whenever it
//     fails: it is idempotent, an image already on the disk is not
//     rewritten. It ends by rebooting the board (sync, reboot(2)).
//     - root=PARTUUID=<guid> (Root): wait for the disk whose GPT holds that
//     partition, mount it (rootfstype=, default ext4; ro or rw; rootflags=)
//     and switch root as util-linux's switch_root does: move /dev, /proc,
//     /sys and /run into it, delete the initramfs's files to give the RAM
//     back (never crossing into another filesystem), make it / and exec
//     init= (default /sbin/init) with the kernel's arguments for init, as
//     the same PID 1.
//
// PID 1 must never exit: the kernel panics when it does. So Main never
// returns: a failure is printed with what to do about it, and the init
// waits — the factory run and the network are retried with a backoff, the
// disk boot keeps looking for its partition (a disk seated late is found),
// and a command line that asks for neither leaves the reason on the
// console, repeated every minute, until a technician powers the board off.
//
// `agent init` runs the same steps in an ordinary process (under a root
// directory of the caller's choosing, as a child subreaper), for tests.
package pid1
