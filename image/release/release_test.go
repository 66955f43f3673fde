package release

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/internal/imagetest"
)

func TestCreateIsDeterministicAndComplete(t *testing.T) {
	img := makeImage(t, baseFiles())
	a := createSigned(t, img, "1.0.0", nil, CreateOptions{})
	b := createSigned(t, img, "1.0.0", nil, CreateOptions{})
	ma, ca, err := ReadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, _, err := ReadDir(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ma, mb) {
		t.Fatal("two releases of the same image differ")
	}
	cfg, sigs, err := Inspect(ma, ca)
	if err != nil {
		t.Fatal(err)
	}
	if len(sigs) != 0 {
		t.Fatalf("unsigned release has signatures %v", sigs)
	}
	if len(cfg.Partitions) != 4 || cfg.Version != "1.0.0" || cfg.Profile != "lekiwi" || cfg.MinAgentVersion != "0.1.0" {
		t.Fatalf("config %+v", cfg)
	}
	// Both slots share their files: slot b adds only its own chunks.
	slotA := map[int]bool{}
	for _, n := range []string{"boot_a", "system_a"} {
		p, _ := cfg.Partition(n)
		for _, i := range p.Chunks {
			slotA[i] = true
		}
	}
	onlyB := 0
	for _, n := range []string{"boot_b", "system_b"} {
		p, _ := cfg.Partition(n)
		for _, i := range p.Chunks {
			if !slotA[i] {
				onlyB++
			}
		}
	}
	if onlyB > 6 {
		t.Errorf("slot b needs %d chunks slot a lacks, want a few (its slot-specific blocks)", onlyB)
	}
	// Every partition comes back byte for byte from the directory alone.
	f := &Fetcher{Release: &Release{Config: cfg}, Source: DirSource{a}, CacheDir: t.TempDir()}
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := writeAll(t, f, "boot_a", "system_a", "boot_b", "system_b")
	for n, b := range got {
		if !bytes.Equal(b, partitionBytes(t, img, n)) {
			t.Errorf("partition %s differs from the image", n)
		}
	}
}

func TestSmallPacksSplit(t *testing.T) {
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", nil, CreateOptions{PackSize: 1 << 20, Partitions: []string{"system_a"}})
	m, c, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := Inspect(m, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Packs) < 2 {
		t.Fatalf("%d packs with a 1 MiB pack size", len(cfg.Packs))
	}
	for _, p := range cfg.Packs {
		if p.Size > 1<<20 {
			t.Errorf("pack of %d bytes above the 1 MiB limit", p.Size)
		}
	}
}

