package imagetest

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/image/layout"
)

func TestBuildIsARealImageAndRepeatable(t *testing.T) {
	a := Build(t, t.TempDir(), Options{})
	if !strings.HasSuffix(a.Path, "/robot.img") || a.Profile == nil || a.Profile.Name != "lekiwi" {
		t.Fatalf("default image = %+v, want robot.img for lekiwi", a)
	}
	if len(a.Plan.Partitions) != 6 {
		t.Fatalf("plan has %d partitions, want the 6 of the A/B layout: %+v", len(a.Plan.Partitions), a.Plan)
	}
	if boot := a.Plan.Part(layout.BootA); boot.Size != 64<<20 {
		t.Errorf("boot A is %d bytes, want the default 64 MiB", boot.Size)
	}
	b := Build(t, t.TempDir(), Options{Name: "other"})
	ab, err := os.ReadFile(a.Path)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Error("two builds with the same inputs differ")
	}
	c := Build(t, t.TempDir(), Options{Root: map[string][]byte{"etc/hostname": []byte("y\n")}})
	cb, err := os.ReadFile(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ab, cb) {
		t.Error("other root files gave the same image")
	}
}

func TestMakeReportsBadInput(t *testing.T) {
	if _, err := Make(t.TempDir(), Options{Profile: "no-such-robot"}); err == nil || !strings.Contains(err.Error(), "test image robot") {
		t.Errorf("unknown profile: err = %v, want one naming the image", err)
	}
	if _, err := Make(t.TempDir(), Options{Agent: []byte("#!/bin/sh\n")}); err == nil {
		t.Error("a non-ELF agent was accepted")
	}
}
