// Package netns runs code inside a Linux network namespace, for tests and
// simulators that put each side of a network exchange in a namespace of its
// own (`ip netns add`). Only the calling goroutine's OS thread switches, so
// the rest of the process stays where it is; sockets opened inside belong
// to the namespace for their whole life, whichever goroutine uses them.
package netns

import (
	"fmt"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Path is where `ip netns add name` mounts the namespace.
func Path(name string) string { return filepath.Join("/run/netns", name) }

// Run runs fn on an OS thread switched into the network namespace at path
// ("" runs fn directly, in the caller's namespace) and returns fn's error.
// Goroutines fn starts run in the process's namespace, not in path's. The
// thread is switched back afterwards, or discarded if that fails. Entering
// a namespace needs root (CAP_SYS_ADMIN).
func Run(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Clean(path), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace %s (needs root): %w", path, err)
			return
		}
		ferr := fn()
		// Leave the thread locked (and so discarded when this goroutine
		// ends) if it cannot be switched back.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
