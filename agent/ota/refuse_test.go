package ota_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/protocol"
)

// tamperConfig rewrites the signed release's config (a partition's sha256
// changed, as an attacker would to slip other bytes in) and points the
// manifest at the new config, keeping the old signature.
func tamperConfig(t *testing.T, f *fixture) string {
	dir := filepath.Join(t.TempDir(), "rel")
	must(t, "copy", copyDir(f.signed, dir))
	raw, cfg, err := release.ReadDir(dir)
	must(t, "read", err)
	var c map[string]any
	must(t, "config", json.Unmarshal(cfg, &c))
	c["minAgentVersion"] = "0.1"
	cfg2, err := json.Marshal(c)
	must(t, "config", err)
	var m map[string]any
	must(t, "manifest", json.Unmarshal(raw, &m))
	d := digestHex(cfg2)
	m["config"].(map[string]any)["digest"] = "sha256:" + d
	m["config"].(map[string]any)["size"] = len(cfg2)
	raw2, err := json.Marshal(m)
	must(t, "manifest", err)
	writeLayout(t, dir, raw2, map[string][]byte{d: cfg2})
	return dir
}

// tamperPack flips one byte in the middle of the pack blob: manifest,
// config and signature are intact, a chunk is not.
func tamperPack(t *testing.T, f *fixture) string {
	dir := filepath.Join(t.TempDir(), "rel")
	must(t, "copy", copyDir(f.signed, dir))
	_, cfg, err := release.ReadDir(dir)
	must(t, "read", err)
	c, err := release.ParseConfig(cfg)
	must(t, "config", err)
	p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(c.Packs[0].Digest, "sha256:"))
	b, err := os.ReadFile(p)
	must(t, "pack", err)
	// A chunk the robot does not have (the new file's) sits in the pack's
	// second half; flip a byte in every frame there.
	for _, ch := range c.Chunks {
		if ch.Offset > int64(len(b))/2 {
			b[ch.Offset+int64(ch.CompressedLength)/2] ^= 0x40
		}
	}
	must(t, "pack", os.WriteFile(p, b, 0o644))
	return dir
}

// TestRefusedBeforeWriting: unsigned, wrongly signed and
// tampered releases — and ones for another profile, a newer agent or
// another digest than approved — are refused with the disk byte-identical.
func TestRefusedBeforeWriting(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	otherProfile := filepath.Join(t.TempDir(), "rel")
	must(t, "create", createSigned(f, otherProfile, release.Meta{Version: "2", Profile: "xle"}))
	newAgent := filepath.Join(t.TempDir(), "rel")
	must(t, "create", createSigned(f, newAgent, release.Meta{Version: "2", Profile: "lekiwi", MinAgentVersion: "9.0"}))
	for _, c := range []struct {
		name, ref string
		want      error // wrapped; nil: only a failed report
		reason    string
	}{
		{"unsigned", f.unsigned, release.ErrUnsigned, "not signed"},
		{"signed by an untrusted key", f.wrongKey, release.ErrUntrusted, "does not trust"},
		{"tampered config", tamperConfig(t, f), release.ErrBadSignature, "does not verify"},
		{"tampered pack", tamperPack(t, f), nil, "do not match its hash"},
		{"other profile", otherProfile, ota.ErrRefused, `profile "xle"`},
		{"needs a newer agent", newAgent, ota.ErrRefused, "needs agent 9.0"},
		{"not the approved digest", f.signed + "@sha256:" + strings.Repeat("0", 64), ota.ErrRefused, "not the approved one"},
	} {
		t.Run(c.name, func(t *testing.T) {
			initial := f.disk1(t)
			dev := powercut.NewDevice(initial, powercut.Fault{})
			r, err := newRobot(dev, f.plan, t.TempDir())
			must(t, "robot", err)
			must(t, "power on", r.boot(bootctl.A, false))
			args := protocol.UpdateArgs{DeploymentID: "dep-x", Release: c.ref, Version: "2"}
			err = r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, args)
			if err == nil || c.want != nil && !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("install: %v, want %v (%q)", err, c.want, c.reason)
			}
			if w := dev.Writes(); len(w) != 0 {
				t.Fatalf("refused release wrote %d times to the disk, first %d bytes at %d", len(w), w[0].Len, w[0].Off)
			}
			if eq, err := powercut.EqualRegion(dev.Current(), initial, 0, initial.Size()); err != nil || !eq {
				t.Fatalf("the disk changed: %v", err)
			}
			if last := r.last(); last.State != protocol.UpdateFailed || last.Reason == "" || last.DeploymentID != "dep-x" {
				t.Fatalf("last report %+v", last)
			}
			if st := r.status(ctx); st != (bootctl.Status{Booted: bootctl.A, Default: bootctl.A, TrialSlot: bootctl.B}) {
				t.Fatalf("status %+v", st)
			}
			// Nothing is left pending: the next start has nothing to settle.
			if out, err := r.agent(t, ota.DirSource{}, nil, f.key).OnStart(ctx); err != nil || out != (ota.Outcome{}) {
				t.Fatalf("next start: %+v %v", out, err)
			}
		})
	}
}

func createSigned(f *fixture, dir string, meta release.Meta) error {
	if _, err := release.Create(context.Background(), f.img2, dir, meta, release.CreateOptions{}); err != nil {
		return err
	}
	_, err := release.SignDir(dir, f.key)
	return err
}
