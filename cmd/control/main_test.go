package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// The test binary doubles as the control binary so the daemon is exercised
// as a real process (signals, exit codes) without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("LEKIWI_TEST_BE_CONTROL") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func control(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	// Nodes started by tests do not browse the host's LAN over mDNS.
	cmd.Env = append(os.Environ(), "LEKIWI_TEST_BE_CONTROL=1", "LEKIWI_CONTROL_DISCOVERY=false")
	return cmd
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRunHelpTeaches(t *testing.T) {
	out, err := control("run", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{"Examples:", "--join", "--data-dir", "--db-address", "--heartbeat-interval", "LEKIWI_CONTROL_", "three voters"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

func TestBadConfigurationIsExplained(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "c.yml")
	os.WriteFile(typo, []byte("listen_addr: x\n"), 0o644)
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"bad listen flag", []string{"run", "--listen", "nowhere", "--data-dir", dir, "--insecure"}, "", "listen"},
		{"no CA and not insecure", []string{"run", "--data-dir", dir}, "", "provision ca init"},
		{"missing CA", []string{"run", "--data-dir", dir, "--ca-dir", filepath.Join(dir, "noca")}, "", "noca"},
		{"unknown config key", []string{"run", "--config", typo}, "", "listen_addr"},
		{"missing config file", []string{"run", "--config", filepath.Join(dir, "none.yml")}, "", "none.yml"},
		{"bad env duration", []string{"run", "--data-dir", dir, "--insecure"}, "LEKIWI_CONTROL_HEARTBEAT_INTERVAL=soon", "HEARTBEAT_INTERVAL"},
		{"join itself", []string{"run", "--data-dir", dir, "--insecure", "--db-address", "127.0.0.1:9555", "--join", "127.0.0.1:9555"}, "", "own db_address"},
		{"admin without a node", []string{"token", "list", "--data-dir", dir}, "", "admin socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := control(tc.args...)
			if tc.env != "" {
				cmd.Env = append(cmd.Env, tc.env)
			}
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output %q: want a failure mentioning %q", err, out, tc.want)
			}
		})
	}
}

func TestRunServesAdminCommandsAndStopsOnSIGTERM(t *testing.T) {
	listen := freeAddr(t)
	caDir, dataDir := filepath.Join(t.TempDir(), "ca"), t.TempDir()
	ca, err := pki.Create(pki.CreateOptions{Name: "test fleet CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(caDir, nil); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	cmd := control("run", "--ca-dir", caDir, "--data-dir", dataDir, "--listen", listen, "--db-address", freeAddr(t), "--log-level", "warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("https://" + listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control never became ready: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Admin commands reach the node over its socket.
	out, err := control("token", "create", "--data-dir", dataDir, "--name", "alice", "--role", "operator").Output()
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	token := strings.TrimSpace(string(out))
	req, _ := http.NewRequest("GET", "https://"+listen+"/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("whoami with the printed token: %d %s", resp.StatusCode, body)
	}
	if out, err := control("token", "list", "--data-dir", dataDir).Output(); err != nil || !strings.Contains(string(out), "alice") || strings.Contains(string(out), token) {
		t.Fatalf("token list: %v\n%s", err, out)
	}
	if out, err := control("enroll", "create", "--data-dir", dataDir, "--robot-id", "kiwi-1").Output(); err != nil || !strings.HasPrefix(string(out), "lke_") {
		t.Fatalf("enroll create: %v %s", err, out)
	}
	if out, err := control("robot", "revoke", "--data-dir", dataDir, "ghost-1").CombinedOutput(); err == nil || !strings.Contains(string(out), "no certificate") {
		t.Fatalf("revoking an unknown robot: %v %s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("control exited with %v after SIGTERM:\n%s", err, stderr.String())
		}
	case <-time.After(25 * time.Second):
		t.Fatal("control did not stop within 25 s of SIGTERM")
	}
}
