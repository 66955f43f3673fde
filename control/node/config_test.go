package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigPrecedenceFileThenEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "control.yml")
	os.WriteFile(path, []byte("ca_dir: /etc/ca\ndata_dir: /from/file\nlisten: 127.0.0.1:7000\nheartbeat_interval: 10s\njoin: [\"127.0.0.1:9100\"]\n"), 0o644)
	c := Defaults()
	if err := c.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LEKIWI_CONTROL_LISTEN": "127.0.0.1:7001", "LEKIWI_CONTROL_OFFLINE_GRACE": "3s", "LEKIWI_CONTROL_DB_SNAPSHOT_TRAILING": "4096"}
	if err := c.LoadEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/file" || c.Listen != "127.0.0.1:7001" || c.HeartbeatInterval != 10*time.Second ||
		c.OfflineGrace != 3*time.Second || c.DBAddress != "127.0.0.1:9001" || len(c.Join) != 1 ||
		c.DBSnapshotThreshold != 1024 || c.DBSnapshotTrailing != 4096 {
		t.Fatalf("config %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrorsNameTheProblem(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.yml")
	os.WriteFile(typo, []byte("data_dri: /x\n"), 0o644)
	c := Defaults()
	if err := c.LoadFile(typo); err == nil || !strings.Contains(err.Error(), "data_dri") {
		t.Fatalf("unknown key error = %v", err)
	}
	if err := c.LoadFile(filepath.Join(dir, "missing.yml")); err == nil {
		t.Fatal("missing file accepted")
	}
	empty := filepath.Join(dir, "empty.yml")
	os.WriteFile(empty, nil, 0o644)
	if err := c.LoadFile(empty); err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if err := c.LoadEnv(func(k string) string {
		switch k {
		case "LEKIWI_CONTROL_HEARTBEAT_INTERVAL", "LEKIWI_CONTROL_MAX_QUEUE_WAIT":
			return "often"
		case "LEKIWI_CONTROL_MAX_PENDING_CONNECTIONS", "LEKIWI_CONTROL_MAX_CONNECTIONS", "LEKIWI_CONTROL_DB_SNAPSHOT_TRAILING":
			return "lots"
		}
		return ""
	}); err == nil || !strings.Contains(err.Error(), "HEARTBEAT_INTERVAL") || !strings.Contains(err.Error(), "MAX_PENDING_CONNECTIONS") ||
		!strings.Contains(err.Error(), "MAX_CONNECTIONS=") || !strings.Contains(err.Error(), "DB_SNAPSHOT_TRAILING=") || !strings.Contains(err.Error(), "MAX_QUEUE_WAIT") {
		t.Fatalf("bad env values error = %v", err)
	}
	bad := Defaults()
	bad.Listen, bad.DataDir, bad.HeartbeatInterval, bad.LogLevel = "nowhere", "", time.Millisecond, "loud"
	bad.Join = []string{bad.DBAddress}
	bad.MaxPendingConnections, bad.MaxConnections = 0, -1
	bad.DBSnapshotThreshold, bad.DBSnapshotTrailing = 10, 5
	bad.MaxQueueWait = time.Hour
	err := bad.Validate()
	for _, want := range []string{"listen", "data_dir", "heartbeat_interval", "log_level", "own db_address", "ca_dir is required", "max_pending_connections", "max_connections",
		"db_snapshot_threshold 10", "db_snapshot_trailing 5", "max_queue_wait 1h"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not mention %q", err, want)
		}
	}
}

func TestInsecureAndCAExcludeEachOther(t *testing.T) {
	c := Defaults()
	c.Insecure, c.CADir = true, "/ca"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "exclude") {
		t.Fatalf("Validate = %v", err)
	}
	c.CADir = ""
	if err := c.Validate(); err != nil {
		t.Fatalf("insecure alone: %v", err)
	}
}
