// Package version says which version of the project a binary is, the same
// way in every command: the version linked in by the build (the Makefile
// passes -ldflags "-X github.com/lekiwi/heartbeat/internal/version.linked=$(VERSION)"),
// else the main module's version Go recorded in the build info, else "dev".
package version

import "runtime/debug"

// linked is set by the linker (-X), which can only set a package-level
// string variable; nothing assigns it at run time.
var linked string

// String is the binary's version.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	return resolve(linked, bi, ok)
}

func resolve(linked string, bi *debug.BuildInfo, ok bool) string {
	if linked != "" {
		return linked
	}
	if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
