package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// startNode runs a real control node in this process (dqlite store,
// gateway, API, admin socket, deployment engine) on dataDir.
func startNode(t *testing.T, dataDir, dbAddress string) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := node.Defaults()
	cfg.DataDir, cfg.Listen, cfg.DBAddress, cfg.Insecure = dataDir, freeAddr(t), dbAddress, true
	cfg.RetentionInterval = 0
	cfg.Discovery = false // no mDNS multicast on the host's interfaces
	n, err := node.Start(ctx, cfg, node.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("start control: %v", err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	return n
}

// cli runs `control args...` in this process and returns its output.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// deployJSON runs a deploy subcommand with --output json and decodes the
// deployment it prints.
func deployJSON(t *testing.T, dataDir string, args ...string) (*deploy.Deployment, string) {
	t.Helper()
	out, err := cli(t, append(append([]string{"deploy"}, args...), "--data-dir", dataDir, "--output", "json")...)
	if err != nil {
		t.Fatalf("control deploy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var d deploy.Deployment
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("control deploy %s --output json printed no deployment: %v\n%s", strings.Join(args, " "), err, out)
	}
	return &d, out
}

const testRelease = "registry.lan/lekiwi/os@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f"

// The deploy commands against a real node's admin socket: create (canary),
// status while the leader's engine sends the canary, pause, resume, abort,
// list, refusals; then backup, restore into a new data directory and start
// a node on it: every deployment reads back exactly as before.
func TestDeployCommandsAndRestore(t *testing.T) {
	dirA := t.TempDir()
	a := startNode(t, dirA, freeAddr(t))
	ctx := context.Background()
	var robots []string
	for _, id := range []string{"kiwi-01", "kiwi-02", "kiwi-03", "kiwi-04", "kiwi-05", "kiwi-06"} {
		data, _ := json.Marshal(store.ConnectedData{Session: "s-" + id, Node: "test", Type: protocol.RobotLeKiwi})
		if _, err := a.Store().Append(ctx, []store.Event{{RobotID: id, Type: store.TypeRobotConnected, Time: time.Now(), Data: data}}); err != nil {
			t.Fatal(err)
		}
		robots = append(robots, id)
	}

	d, _ := deployJSON(t, dirA, "create", "--release", testRelease, "--version", "2.4.0", "--name", "spring",
		"--robots", strings.Join(robots[:4], ","), "--strategy", "canary", "--canary", "1", "--batch-size", "50%",
		"--failure-threshold", "2", "--max-concurrent", "2", "--update-timeout", "2h")
	if d.State != deploy.StateRunning || d.Counts.Total != 4 || d.Spec.Strategy != deploy.Canary || d.Spec.Name != "spring" ||
		len(d.Batches) != 3 || d.Batches[0].Size != 1 || d.Spec.FailureThreshold.Count != 2 || d.Spec.UpdateTimeoutSeconds != 7200 {
		t.Fatalf("created: %+v", d)
	}
	id := d.ID

	// The node leads its one-node cluster, so its engine sends the canary.
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, _ = deployJSON(t, dirA, "status", id)
		if d.Counts.Sent == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine never sent the canary: %+v", d.Counts)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := d.Robots[0]; r.RobotID != "kiwi-01" || r.State != deploy.RobotSent || r.CommandID == "" || d.CurrentBatch != 0 {
		t.Fatalf("canary robot %+v, current batch %d", r, d.CurrentBatch)
	}

	if d, _ = deployJSON(t, dirA, "pause", id, "--reason", "lunch"); d.State != deploy.StatePaused || d.Reason != "lunch" {
		t.Fatalf("paused: %s %q", d.State, d.Reason)
	}
	if out, err := cli(t, "deploy", "pause", id, "--data-dir", dirA); err == nil || !strings.Contains(out, "only a running one pauses") {
		t.Fatalf("pausing a paused deployment: %v\n%s", err, out)
	}
	if d, _ = deployJSON(t, dirA, "resume", id); d.State != deploy.StateRunning || d.Reason != "" {
		t.Fatalf("resumed: %s %q", d.State, d.Reason)
	}
	if d, _ = deployJSON(t, dirA, "abort", id, "--reason", "wrong release"); d.State != deploy.StateAborted || d.Reason != "wrong release" {
		t.Fatalf("aborted: %s %q", d.State, d.Reason)
	}
	if out, err := cli(t, "deploy", "resume", id, "--data-dir", dirA); err == nil || !strings.Contains(out, "only a paused one resumes") {
		t.Fatalf("resuming an aborted deployment: %v\n%s", err, out)
	}

	// A second deployment on the other robots, paused at once.
	d2, _ := deployJSON(t, dirA, "create", "--release", testRelease, "--version", "2.4.1", "--robots", strings.Join(robots[4:], ","), "--window", "22-04", "--allow-downgrade")
	if d2.Spec.Window == nil || d2.Spec.Window.StartHour != 22 || d2.Spec.Window.EndHour != 4 || d2.Spec.Strategy != deploy.Rolling || !d2.Spec.AllowDowngrade || d.Spec.AllowDowngrade {
		t.Fatalf("second deployment: %+v (first: allow downgrade %v)", d2.Spec, d.Spec.AllowDowngrade)
	}
	if d2, _ = deployJSON(t, dirA, "pause", d2.ID); d2.State != deploy.StatePaused {
		t.Fatalf("second deployment paused: %s", d2.State)
	}

	out, err := cli(t, "deploy", "list", "--data-dir", dirA, "--output", "json")
	var list struct{ Deployments []deploy.Deployment }
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list.Deployments) != 2 {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := cli(t, "deploy", "status", id, "--data-dir", dirA); err != nil ||
		!strings.Contains(out, "aborted") || !strings.Contains(out, "wrong release") || !strings.Contains(out, "kiwi-01") || !strings.Contains(out, "BATCH") {
		t.Fatalf("status table: %v\n%s", err, out)
	}
	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"unknown deployment", []string{"deploy", "status", "dep-nope"}, "not found"},
		{"release by tag", []string{"deploy", "create", "--release", "registry.lan/lekiwi/os:2.4", "--version", "2.4"}, "sha256"},
		{"busy robots", []string{"deploy", "create", "--release", testRelease, "--version", "2.5", "--robots", "kiwi-05"}, "active deployments"},
		{"bad size", []string{"deploy", "create", "--release", testRelease, "--version", "2.5", "--batch-size", "0"}, "--batch-size"},
		{"bad window", []string{"deploy", "create", "--release", testRelease, "--version", "2.5", "--window", "late"}, "--window"},
		{"bad output", []string{"deploy", "status", id, "--output", "yaml"}, "want table or json"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			out, err := cli(t, append(tc.args, "--data-dir", dirA)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %v, output %q: want a failure mentioning %q", err, out, tc.want)
			}
		})
	}

	// Backup, restore, start: the deployments come back as they were.
	_, want1 := deployJSON(t, dirA, "status", id)
	_, want2 := deployJSON(t, dirA, "status", d2.ID)
	file := filepath.Join(t.TempDir(), "heartbeat.ndjson")
	if out, err := cli(t, "backup", file, "--data-dir", dirA); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if _, now1 := deployJSON(t, dirA, "status", id); now1 != want1 {
		t.Fatalf("the aborted deployment changed during the backup:\n%s\n%s", want1, now1)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	dirB, dbB := filepath.Join(t.TempDir(), "restored"), freeAddr(t)
	if out, err := cli(t, "restore", file, "--data-dir", dirB, "--db-address", dbB); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	startNode(t, dirB, dbB)
	deadline = time.Now().Add(20 * time.Second)
	for {
		out, err := cli(t, "deploy", "status", id, "--data-dir", dirB, "--output", "json")
		if err == nil {
			if out != want1 {
				t.Fatalf("restored deployment differs:\nwant %s\ngot  %s", want1, out)
			}
			break
		}
		if !strings.Contains(out, "being rebuilt") || time.Now().After(deadline) {
			t.Fatalf("status on the restored node: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, got2 := deployJSON(t, dirB, "status", d2.ID); got2 != want2 {
		t.Fatalf("restored second deployment differs:\nwant %s\ngot  %s", want2, got2)
	}
	// The restored node takes deployment commands again.
	if d2, _ = deployJSON(t, dirB, "abort", d2.ID); d2.State != deploy.StateAborted {
		t.Fatalf("abort on the restored node: %s", d2.State)
	}
	if _, err := os.Stat(filepath.Join(dirB, "control.sock")); err != nil {
		t.Fatalf("restored node's admin socket: %v", err)
	}
}
