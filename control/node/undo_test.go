package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestUndoStackRunsLastFirstAndJoinsErrors(t *testing.T) {
	var u undoStack
	var order []string
	boom := errors.New("store close failed")
	u.push(func(context.Context) error { order = append(order, "listener"); return nil })
	u.push(func(context.Context) error { order = append(order, "store"); return boom })
	u.push(func(context.Context) error { order = append(order, "components"); return nil })
	if err := u.run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("run returned %v, want %v", err, boom)
	}
	if want := []string{"components", "store", "listener"}; !reflect.DeepEqual(order, want) {
		t.Fatalf("undone in order %v, want %v", order, want)
	}
	if err := u.run(context.Background()); err != nil || len(order) != 3 {
		t.Fatalf("a second run undid again: %v %v", order, err)
	}
}

// A start that fails after its components are running undoes every step:
// the port, the admin socket and the database are free for the next start.
func TestFailedStartUndoesItsSteps(t *testing.T) {
	cfg := Defaults()
	cfg.Insecure, cfg.DataDir, cfg.Listen, cfg.DBAddress = true, t.TempDir(), freeAddr(t), freeAddr(t)
	cfg.RetentionInterval, cfg.Discovery = 0, false
	cfg.AlertRules = filepath.Join(t.TempDir(), "missing.yaml") // fails the telemetry step, late in Start
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if n, err := Start(ctx, cfg, o); err == nil {
		n.Close(ctx)
		t.Fatal("Start succeeded with a missing alert rules file")
	}
	if l, err := net.Listen("tcp", cfg.Listen); err != nil {
		t.Fatalf("HTTP port still taken after a failed start: %v", err)
	} else {
		l.Close()
	}
	if _, err := net.Dial("unix", filepath.Join(cfg.DataDir, "control.sock")); err == nil {
		t.Fatal("admin socket still answers after a failed start")
	}
	cfg.AlertRules = ""
	n, err := Start(ctx, cfg, o)
	if err != nil {
		t.Fatalf("start after a failed start on the same data directory and ports: %v", err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}
