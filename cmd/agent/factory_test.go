package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
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

// `agent factory run` against a station that says the board is done: it
// probes, reports and, with --no-reboot, says it would reboot; a station
// asking for something unknown makes it fail with the reason.
func TestFactoryRun(t *testing.T) {
	var mu sync.Mutex
	action := protocol.PlanDone
	var steps []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case protocol.StationReportPath:
			var hw protocol.HardwareReport
			if err := json.NewDecoder(r.Body).Decode(&hw); err != nil || hw.Board.Serial != "100000001234abcd" {
				t.Errorf("report %+v, %v", hw, err)
			}
			json.NewEncoder(w).Encode(protocol.StationPlan{Action: action})
		case protocol.StationProgressPath:
			var p protocol.StationProgress
			json.NewDecoder(r.Body).Decode(&p)
			steps = append(steps, p.Step+"/"+p.Status)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	root := filepath.Join("..", "..", "agent", "factory", "testdata", "bare-pi4")
	args := []string{"factory", "run", "--station", srv.URL, "--token", "tok", "--no-reboot",
		"--proc", filepath.Join(root, "proc"), "--sys", filepath.Join(root, "sys"), "--dev", filepath.Join(root, "dev")}
	out, errOut, err := execute(context.Background(), nil, args...)
	if err != nil || !strings.Contains(out, "not rebooting") || !strings.Contains(errOut, "serial 100000001234abcd") {
		t.Fatalf("run: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	if got := strings.Join(steps, " "); got != "probe/started probe/done reboot/started" {
		t.Errorf("progress %s", got)
	}
	mu.Lock()
	action = "dance"
	mu.Unlock()
	_, errOut, err = execute(context.Background(), nil, args...)
	if err == nil || !strings.Contains(err.Error(), `asked for "dance"`) || !strings.Contains(errOut, "FAILED") {
		t.Fatalf("unknown action: %v\n%s", err, errOut)
	}
}
