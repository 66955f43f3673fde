package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/agent/systemd"
)

func execute(ctx context.Context, env map[string]string, args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	root.SetArgs(args)
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestVersionAndUnit(t *testing.T) {
	out, _, err := execute(context.Background(), nil, "version")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("version = %q, %v", out, err)
	}
	out, _, err = execute(context.Background(), nil, "systemd-unit")
	if err != nil || out != systemd.Unit() {
		t.Fatalf("systemd-unit printed %d bytes (%v), want the embedded unit", len(out), err)
	}
}

func TestRunHelpTeaches(t *testing.T) {
	out, _, err := execute(context.Background(), nil, "run", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Examples:", "--server wss://10.0.0.5:8443 --server", "--robot-id", "--state-dir", "--heartbeat-interval", "--log-level", "--config", config.DefaultFile,
		"--ca-file", "--enrollment-token-file", "--enrollment-token ", "--insecure", config.DefaultCAFile, "control enroll create --robot-id", "identity/", "token_used", "Renewal", "0600"} {
		if !strings.Contains(out, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
	for _, ev := range config.EnvVars() {
		if !strings.Contains(out, ev.Name) || (ev.Key != "" && !strings.Contains(out, ev.Key)) {
			t.Errorf("run --help does not document %s / %s", ev.Name, ev.Key)
		}
	}
}

func TestRunConfigErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yml")
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{name: "missing --config", args: []string{"run", "--config", missing}, wantErr: "read config file " + missing},
		{name: "no robot id", args: []string{"run", "--config", writeYAML(t, "robot_type: lekiwi\nservers: [ws://c:1]\n")}, wantErr: "robot_id"},
		{name: "flag beats env", env: map[string]string{config.EnvRobotID: "good-id"}, args: []string{"run", "--config", writeYAML(t, "robot_type: lekiwi\nservers: [ws://c:1]\n"), "--robot-id", "Bad_ID"}, wantErr: `robot id "Bad_ID"`},
		{name: "bad duration flag", args: []string{"run", "--heartbeat-interval", "soon"}, wantErr: "heartbeat-interval"},
		{name: "stray argument", args: []string{"run", "now"}, wantErr: "unknown command"},
		{name: "ws without --insecure", args: []string{"run", "--robot-id", "r1", "--robot-type", "xle", "--server", "ws://c:1", "--config", writeYAML(t, "disk_path: /\n")}, wantErr: "use wss:// (or https://); for development against a plain control, pass --insecure"},
		{name: "--insecure=false beats the environment", env: map[string]string{config.EnvInsecure: "true"}, args: []string{"run", "--insecure=false", "--robot-id", "r1", "--robot-type", "xle", "--server", "ws://c:1", "--config", writeYAML(t, "disk_path: /\n")}, wantErr: "not encrypted"},
		{name: "token and token file", args: []string{"run", "--enrollment-token", "lke_x", "--enrollment-token-file", "/t", "--config", writeYAML(t, "robot_id: r1\nrobot_type: xle\nservers: [wss://c:1]\n")}, wantErr: "both set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := execute(context.Background(), tt.env, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestRunStartsAndStopsCleanly runs the daemon with flags over environment
// against a server that is down, then stops it as SIGTERM would.
func TestRunStartsAndStopsCleanly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String()
	ln.Close()
	state := filepath.Join(t.TempDir(), "state")
	env := map[string]string{config.EnvRobotID: "env-robot", config.EnvRobotType: "xle", config.EnvServers: "ws://env-only:1", config.EnvConfig: writeYAML(t, "disk_path: /\n")}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, logs, err := execute(ctx, env, "run", "--robot-id", "flag-robot", "--server", dead, "--state-dir", state, "--log-level", "debug", "--insecure")
	if err != nil {
		t.Fatalf("run = %v\n%s", err, logs)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("run took %v to stop", time.Since(start))
	}
	if _, err := os.Stat(filepath.Join(state, queue.FileName)); err != nil {
		t.Fatalf("no queue in --state-dir: %v", err)
	}
	for _, want := range []string{`"robot":"flag-robot"`, `"level":"DEBUG"`, `"to":"retrying"`, dead, `"msg":"agent stopped"`, `"level":"WARN","msg":"INSECURE`} {
		if !strings.Contains(logs, want) {
			t.Errorf("JSON logs lack %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "env-only") {
		t.Errorf("--server did not replace the environment's servers:\n%s", logs)
	}
}

func writeYAML(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
