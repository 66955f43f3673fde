// Package reboot restarts the machine, optionally with a reboot argument
// for the firmware ("0 tryboot" makes a Raspberry Pi's next boot, and only
// that one, a trial of the other slot). There are two ways, and the caller
// picks one; nothing here guesses from the environment which applies:
//
//   - Systemd asks the service manager, over D-Bus. systemd-logind's
//     SetRebootParameter writes the argument to /run/systemd/reboot-param,
//     then systemd starts reboot.target ("replace-irreversibly", as
//     `systemctl reboot` does): services stop in order, filesystems are
//     unmounted, and systemd-shutdown ends with
//     reboot(LINUX_REBOOT_CMD_RESTART2, <the file's content>). This is
//     the agent service's way: its unit's SystemCallFilter=@system-service
//     has no reboot(2) (that is in @reboot), so calling it killed the agent
//     with SIGSYS, and the filter is not widened for it.
//   - Syscall calls reboot(2) itself after sync(2): for a process with no
//     service manager above it, such as the factory run in the
//     provisioning initramfs.
package reboot

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// Rebooter restarts the machine with arg as the reboot argument ("" for
// none). On success the machine goes down: Reboot either does not return
// (Syscall) or returns nil once the restart is under way and the caller is
// about to be stopped (Systemd). An error means no restart was started.
type Rebooter interface {
	Reboot(ctx context.Context, arg string) error
}

// Func adapts a function to Rebooter (models of the firmware in tests, a
// dry run).
type Func func(ctx context.Context, arg string) error

// Reboot implements Rebooter.
func (f Func) Reboot(ctx context.Context, arg string) error { return f(ctx, arg) }

// Syscall reboots with reboot(2) directly; see the package comment for when
// that is right.
type Syscall struct{}

// Reboot syncs the filesystems and restarts the machine with reboot(2); a
// non-empty arg uses LINUX_REBOOT_CMD_RESTART2, so the firmware driver
// sees it. Nothing is stopped first. It returns only on failure.
func (Syscall) Reboot(ctx context.Context, arg string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	unix.Sync()
	if arg == "" {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
			return fmt.Errorf("reboot(2): %w", err)
		}
		return nil
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

// D-Bus names of the two services a reboot request goes through.
const (
	login1Dest    = "org.freedesktop.login1"
	login1Path    = "/org/freedesktop/login1"
	login1Manager = "org.freedesktop.login1.Manager"

	systemdDest    = "org.freedesktop.systemd1"
	systemdPath    = "/org/freedesktop/systemd1"
	systemdManager = "org.freedesktop.systemd1.Manager"

	// RebootTarget is the unit a reboot starts, in JobMode.
	RebootTarget = "reboot.target"
	// JobMode is `systemctl reboot`'s: the reboot job replaces every
	// queued job and no later job can cancel it.
	JobMode = "replace-irreversibly"
)

// clearTimeout bounds removing the reboot parameter after a refused reboot.
const clearTimeout = 5 * time.Second

// Systemd asks systemd for the reboot over D-Bus; see the package comment.
// The zero value uses the system bus. Each Reboot connects anew: reboots
// are rare, and a connection kept for days could be gone when one is
// needed.
type Systemd struct {
	// Address is a D-Bus address to use instead of the system bus (tests
	// with a private bus).
	Address string
}

// Reboot sets the reboot parameter to arg through logind — also when arg
// is empty, which removes a parameter left from before, so that a plain
// reboot never turns into a trial — and starts reboot.target. A failed
// call returns systemd's or logind's D-Bus error (a dbus.Error, through
// errors.As) wrapped with what was asked; when the reboot job is refused
// after a non-empty parameter was set, the parameter is removed again.
func (s Systemd) Reboot(ctx context.Context, arg string) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := setRebootParameter(ctx, conn, arg); err != nil {
		return err
	}
	var job dbus.ObjectPath
	err = conn.Object(systemdDest, systemdPath).CallWithContext(ctx, systemdManager+".StartUnit", 0, RebootTarget, JobMode).Store(&job)
	if err != nil {
		err = fmt.Errorf("reboot: systemd refused to start %s (%s.StartUnit): %w", RebootTarget, systemdManager, err)
		if arg != "" {
			// Left in place, the argument would ride along with the
			// next reboot anyone asks for; cleared even when ctx is
			// what ended the request.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clearTimeout)
			err = errors.Join(err, setRebootParameter(cctx, conn, ""))
			cancel()
		}
		return err
	}
	return nil
}

func (s Systemd) connect(ctx context.Context) (*dbus.Conn, error) {
	if s.Address != "" {
		conn, err := dbus.Connect(s.Address, dbus.WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("reboot: connect to D-Bus at %s: %w", s.Address, err)
		}
		return conn, nil
	}
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("reboot: connect to the system D-Bus to ask systemd (is dbus running?): %w", err)
	}
	return conn, nil
}

func setRebootParameter(ctx context.Context, conn *dbus.Conn, arg string) error {
	err := conn.Object(login1Dest, login1Path).CallWithContext(ctx, login1Manager+".SetRebootParameter", 0, arg).Err
	if err == nil {
		return nil
	}
	if arg == "" {
		return fmt.Errorf("reboot: clear the reboot parameter through systemd-logind (%s.SetRebootParameter): %w", login1Manager, err)
	}
	return fmt.Errorf("reboot: set the reboot parameter %q through systemd-logind (%s.SetRebootParameter): %w", arg, login1Manager, err)
}
