package pid1

import (
	"context"
	"errors"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// reap collects every child of this process that exits, until ctx ends,
// calling exited (if not nil) for each. PID 1 is the parent of every
// orphan, and a child nobody waits for stays a zombie holding its process
// slot. The init starts no child through os/exec, whose Wait this would
// race with; everything it adopts it reaps here.
func reap(ctx context.Context, exited func(pid int, status unix.WaitStatus)) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		// Several exits can share one SIGCHLD: wait until none is left.
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if exited != nil {
				exited(pid, ws)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}

// becomeReaper makes this process the parent of its orphaned descendants
// when it is not PID 1 (`agent init` in a test), so reap sees what PID 1
// would.
func becomeReaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}
