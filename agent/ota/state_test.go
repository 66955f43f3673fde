package ota

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
)

func TestParseState(t *testing.T) {
	for _, c := range []struct {
		name, in string
		ok       bool
	}{
		{"empty", `{}`, true},
		{"pending", `{"pending":{"slot":"b","from":"a","phase":"armed","version":"2"},"slots":{"a":{"version":"1","complete":true}}}`, true},
		{"same slots", `{"pending":{"slot":"a","from":"a","phase":"armed"}}`, false},
		{"bad slot", `{"pending":{"slot":"c","from":"a","phase":"armed"}}`, false},
		{"bad phase", `{"pending":{"slot":"b","from":"a","phase":"done"}}`, false},
		{"bad record", `{"slots":{"x":{"complete":true}}}`, false},
		{"negative timeout", `{"pending":{"slot":"b","from":"a","phase":"armed","health_timeout_seconds":-1}}`, false},
		{"security floor", `{"security_floor":1715000000,"pending":{"slot":"b","from":"a","phase":"armed","security_version":1716000000,"allow_downgrade":true}}`, true},
		{"negative security floor", `{"security_floor":-1}`, false},
		{"negative security version", `{"pending":{"slot":"b","from":"a","phase":"armed","security_version":-1}}`, false},
		{"not json", `pending`, false},
		{"too big", `{"x":"` + strings.Repeat("a", maxStateBytes) + `"}`, false},
	} {
		_, err := ParseState([]byte(c.in))
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestFileStoreRoundTrip(t *testing.T) {
	st := FileStore{Path: filepath.Join(t.TempDir(), "sub", StateFile)}
	s, err := loadState(st)
	if err != nil || s.Pending != nil {
		t.Fatalf("missing file: %+v %v", s, err)
	}
	s.Pending = &Pending{Slot: bootctl.B, From: bootctl.A, Phase: phaseArmed, Version: "2", Started: time.Unix(1, 0).UTC()}
	s.slot(bootctl.A).Complete = true
	if err := saveState(st, s); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(st)
	if err != nil || *got.Pending != *s.Pending || !got.Slots[bootctl.A].Complete {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if err := os.WriteFile(st.Path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadState(st); err == nil {
		t.Fatal("a corrupt state file was accepted")
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"pending":{"slot":"b","from":"a","phase":"armed","version":"2","started":"2024-05-06T00:00:00Z"},"slots":{"a":{"version":"1","complete":true,"sha256":{"boot_a":"00"}}}}`))
	f.Add([]byte(`{"slots":{"b":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			return
		}
		if p := s.Pending; p != nil && (!p.Slot.Valid() || !p.From.Valid() || p.Slot == p.From || p.SecurityVersion < 0) {
			t.Fatalf("accepted %+v", p)
		}
		if s.SecurityFloor < 0 {
			t.Fatalf("accepted security floor %d", s.SecurityFloor)
		}
		for slot, r := range s.Slots {
			if !slot.Valid() || r == nil {
				t.Fatalf("accepted slot %q %+v", slot, r)
			}
		}
	})
}

func TestAgentSatisfies(t *testing.T) {
	for _, c := range []struct {
		have, min string
		ok        bool
	}{
		{"1.2", "", true}, {"1.2", "1.2", true}, {"1.10", "1.9", true}, {"1.2", "1.2.1", false},
		{"v2.0.0", "1.9", true}, {"1.2.0-rc1", "1.2", true}, {"dev", "1.0", true}, {"1.0", "latest", false}, {"0.9", "1", false},
	} {
		if got := agentSatisfies(c.have, c.min); got != c.ok {
			t.Errorf("agent %q, min %q: %v", c.have, c.min, got)
		}
	}
}

func TestHealthComposer(t *testing.T) {
	ctx := context.Background()
	ok := Check{Name: "control reachable", Run: func(context.Context) error { return nil }}
	bad := Check{Name: "services active", Run: func(context.Context) error { return errors.New("teleop.service is failed") }}
	if err := Health(ok, Check{Name: "none"})(ctx); err != nil {
		t.Fatal(err)
	}
	if err := Health(ok, bad)(ctx); err == nil || !strings.Contains(err.Error(), "services active: teleop.service is failed") {
		t.Fatalf("%v", err)
	}
	if err := Command("true").Run(ctx); err != nil {
		t.Fatalf("true: %v", err)
	}
	if err := Command("sh", "-c", "echo disk full; exit 3").Run(ctx); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failing command: %v", err)
	}
	// A fake systemctl that behaves as the real one: is-active prints one
	// state per unit and exits 0 when at least one of them is active.
	dir := t.TempDir()
	fake := filepath.Join(dir, "systemctl")
	script := "#!/bin/sh\nshift; shift\nrc=3\nfor u in \"$@\"; do case $u in bad*) echo failed;; masked*) echo inactive;; *) echo active; rc=0;; esac; done\nexit $rc\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SystemdActive(fake, "agent.service", "teleop.service").Run(ctx); err != nil {
		t.Fatalf("active units: %v", err)
	}
	if err := SystemdActive(fake, "agent.service", "bad.service").Run(ctx); !errors.Is(err, ErrUnhealthy) || !strings.HasSuffix(err.Error(), ": bad.service is failed") {
		t.Fatalf("failed unit: %v; want ErrUnhealthy naming it", err)
	}
	// One unit active is not all: systemctl exits 0, the other is down.
	if err := SystemdActive(fake, "agent.service", "masked-ssh.service").Run(ctx); err == nil || errors.Is(err, ErrUnhealthy) || err.Error() != "masked-ssh.service is inactive" {
		t.Fatalf("one of two units active: %v; want a not-yet naming the inactive one", err)
	}
	// A unit still starting is "not yet", not a failure.
	starting := filepath.Join(dir, "systemctl-starting")
	if err := os.WriteFile(starting, []byte("#!/bin/sh\necho activating\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SystemdActive(starting, "app.service").Run(ctx); err == nil || errors.Is(err, ErrUnhealthy) {
		t.Fatalf("activating unit: %v; want a plain not-yet error", err)
	}
	if err := Command("false").Run(ctx); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("non-zero exit: %v; want ErrUnhealthy", err)
	}
}
