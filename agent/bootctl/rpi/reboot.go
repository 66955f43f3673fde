package rpi

import (
	"context"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RebootSyscall syncs the filesystems and restarts the machine with
// reboot(2); a non-empty arg uses LINUX_REBOOT_CMD_RESTART2 so the
// Raspberry Pi firmware driver sees it ("0 tryboot" sets the one-shot
// tryboot flag). It does not stop services: callers that want an orderly
// shutdown run `systemctl reboot "<arg>"` instead (systemd passes the same
// argument to the same syscall at its end). It returns only on failure.
func RebootSyscall(ctx context.Context, arg string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	unix.Sync()
	if arg == "" {
		return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	p, err := unix.BytePtrFromString(arg)
	if err != nil {
		return fmt.Errorf("reboot argument %q: %w", arg, err)
	}
	_, _, errno := unix.Syscall6(unix.SYS_REBOOT, unix.LINUX_REBOOT_MAGIC1, unix.LINUX_REBOOT_MAGIC2,
		unix.LINUX_REBOOT_CMD_RESTART2, uintptr(unsafe.Pointer(p)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("reboot(RESTART2, %q): %w", arg, errno)
	}
	return nil
}
