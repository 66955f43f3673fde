package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/lekiwi/heartbeat/control/deploy"
)

// The engine's refusals reach callers as answers they can act on.
func TestDeployErrorMapping(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("batch size: %w", deploy.ErrInvalid), http.StatusBadRequest, "bad_request"},
		{fmt.Errorf("pause: %w", deploy.ErrState), http.StatusConflict, "conflict"},
		{fmt.Errorf("robot kiwi-1: %w", deploy.ErrConflict), http.StatusConflict, "conflict"},
		{fmt.Errorf("get: %w", deploy.ErrRebuilding), http.StatusServiceUnavailable, "rebuilding"},
	} {
		var ae *apiError
		if !errors.As(deployError(c.err), &ae) || ae.status != c.status || ae.code != c.code {
			t.Errorf("%v: %+v, want %d %s", c.err, ae, c.status, c.code)
		}
	}
	other := errors.New("database is locked")
	if got := deployError(other); got != other {
		t.Errorf("an unknown error was rewritten: %v", got)
	}
}
