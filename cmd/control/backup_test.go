package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// bkNode is a `control run` process.
type bkNode struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	listen string
}

func bkStartNode(t *testing.T, args ...string) *bkNode {
	t.Helper()
	n := &bkNode{listen: freeAddr(t)}
	n.cmd = control(append([]string{"run", "--listen", n.listen, "--log-level", "warn"}, args...)...)
	n.cmd.Stderr = &n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.cmd.Process.Kill(); n.cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + n.listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control never became ready: %v\n%s", err, n.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *bkNode) stop(t *testing.T) {
	t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- n.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("control exited with %v after SIGTERM:\n%s", err, n.stderr.String())
		}
	case <-time.After(25 * time.Second):
		t.Fatal("control did not stop within 25 s of SIGTERM")
	}
}

// The nodes run --insecure to keep the test about backups; restore itself
// never uses the peer port's TLS (it works on loopback).
func TestBackupRestoreRun(t *testing.T) {
	dataA := t.TempDir()
	a := bkStartNode(t, "--insecure", "--data-dir", dataA, "--db-address", freeAddr(t))

	// State worth restoring: a token (its hash must survive) and a revoked
	// one (its revocation must too).
	out, err := control("token", "create", "--data-dir", dataA, "--name", "alice", "--role", "operator").Output()
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	token := strings.TrimSpace(string(out))
	out, err = control("token", "create", "--data-dir", dataA, "--name", "carol", "--role", "admin").Output()
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	revoked := strings.TrimSpace(string(out))
	if out, err := control("token", "revoke", "--data-dir", dataA, strings.Split(revoked, "_")[1]).CombinedOutput(); err != nil {
		t.Fatalf("token revoke: %v %s", err, out)
	}

	backups := t.TempDir()
	file := filepath.Join(backups, "heartbeat.ndjson")
	out, err = control("backup", file, "--data-dir", dataA).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 events") || !strings.Contains(string(out), file) {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	hdrFile, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := store.CheckBackup(hdrFile, nil)
	hdrFile.Close()
	if err != nil || hdr.Events != 3 {
		t.Fatalf("the written backup: %+v %v", hdr, err)
	}
	if left, _ := os.ReadDir(backups); len(left) != 1 {
		t.Fatalf("backup left files behind: %v", left)
	}
	if out, err := control("backup", file, "--data-dir", dataA).CombinedOutput(); err == nil || !strings.Contains(string(out), "--force") {
		t.Fatalf("backup over an existing file: %v %s", err, out)
	}
	if out, err := control("backup", file, "--data-dir", dataA, "--force").CombinedOutput(); err != nil {
		t.Fatalf("backup --force: %v %s", err, out)
	}
	a.stop(t)
	if out, err := control("backup", filepath.Join(backups, "x.ndjson"), "--data-dir", dataA).CombinedOutput(); err == nil || !strings.Contains(string(out), "admin socket") {
		t.Fatalf("backup without a node: %v %s", err, out)
	}

	// Restore into a new directory, then run a node on it.
	dataB, dbB := filepath.Join(t.TempDir(), "restored"), freeAddr(t)
	out, err = control("restore", file, "--data-dir", dataB, "--db-address", dbB).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "restored 3 events") || !strings.Contains(string(out), "control run --data-dir "+dataB) {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	garbage := filepath.Join(backups, "garbage")
	os.WriteFile(garbage, []byte("not a backup\n"), 0o600)
	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"non-empty data dir", []string{"restore", file, "--data-dir", dataB, "--db-address", freeAddr(t)}, "is not empty"},
		{"garbage", []string{"restore", garbage, "--data-dir", filepath.Join(t.TempDir(), "g"), "--db-address", freeAddr(t)}, "backup line 1: not a Lekiwi Heartbeat backup"},
		{"no address", []string{"restore", file, "--data-dir", filepath.Join(t.TempDir(), "n")}, "db-address"},
		{"missing file", []string{"restore", filepath.Join(backups, "none"), "--data-dir", filepath.Join(t.TempDir(), "m"), "--db-address", freeAddr(t)}, "no such file"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			out, err := control(tc.args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output %q: want a failure mentioning %q", err, out, tc.want)
			}
		})
	}

	b := bkStartNode(t, "--insecure", "--data-dir", dataB, "--db-address", dbB)
	req, _ := http.NewRequest("GET", "http://"+b.listen+"/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("the token made before the backup, on the restored node: %d %s", resp.StatusCode, body)
	}
	req.Header.Set("Authorization", "Bearer "+revoked)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the token revoked before the backup, on the restored node: %v %v", resp.StatusCode, err)
	}
	// The restored node takes new writes after the restored ones (the
	// refused token above was audited: seq 4), runs on its final address,
	// and backs up again.
	if out, err := control("token", "create", "--data-dir", dataB, "--name", "bob", "--role", "admin").Output(); err != nil || !strings.HasPrefix(string(out), "lkw_") {
		t.Fatalf("token create on the restored node: %v %s", err, out)
	}
	if out, err := control("backup", filepath.Join(backups, "again.ndjson"), "--data-dir", dataB).CombinedOutput(); err != nil || !strings.Contains(string(out), "5 events (last seq 5") || !strings.Contains(string(out), "from "+dbB) {
		t.Fatalf("backup of the restored node: %v\n%s", err, out)
	}
	b.stop(t)
}

func TestBackupHelpTeaches(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		want []string
	}{
		{"backup", []string{"consistent", "atomically", "control restore", "--admin-socket", "--data-dir"}},
		{"restore", []string{"empty data", "SAME", "--db-address", "loopback", "control run"}},
	} {
		out, err := control(c.cmd, "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s --help lacks %q", c.cmd, w)
			}
		}
	}
}
