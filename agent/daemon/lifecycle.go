package daemon

// The two shapes Run is built from: long-running components (one
// run(ctx) error each) under an errgroup, and a stack of cleanups for what
// start-up acquired.

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// background runs run until the returned stop cancels its context; stop
// waits for run to return and returns its error.
func background(ctx context.Context, run func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { return run(ctx) })
	return func() error {
		cancel()
		return g.Wait()
	}
}

// cleanupStack releases what start-up acquired, last acquired first, so
// nothing is released while a part acquired after it may still use it.
type cleanupStack []func()

func (c *cleanupStack) push(f func()) { *c = append(*c, f) }

// run takes a pointer so that `defer c.run()` sees what is pushed after.
func (c *cleanupStack) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
}
