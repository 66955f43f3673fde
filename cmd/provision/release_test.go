package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/registrytest"
)

func runProvision(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut, func(string) (string, bool) { return "", false })
	root.SetArgs(args)
	err := root.Execute()
	return out.String() + errOut.String(), err
}

// TestReleaseKeygenCreateSignPushInspect runs the whole release flow
// against docker-registry on loopback.
func TestReleaseKeygenCreateSignPushInspect(t *testing.T) {
	addr, _ := registrytest.Start(t)
	dir := t.TempDir()
	plan, err := layout.New(layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}, []byte("cli"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "robot.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(plan.Size)
	if err := layout.WriteGPT(f, plan); err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte("lekiwi kernel "), 50000), plan.Part(layout.BootA).Start+1<<20)
	f.WriteAt(bytes.Repeat([]byte("lekiwi rootfs "), 90000), plan.Part(layout.SystemB).Start+2<<20)
	f.Close()

	key := filepath.Join(dir, "release.key")
	rel := filepath.Join(dir, "rel")
	ref := addr + "/lekiwi/release:1.0.0"
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"release", "keygen", "--out", key}, "key id"},
		{[]string{"release", "create", "--image", img, "--version", "1.0.0", "--profile", "lekiwi", "--min-agent", "0.9.0", "--security-version", "1700000000", "--out", rel}, "sha256:"},
		{[]string{"release", "inspect", rel}, "signatures: none"},
		{[]string{"release", "inspect", rel}, "security version 1700000000 (2023-11-14T22:13:20Z)"},
		{[]string{"release", "sign", "--key", key, rel}, "signed by"},
		{[]string{"release", "push", "--insecure", rel, ref}, "sha256:"},
		{[]string{"release", "inspect", "--insecure", "--key", key + ".pub", ref}, "verified: signed by"},
		{[]string{"release", "inspect", "--json", rel}, `"minAgentVersion": "0.9.0"`},
	}
	for _, s := range steps {
		out, err := runProvision(t, s.args...)
		if err != nil {
			t.Fatalf("provision %s: %v\n%s", strings.Join(s.args, " "), err, out)
		}
		if !strings.Contains(out, s.want) {
			t.Fatalf("provision %s printed %q, want %q in it", strings.Join(s.args, " "), out, s.want)
		}
	}
	// This image carries no build metadata to take the security version
	// from: create says which flag to give.
	if out, err := runProvision(t, "release", "create", "--image", img, "--version", "1.0.0", "--out", filepath.Join(dir, "rel2")); err == nil || !strings.Contains(err.Error(), "--security-version") {
		t.Fatalf("create without a security version from an image without metadata: %v\n%s", err, out)
	}
	// Another key's robot refuses it.
	other := filepath.Join(dir, "other.key")
	if _, err := runProvision(t, "release", "keygen", "--out", other); err != nil {
		t.Fatal(err)
	}
	if out, err := runProvision(t, "release", "inspect", "--key", other+".pub", rel); err == nil || !strings.Contains(err.Error(), "does not trust") {
		t.Fatalf("verify with another key: %v\n%s", err, out)
	}
}
