package aptfetch_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/aptfetch"
	"github.com/lekiwi/heartbeat/image/aptfetch/aptfetchtest"
)

// The private apt resolves the kernel metapackage and downloads the
// package it names into its own directory, from the archive, keyed by
// version; a second fetch is served from that cache.
func TestFetchKernelAndFirmware(t *testing.T) {
	kernel := aptfetchtest.KernelDeb(t)
	if base := filepath.Base(kernel); !strings.HasPrefix(base, "linux-image-") || !strings.HasSuffix(base, "_arm64.deb") {
		t.Fatalf("kernel package %s", kernel)
	}
	fw := aptfetchtest.FirmwareDeb(t)
	if !strings.HasPrefix(filepath.Base(fw), "raspi-firmware_") {
		t.Fatalf("firmware package %s", fw)
	}
	before, err := os.Stat(fw)
	if err != nil {
		t.Fatal(err)
	}
	if again := aptfetchtest.FirmwareDeb(t); again != fw {
		t.Fatalf("second fetch %s, first %s", again, fw)
	}
	if after, _ := os.Stat(fw); !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("a cached package was downloaded again")
	}
	// Every directory the private configuration names is inside the
	// fetcher's own directory.
	dir := filepath.Dir(filepath.Dir(fw))
	conf, err := os.ReadFile(filepath.Join(dir, "apt", "apt.conf"))
	if err != nil {
		t.Fatal(err)
	}
	paths := 0
	for _, line := range strings.Split(string(conf), "\n") {
		if strings.HasPrefix(line, "Dir::") {
			paths++
			if _, p, _ := strings.Cut(line, " "); !strings.HasPrefix(p, `"`+dir+"/") {
				t.Errorf("private apt.conf points outside %s: %s", dir, line)
			}
		}
	}
	if paths < 10 {
		t.Errorf("private apt.conf sets %d directories:\n%s", paths, conf)
	}
}

func TestFetchErrors(t *testing.T) {
	f := aptfetchtest.Fetcher(t)
	if _, err := f.Download(context.Background(), "no-such-package-lekiwi"); err == nil || !strings.Contains(err.Error(), "no-such-package-lekiwi") {
		t.Fatalf("a missing package: %v", err)
	}
	if _, err := (&aptfetch.Fetcher{}).Download(context.Background(), "x"); err == nil {
		t.Fatal("a fetcher without a directory downloaded")
	}
}
