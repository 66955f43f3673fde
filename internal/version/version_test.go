package version

import (
	"runtime/debug"
	"testing"
)

func TestResolve(t *testing.T) {
	withMain := func(v string) *debug.BuildInfo { return &debug.BuildInfo{Main: debug.Module{Version: v}} }
	for _, tc := range []struct {
		name, linked string
		bi           *debug.BuildInfo
		ok           bool
		want         string
	}{
		{"linked wins", "1.4.0", withMain("v1.3.0"), true, "1.4.0"},
		{"module version", "", withMain("v1.3.0"), true, "v1.3.0"},
		{"devel build", "", withMain("(devel)"), true, "dev"},
		{"no module version", "", withMain(""), true, "dev"},
		{"no build info", "", nil, false, "dev"},
	} {
		if got := resolve(tc.linked, tc.bi, tc.ok); got != tc.want {
			t.Errorf("%s: resolve = %q, want %q", tc.name, got, tc.want)
		}
	}
	if String() == "" {
		t.Error("String is empty")
	}
}
