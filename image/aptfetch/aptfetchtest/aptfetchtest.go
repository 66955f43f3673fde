// Package aptfetchtest gives tests real Debian packages — the bookworm
// arm64 kernel and the Raspberry Pi firmware — fetched once with
// aptfetch into a cache shared by every test run on the machine
// ($XDG_CACHE_HOME/lekiwi-heartbeat/test-debs, ~/.cache/…), keyed by
// package name and version: a fresh machine downloads them (the 60 MB
// kernel takes seconds from deb.debian.org), later runs reuse them while
// the archive's version stays the same. Without apt-get the test is
// skipped, naming it; any other failure (no network) fails the test.
package aptfetchtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/aptfetch"
)

// Fetcher is the shared cache's fetcher; package lists are reused for a day.
func Fetcher(t testing.TB) *aptfetch.Fetcher {
	t.Helper()
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skipf("apt-get not installed (Debian's apt fetches the test's packages): %v", err)
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache directory for test packages (set XDG_CACHE_HOME or HOME): %v", err)
	}
	return &aptfetch.Fetcher{Dir: filepath.Join(dir, "lekiwi-heartbeat", "test-debs"), MaxListAge: 24 * time.Hour, Progress: logWriter{t}}
}

// Deb returns the path of package name's .deb, fetching it if needed.
func Deb(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := Fetcher(t).Download(ctx, name)
	if err != nil {
		t.Fatalf("test package %s: %v", name, err)
	}
	return p
}

// KernelDeb returns the bookworm arm64 kernel package the
// linux-image-arm64 metapackage currently points at.
func KernelDeb(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	deps, err := Fetcher(t).Depends(ctx, "linux-image-arm64")
	if err != nil {
		t.Fatalf("test kernel: %v", err)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "linux-image-") {
			return Deb(t, d)
		}
	}
	t.Fatalf("linux-image-arm64 depends on no linux-image-* package: %v", deps)
	return ""
}

// FirmwareDeb returns Debian's raspi-firmware package.
func FirmwareDeb(t testing.TB) string { return Deb(t, "raspi-firmware") }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
