package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/internal/pkitest"
	"github.com/lekiwi/heartbeat/protocol"
)

// logBuf collects JSON logs from the daemon's goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuf) {
	b := &logBuf{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func wss(c *pkitest.Control) string { return "wss" + strings.TrimPrefix(c.URL, "https") }

// secureConfig is testConfig against servers over TLS, with the fleet CA
// in a file and a token file holding token.
func secureConfig(t *testing.T, ca *pkitest.CA, token string, servers ...string) config.Config {
	t.Helper()
	c := testConfig(t, servers[0])
	c.Servers = servers
	dir := t.TempDir()
	c.CAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(c.CAFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	c.EnrollmentTokenFile = filepath.Join(dir, "enrollment-token")
	if err := os.WriteFile(c.EnrollmentTokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.BackoffBase, c.BackoffCap = 5*time.Millisecond, 20*time.Millisecond
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// runUntil runs the daemon until cond holds, then stops it.
func runUntil(t *testing.T, cfg config.Config, log *slog.Logger, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, "9.9.9", log) }()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("Run returned %v before %s", err, what)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no %s within 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestRunEnrollsThenConnectsOverMTLS: first start enrolls with the token
// file (retrying past a server that is down), deletes the file and
// connects with the new certificate; the second start loads the identity
// and connects without any token.
func TestRunEnrollsThenConnectsOverMTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	ctl := pkitest.NewControl(t, ca, pkitest.Options{})
	ctl.AddToken("lke_first", "lekiwi-9", time.Now().Add(time.Hour))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "wss://" + ln.Addr().String()
	ln.Close()
	cfg := secureConfig(t, ca, "lke_first", down, wss(ctl))
	log, logs := newLog()

	runUntil(t, cfg, log, "telemetry over mTLS", func() bool {
		for _, f := range ctl.Frames() {
			if f.Type == protocol.TypeTelemetry {
				return true
			}
		}
		return false
	})
	dir := filepath.Join(cfg.StateDir, identity.DirName)
	id, err := identity.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	conns := ctl.Conns()
	if conns[0].RobotID != "lekiwi-9" || conns[0].Serial.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("control saw %+v, want lekiwi-9 with serial %x", conns[0], id.Certificate().SerialNumber)
	}
	if _, err := os.Stat(cfg.EnrollmentTokenFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("token file after enrollment: %v, want it deleted", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, identity.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v, want mode 600", fi.Mode(), err)
	}
	if bytes.Contains(ctl.EnrollBodies()[0], []byte("PRIVATE KEY")) {
		t.Fatal("the private key left the robot")
	}
	for _, want := range []string{`"msg":"enrollment failed; retrying"`, down, `"msg":"robot enrolled"`, `"msg":"used enrollment token file deleted"`, `"mtls":true`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs.String(), "INSECURE") {
		t.Error("a secure run logged the insecure warning")
	}

	// Restart: the identity is loaded; the token file is gone and not needed.
	log2, logs2 := newLog()
	before := len(ctl.Conns())
	runUntil(t, cfg, log2, "a second connection", func() bool { return len(ctl.Conns()) > before })
	last := ctl.Conns()[before]
	if last.Serial.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("after restart control saw serial %x, want %x", last.Serial, id.Certificate().SerialNumber)
	}
	if n := len(ctl.EnrollBodies()); n != 1 {
		t.Fatalf("%d enrollments, want 1", n)
	}
	if !strings.Contains(logs2.String(), `"msg":"robot identity loaded"`) {
		t.Errorf("restart logs:\n%s", logs2)
	}
}

// TestRunCannotEnroll: what stops the daemon before it runs, each with a
// message saying what to do.
func TestRunCannotEnroll(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	ctl := pkitest.NewControl(t, ca, pkitest.Options{})
	ctl.AddToken("lke_used", "lekiwi-9", time.Now().Add(time.Hour))
	if _, err := identity.Enroll(context.Background(), nil, ctl.URL, "lke_used", "lekiwi-9", ca.PEM, ""); err != nil {
		t.Fatal(err)
	}
	ctl.AddToken("lke_expired", "lekiwi-9", time.Now().Add(-time.Second))
	tests := []struct {
		name    string
		token   string
		mutate  func(t *testing.T, c *config.Config)
		want    []string
		keepTok bool
	}{
		{name: "used token", token: "lke_used", want: []string{"token_used", "already used", "control enroll create --robot-id lekiwi-9"}, keepTok: true},
		{name: "expired token", token: "lke_expired", want: []string{"token_expired", "control enroll create --robot-id lekiwi-9"}, keepTok: true},
		{name: "unknown token", token: "lke_typo", want: []string{"token_invalid", "control enroll create --robot-id lekiwi-9"}, keepTok: true},
		{name: "no token", token: "x", mutate: func(_ *testing.T, c *config.Config) { c.EnrollmentTokenFile = "" },
			want: []string{"no identity", "no enrollment token", "control enroll create --robot-id lekiwi-9", "enrollment_token_file", "--insecure"}},
		{name: "empty token file", token: "  ", want: []string{"is empty"}},
		{name: "no CA file", token: "lke_x", mutate: func(_ *testing.T, c *config.Config) { c.CAFile = filepath.Join(t.TempDir(), "none.pem") },
			want: []string{"fleet CA is unreadable", "ca_file", config.EnvCAFile}},
		{name: "identity of another robot", token: "lke_x", mutate: func(t *testing.T, c *config.Config) {
			keyPEM, certPEM := ca.Issue(t, "lekiwi-1", time.Now(), time.Hour)
			id, err := identity.FromPEM(keyPEM, certPEM, ca.PEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := id.Save(filepath.Join(c.StateDir, identity.DirName)); err != nil {
				t.Fatal(err)
			}
		}, want: []string{`is for robot "lekiwi-1" but robot_id is "lekiwi-9"`}},
		{name: "corrupt identity", token: "lke_x", mutate: func(t *testing.T, c *config.Config) {
			dir := filepath.Join(c.StateDir, identity.DirName)
			os.MkdirAll(dir, 0o700)
			os.WriteFile(filepath.Join(dir, identity.KeyFile), []byte("half a k"), 0o600)
			os.WriteFile(filepath.Join(dir, identity.CertFile), []byte("junk"), 0o600)
			os.WriteFile(filepath.Join(dir, identity.CAFile), ca.PEM, 0o644)
		}, want: []string{"load robot identity", "corrupt", "enroll again"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := secureConfig(t, ca, tt.token, wss(ctl))
			if tt.mutate != nil {
				tt.mutate(t, &cfg)
			}
			start := time.Now()
			err := Run(context.Background(), cfg, "dev", nil)
			if err == nil {
				t.Fatal("Run started")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("Run took %v to give up: a refusal must not be retried", d)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, serr := os.Stat(cfg.EnrollmentTokenFile); tt.keepTok && serr != nil {
				t.Errorf("the token file was removed after a refusal: %v", serr)
			}
		})
	}
}

// TestRunInsecureWarns: insecure mode dials plain ws://, skips the identity
// and says so at WARN.
func TestRunInsecureWarns(t *testing.T) {
	url, frames := control(t)
	cfg := testConfig(t, url)
	if !cfg.Insecure {
		t.Fatal("testConfig over http:// must be insecure")
	}
	cfg.CAFile = ""
	log, logs := newLog()
	runUntil(t, cfg, log, "hello", func() bool { return len(frames) > 0 })
	if !strings.Contains(logs.String(), `"level":"WARN","msg":"INSECURE: the link to control is unauthenticated`) {
		t.Fatalf("no insecure warning:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, identity.DirName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("insecure mode touched the identity directory: %v", err)
	}
}
