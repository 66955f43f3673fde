package main

import (
	"context"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/pid1"
)

func TestInitHelpTeaches(t *testing.T) {
	out, _, err := execute(context.Background(), nil, "init", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PID 1", "under the name init", pid1.ManifestPath, "lekiwi.station=", pid1.VendorClass, "/etc/resolv.conf",
		"root=PARTUUID=", "rootdelay=30", "init=/sbin/init", "switch", "never exits", "--root", "--cmdline", "unshare --mount"} {
		if !strings.Contains(out, want) {
			t.Errorf("init --help lacks %q", want)
		}
	}
	if _, _, err := execute(context.Background(), nil, "init", "--cmdline", "root=PARTUUID=x"); err == nil || !strings.Contains(err.Error(), "--root DIR") {
		t.Errorf("agent init without --root = %v, want a refusal naming --root", err)
	}
	out, _, err = execute(context.Background(), nil, "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "init ") || !strings.Contains(out, "started as PID 1 under the name init") {
		t.Errorf("agent --help does not mention the init:\n%s", out)
	}
}
