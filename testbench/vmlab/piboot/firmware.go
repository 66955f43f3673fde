package piboot

import (
	"context"
	"regexp"
)

// Firmware is one board's firmware across its boots from disk: what a
// Pi keeps between a restart and the next boot, which is the one-shot
// tryboot flag and nothing else.
//
//   - The running system asks for a trial by restarting with the reboot
//     argument "0 tryboot" (reboot(2) RESTART2, usually from
//     systemd-shutdown); the Pi's firmware driver turns it into the flag.
//     The lab sees it where the kernel says it, on the console:
//     "reboot: Restarting system with command '0 tryboot'" (Restarted).
//   - The next boot, and only that one, reads autoboot.txt's [tryboot]
//     section and gets /chosen/bootloader/tryboot = 1; booting consumes
//     the flag (PowerOn).
//   - A power cut loses it (PowerCut). A watchdog reset of a hung trial
//     finds it already consumed, so the default slot boots.
//
// autoboot.txt and everything else is re-read from the disk at every
// PowerOn, with FromDisk's independent tools.
type Firmware struct {
	// Disk is the boot device's image file.
	Disk string
	// Board is the board's identity; its Tryboot is ignored (the flag is
	// Firmware's own).
	Board Board
	// UART is DiskOptions.UART.
	UART string

	tryboot bool
}

// rebootLine is what the kernel prints as it restarts (kernel/reboot.c);
// the command is present for LINUX_REBOOT_CMD_RESTART2 only.
var rebootLine = regexp.MustCompile(`reboot: Restarting system(?: with command '([^']*)')?`)

// PowerOn boots the board from Disk as the firmware would, with the
// tryboot flag if it is set, and clears the flag.
func (f *Firmware) PowerOn(ctx context.Context, dir string) (Boot, error) {
	b := f.Board
	b.Tryboot, f.tryboot = f.tryboot, false
	return FromDisk(ctx, f.Disk, DiskOptions{Board: b, Dir: dir, UART: f.UART})
}

// Restarted takes the console lines of a boot that ended (the VM exited):
// if the kernel restarted with the argument "tryboot" (the Pi's firmware
// driver accepts "0 tryboot" and "tryboot"), the flag is set for the next
// PowerOn. It reports whether the boot ended in a restart at all; a boot
// that ended any other way (power off, halt, a killed VM) leaves the flag
// clear.
func (f *Firmware) Restarted(console []string) (restarted bool) {
	f.tryboot = false
	for i := len(console) - 1; i >= 0; i-- {
		m := rebootLine.FindStringSubmatch(console[i])
		if m == nil {
			continue
		}
		f.tryboot = m[1] == "0 tryboot" || m[1] == "tryboot"
		return true
	}
	return false
}

// PowerCut is power lost: the flag with it.
func (f *Firmware) PowerCut() { f.tryboot = false }

// Tryboot reports whether the next PowerOn is a trial.
func (f *Firmware) Tryboot() bool { return f.tryboot }
