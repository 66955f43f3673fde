package node

import (
	"context"
	"errors"
)

// undoStack holds what undoes each step of a node's start. Each step
// pushes its undo once it succeeded; run undoes them last first, so a
// part is always stopped before what it uses: the gateway's sessions close
// while the store is open, the store closes after every component stopped.
// Close runs it, and so does Start when a later step fails.
type undoStack []func(context.Context) error

func (u *undoStack) push(undo func(context.Context) error) { *u = append(*u, undo) }

// run undoes every step, last first, and returns their errors joined.
func (u *undoStack) run(ctx context.Context) error {
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		errs = append(errs, (*u)[i](ctx))
	}
	*u = nil
	return errors.Join(errs...)
}
