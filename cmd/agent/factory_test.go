package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/protocol"
)

func TestFactoryProbe(t *testing.T) {
	root := filepath.Join("..", "..", "agent", "factory", "testdata", "bare-pi4")
	args := []string{"factory", "probe", "--proc", filepath.Join(root, "proc"), "--sys", filepath.Join(root, "sys"), "--dev", filepath.Join(root, "dev")}
	out, _, err := execute(context.Background(), nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Raspberry Pi 4 Model B Rev 1.2", "serial 100000001234abcd", "mmcblk0 sd", "sda usb", "none (held): no servo bus answered: no servo adapter found"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = execute(context.Background(), nil, append(args, "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var r protocol.HardwareReport
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Board.Revision != "c03112" || r.Board.MemoryMB != 4096 || len(r.Storage) != 2 {
		t.Errorf("--json: %+v, %v\n%s", r, err, out)
	}
}