func TestCreateRefuses(t *testing.T) {
	img := makeImage(t, baseFiles())
	notEmpty := t.TempDir()
	os.WriteFile(filepath.Join(notEmpty, "x"), nil, 0o644)
	notImage := filepath.Join(t.TempDir(), "zeros")
	os.WriteFile(notImage, make([]byte, 1<<20), 0o644)
	for _, tc := range []struct {
		name, img, dir string
		meta           Meta
		o              CreateOptions
		want           string
	}{
		{"no version", img, filepath.Join(t.TempDir(), "r"), Meta{}, CreateOptions{}, "version"},
		{"directory not empty", img, notEmpty, Meta{Version: "1", SecurityVersion: 1}, CreateOptions{}, "not empty"},
		{"not a GPT image", notImage, filepath.Join(t.TempDir(), "r"), Meta{Version: "1"}, CreateOptions{}, "provision image build"},
		{"unknown partition", img, filepath.Join(t.TempDir(), "r"), Meta{Version: "1", SecurityVersion: 1}, CreateOptions{Partitions: []string{"rootfs"}}, "no partition"},
		{"no build time to default to", img, filepath.Join(t.TempDir(), "r"), Meta{Version: "1"}, CreateOptions{}, "--security-version"},
		{"negative security version", img, filepath.Join(t.TempDir(), "r"), Meta{Version: "1", SecurityVersion: -1}, CreateOptions{}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Create(context.Background(), tc.img, tc.dir, tc.meta, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// resign rewrites a manifest's config descriptor to a new config and
// returns the manifest: the attacker's tampering that keeps digests valid.
func tamperManifest(t *testing.T, raw []byte, edit func(*manifest)) []byte {
	t.Helper()
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerify(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	img := makeImage(t, baseFiles())
	unsigned := createSigned(t, img, "1.0.0", nil, CreateOptions{Partitions: []string{"boot_a"}})
	rawU, cfg, err := ReadDir(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := Sign(priv, rawU, cfg)
	if err != nil {
		t.Fatal(err)
	}
	byOther, err := Sign(otherPriv, rawU, cfg)
	if err != nil {
		t.Fatal(err)
	}
	both, err := Sign(priv, byOther, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A config the attacker edited (a different version), with the
	// manifest's config descriptor updated to match.
	var c map[string]any
	json.Unmarshal(cfg, &c)
	c["version"] = "9.9.9"
	evilCfg, _ := json.Marshal(c)
	evilManifest := tamperManifest(t, signed, func(m *manifest) {
		m.Config.Digest, m.Config.Size = digestOf(evilCfg), int64(len(evilCfg))
	})
	flipped := tamperManifest(t, signed, func(m *manifest) {
		var sigs []Signature
		json.Unmarshal([]byte(m.Annotations[AnnotationSignatures]), &sigs)
		s, _ := base64.StdEncoding.DecodeString(sigs[0].Sig)
		s[3] ^= 1
		sigs[0].Sig = base64.StdEncoding.EncodeToString(s)
		b, _ := json.Marshal(sigs)
		m.Annotations[AnnotationSignatures] = string(b)
	})
	swappedLayer := tamperManifest(t, signed, func(m *manifest) {
		m.Layers[0].Digest = "sha256:" + strings.Repeat("0", 64)
	})
	otherType := tamperManifest(t, signed, func(m *manifest) { m.ArtifactType = "application/vnd.lekiwi.image.v1" })

	for _, tc := range []struct {
		name     string
		trusted  []ed25519.PublicKey
		manifest []byte
		config   []byte
		wantErr  error
		wantText string
	}{
		{"signed by a trusted key", []ed25519.PublicKey{pub}, signed, cfg, nil, ""},
		{"one of two signatures trusted", []ed25519.PublicKey{pub}, both, cfg, nil, ""},
		{"trusting several keys", []ed25519.PublicKey{otherPub, pub}, signed, cfg, nil, ""},
		{"unsigned", []ed25519.PublicKey{pub}, rawU, cfg, ErrUnsigned, ""},
		{"wrong key", []ed25519.PublicKey{pub}, byOther, cfg, ErrUntrusted, ""},
		{"no trusted keys", nil, signed, cfg, ErrUntrusted, ""},
		{"config edited, manifest not", []ed25519.PublicKey{pub}, signed, evilCfg, nil, "does not match"},
		{"config and manifest edited", []ed25519.PublicKey{pub}, evilManifest, evilCfg, ErrBadSignature, ""},
		{"signature bit flipped", []ed25519.PublicKey{pub}, flipped, cfg, ErrBadSignature, ""},
		{"layer swapped", []ed25519.PublicKey{pub}, swappedLayer, cfg, nil, "is not pack 0"},
		{"other artifact type", []ed25519.PublicKey{pub}, otherType, cfg, nil, "not a Lekiwi release"},
		{"not JSON", []ed25519.PublicKey{pub}, []byte("{"), cfg, nil, "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Verify(tc.trusted, tc.manifest, tc.config)
			switch {
			case tc.wantErr == nil && tc.wantText == "":
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if r.SignedBy != KeyID(pub) || r.Config.Version != "1.0.0" || r.ManifestDigest != digestOf(tc.manifest) {
					t.Fatalf("verified release %+v", r)
				}
			case err == nil:
				t.Fatal("accepted")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			case tc.wantText != "" && !strings.Contains(err.Error(), tc.wantText):
				t.Fatalf("got %v, want an error containing %q", err, tc.wantText)
			}
		})
	}
}

func TestSignReplacesOwnSignature(t *testing.T) {
	pub, priv := newKey(t)
	img := makeImage(t, baseFiles())
	dir := createSigned(t, img, "1.0.0", priv, CreateOptions{Partitions: []string{"boot_a"}})
	d1, err := SignDir(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	raw, cfg, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(raw) != d1 {
		t.Fatal("index.json does not name the signed manifest")
	}
	_, ids, _ := Inspect(raw, cfg)
	if len(ids) != 1 || ids[0] != KeyID(pub) {
		t.Fatalf("signatures %v after signing twice with one key", ids)
	}
	if _, err := Verify([]ed25519.PublicKey{pub}, raw, cfg); err != nil {
		t.Fatal(err)
	}
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	// packs + config + one manifest: the unsigned manifest is gone.
	if len(blobs) != 3 {
		t.Errorf("%d blobs, want 3 (pack, config, manifest)", len(blobs))
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "release.key")
	pub, err := GenerateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKey(path); err == nil {
		t.Fatal("overwrote an existing key")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v, want 0600", st.Mode().Perm())
	}
	priv, err := ReadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatal("private key does not match the public key")
	}
	keys, err := ReadPublicKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Equal(pub) {
		t.Fatalf("read keys %v", keys)
	}
	if _, err := ReadPrivateKey(path + ".pub"); err == nil {
		t.Fatal("read a public key as a private key")
	}
	os.WriteFile(filepath.Join(dir, "broken.pub"), []byte("nope"), 0o644)
	if _, err := ReadPublicKeys(dir); err == nil {
		t.Fatal("a broken key file was ignored")
	}
	if _, err := ReadPublicKeys(t.TempDir()); err == nil {
		t.Fatal("no keys is not an error")
	}
}

// TestSecurityVersion: a release's security version defaults to the build
// time the image builder recorded in the image (so creating a release stays
// reproducible), an explicit one wins when it is not below that build time,
// and the config parser refuses a negative one.
func TestSecurityVersion(t *testing.T) {
	built := time.Unix(1716000000, 0)
	img := imagetest.Build(t, t.TempDir(), imagetest.Options{Epoch: built,
		Sizes: layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}})
	create := func(sv int64) (string, *Config, error) {
		dir := filepath.Join(t.TempDir(), "rel")
		d, err := Create(context.Background(), img.Path, dir, Meta{Version: "1", Profile: "lekiwi", SecurityVersion: sv}, CreateOptions{Partitions: []string{"boot_a"}})
		if err != nil {
			return "", nil, err
		}
		raw, cfgBytes, err := ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _, err := Inspect(raw, cfgBytes)
		if err != nil {
			t.Fatal(err)
		}
		return d, cfg, nil
	}
	d1, cfg, err := create(0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SecurityVersion != built.Unix() {
		t.Fatalf("default security version %d, want the image's build time %d", cfg.SecurityVersion, built.Unix())
	}
	if d2, _, err := create(0); err != nil || d2 != d1 {
		t.Fatalf("the same image and flags gave %s, then %s (%v)", d1, d2, err)
	}
	raised := built.Unix() + 3600
	d3, cfg, err := create(raised)
	if err != nil || cfg.SecurityVersion != raised || d3 == d1 {
		t.Fatalf("explicit security version: %v, config has %d, digest %s (default's %s)", err, cfg.SecurityVersion, d3, d1)
	}
	if _, _, err := create(built.Unix() - 1); err == nil || !strings.Contains(err.Error(), "below the image's build time 1716000000") {
		t.Fatalf("a security version below the build time: %v", err)
	}

	_, cfgBytes, err := ReadDir(createSigned(t, makeImage(t, baseFiles()), "1", nil, CreateOptions{Partitions: []string{"boot_a"}}))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(cfgBytes, &c); err != nil {
		t.Fatal(err)
	}
	c["securityVersion"] = -5
	bad, _ := json.Marshal(c)
	if _, err := ParseConfig(bad); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("config with a negative security version: %v", err)
	}
}
