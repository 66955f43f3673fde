package main

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// proc is a control process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: control(args...), stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("stderr of control %s:\n%s", strings.Join(args, " "), p.stderr)
		}
	})
	return p
}

func (p *proc) kill9() { p.cmd.Process.Signal(syscall.SIGKILL); <-p.done; p.done <- nil }

func (p *proc) term(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(30 * time.Second):
		t.Fatalf("process did not stop:\n%s", p.stderr)
	}
}

func waitOK(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func adminCmd(dataDir string, args ...string) (string, error) {
	out, err := control(append(args, "--data-dir", dataDir)...).CombinedOutput()
	return string(out), err
}

// Recovery from lost quorum, and the lifecycle commands: init, join, witness,
// cluster status, leave; then two of three members destroyed and the
// survivor brought back alone, with its data, by `control recover`.
func TestClusterLifecycleAndLostQuorumRecovery(t *testing.T) {
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	ca, err := pki.Create(pki.CreateOptions{Name: "test fleet CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(caDir, nil); err != nil {
		t.Fatal(err)
	}
	dirA, dirB, dirW := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "w")
	dbA, dbB, dbW := freeAddr(t), freeAddr(t), freeAddr(t)
	httpA, httpB := freeAddr(t), freeAddr(t)
	common := []string{"--ca-dir", caDir, "--log-level", "warn"}
	a := startProc(t, append([]string{"init", "--data-dir", dirA, "--listen", httpA, "--db-address", dbA}, common...)...)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	waitOK(t, "node A ready", 30*time.Second, func() error {
		resp, err := client.Get("https://" + httpA + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	b := startProc(t, append([]string{"join", dbA, "--data-dir", dirB, "--listen", httpB, "--db-address", dbB}, common...)...)
	w := startProc(t, append([]string{"witness", "--join", dbA, "--data-dir", dirW, "--db-address", dbW}, common...)...)
	waitOK(t, "three voters", 60*time.Second, func() error {
		out, err := adminCmd(dirA, "cluster", "status")
		if err != nil || voters(out) != 3 {
			return errString(out)
		}
		return nil
	})
	if out, err := adminCmd(dirA, "token", "create", "--name", "keep-me", "--role", "operator"); err != nil {
		t.Fatalf("write through A: %v %s", err, out)
	}
	// B leaves cleanly: two members remain.
	waitOK(t, "node B serving", 30*time.Second, func() error {
		if out, err := adminCmd(dirB, "cluster", "status"); err != nil {
			return errString(out)
		}
		return nil
	})
	if out, err := adminCmd(dirB, "leave"); err != nil || !strings.Contains(out, "left the cluster") {
		t.Fatalf("leave: %v %s", err, out)
	}
	select {
	case err := <-b.done:
		b.done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("B did not stop after leaving")
	}
	// go-dqlite keeps a single voter in a cluster of fewer than three
	// members, so the witness is demoted to spare once B is gone.
	waitOK(t, "two members after leave", 60*time.Second, func() error {
		out, err := adminCmd(dirA, "cluster", "status")
		if err != nil || strings.Contains(out, dbB) || !strings.Contains(out, dbW) || voters(out) != 1 {
			return errString(out)
		}
		return nil
	})
	if out, err := adminCmd(dirA, "token", "create", "--name", "after-leave", "--role", "operator"); err != nil {
		t.Fatalf("write after leave: %v %s", err, out)
	}
	// A replacement control node joins: three voters again.
	dirB2, dbB2, httpB2 := filepath.Join(base, "b2"), freeAddr(t), freeAddr(t)
	b2 := startProc(t, append([]string{"join", dbA, "--data-dir", dirB2, "--listen", httpB2, "--db-address", dbB2}, common...)...)
	waitOK(t, "three voters with the replacement", 90*time.Second, func() error {
		out, err := adminCmd(dirA, "cluster", "status")
		if err != nil || voters(out) != 3 {
			return errString(out)
		}
		return nil
	})
	// Two of three members destroyed: A alone has no majority.
	b2.kill9()
	w.kill9()
	if out, err := adminCmd(dirA, "token", "create", "--name", "no-quorum", "--role", "operator"); err == nil {
		t.Fatalf("write without quorum succeeded: %s", out)
	}
	a.term(t)
	if out, err := control("recover", "--data-dir", dirA).CombinedOutput(); err != nil || !strings.Contains(string(out), "only member") {
		t.Fatalf("recover: %v %s", err, out)
	}
	startProc(t, append([]string{"run", "--data-dir", dirA, "--listen", httpA, "--db-address", dbA}, common...)...)
	waitOK(t, "recovered A takes writes", 60*time.Second, func() error {
		out, err := adminCmd(dirA, "token", "create", "--name", "after-recovery", "--role", "operator")
		if err != nil {
			return errString(out)
		}
		return nil
	})
	out, err := adminCmd(dirA, "token", "list")
	if err != nil || !strings.Contains(out, "keep-me") || !strings.Contains(out, "after-leave") || !strings.Contains(out, "after-recovery") {
		t.Fatalf("data after recovery: %v\n%s", err, out)
	}
	if out, _ := adminCmd(dirA, "cluster", "status"); voters(out) != 1 {
		t.Fatalf("status after recovery:\n%s", out)
	}
}

// voters counts members listed with the voter role in `cluster status`.
func voters(status string) int {
	n := 0
	for _, line := range strings.Split(status, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "voter" {
			n++
		}
	}
	return n
}

type errString string

func (e errString) Error() string { return string(e) }
