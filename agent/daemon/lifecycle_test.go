package daemon

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// TestCleanupStackRunsInReverse: the release of what was acquired last
// runs first, including what was pushed after the deferred run.
func TestCleanupStackRunsInReverse(t *testing.T) {
	var got []string
	func() {
		var c cleanupStack
		defer c.run()
		for _, name := range []string{"queue", "watchdog", "updater disk"} {
			c.push(func() { got = append(got, name) })
		}
	}()
	if want := []string{"updater disk", "watchdog", "queue"}; !slices.Equal(got, want) {
		t.Fatalf("cleanups ran %v, want %v", got, want)
	}
}

// TestBackgroundStopWaits: stop cancels the component and returns only
// once it has returned, with its error.
func TestBackgroundStopWaits(t *testing.T) {
	errStopped := errors.New("stopped")
	returned := false
	stop := background(context.Background(), func(ctx context.Context) error {
		<-ctx.Done()
		returned = true
		return errStopped
	})
	if err := stop(); !errors.Is(err, errStopped) || !returned {
		t.Fatalf("stop = %v (component returned: %v), want its error after it returned", err, returned)
	}
}
