package robotsim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/agent/systemd"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/image/tree"
	"github.com/lekiwi/heartbeat/profiles"
)

// OTAImages are two builds of one profile for update scenarios: v1 (what
// robots are flashed with) and v2 (the update), both trusting the same
// update key, with the signed release of v2 in a directory.
type OTAImages struct {
	V1, V2     string // image files
	KeysDir    string // the public update key the images bake in
	Key        string // the private signing key
	ReleaseDir string // signed release of V2
	V1Version  string
	V2Version  string
	Profile    string
}

// BuildOTAImages builds v1 and v2 images of the lekiwi profile (64 MiB
// slots) whose root filesystems share shared bytes of data and differ in
// changed bytes (a new file and a changed small one), creates the release
// of v2 and signs it with a new key.
func BuildOTAImages(ctx context.Context, dir string, shared, changed int) (*OTAImages, error) {
	o := &OTAImages{KeysDir: filepath.Join(dir, "update-keys"), Key: filepath.Join(dir, "release.key"),
		ReleaseDir: filepath.Join(dir, "release-v2"), V1Version: "1.0.0", V2Version: "2.0.0", Profile: "lekiwi"}
	if err := os.MkdirAll(o.KeysDir, 0o755); err != nil {
		return nil, err
	}
	if _, err := release.GenerateKey(o.Key); err != nil {
		return nil, err
	}
	pub := filepath.Join(o.KeysDir, "release.pub")
	if err := os.Rename(o.Key+".pub", pub); err != nil {
		return nil, err
	}
	keep := pseudoRandom(1, shared)
	v1 := map[string][]byte{"etc/hostname": []byte("robot\n"), "usr/share/lekiwi/data.bin": keep, "etc/lekiwi/release": []byte("1\n")}
	v2 := map[string][]byte{"etc/hostname": []byte("robot\n"), "usr/share/lekiwi/data.bin": keep, "etc/lekiwi/release": []byte("2\n"),
		"usr/share/lekiwi/new.bin": pseudoRandom(2, changed)}
	var err error
	if o.V1, err = buildOTAImage(ctx, dir, o.V1Version, o.Profile, pub, v1); err != nil {
		return nil, err
	}
	if o.V2, err = buildOTAImage(ctx, dir, o.V2Version, o.Profile, pub, v2); err != nil {
		return nil, err
	}
	if _, err := release.Create(ctx, o.V2, o.ReleaseDir, release.Meta{Version: o.V2Version, Profile: o.Profile, MinAgentVersion: "1.0.0"}, release.CreateOptions{}); err != nil {
		return nil, err
	}
	priv, err := release.ReadPrivateKey(o.Key)
	if err != nil {
		return nil, err
	}
	if _, err := release.SignDir(o.ReleaseDir, priv); err != nil {
		return nil, err
	}
	return o, nil
}

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x07a))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// buildOTAImage builds one version; every input that feeds the disk
// identity is the same for all versions.
func buildOTAImage(ctx context.Context, dir, version, profile, updateKey string, files map[string][]byte) (string, error) {
	p, err := profiles.Load(profile)
	if err != nil {
		return "", err
	}
	epoch := time.Unix(1715000000, 0)
	boot, root := tree.New(), tree.New()
	if err := boot.AddBytes("cmdline.txt", []byte("console=tty1 rootwait\n"), 0o644, epoch); err != nil {
		return "", err
	}
	if err := boot.AddBytes("config.txt", []byte("[all]\ndtparam=watchdog=on\n"), 0o644, epoch); err != nil {
		return "", err
	}
	for n, b := range files {
		if err := root.AddBytes(n, b, 0o644, epoch); err != nil {
			return "", err
		}
	}
	// The build checks for an arm64 ELF; the scenario runs the agent in
	// process, so a header is enough.
	agentBin := filepath.Join(dir, "agent-arm64")
	elf := make([]byte, 64)
	copy(elf, "\x7fELF")
	elf[4], elf[5], elf[18] = 2, 1, 183 // 64-bit, little endian, EM_AARCH64
	if err := os.WriteFile(agentBin, elf, 0o755); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "lekiwi-"+version+".img")
	err = assemble.Build(ctx, assemble.Inputs{Boot: boot, Root: root, Arch: "arm64", Description: "ota scenario " + version},
		assemble.Options{Out: img, Profile: p, AgentPath: agentBin, AgentUnit: systemd.Unit(), UpdateKeys: []string{updateKey}, Version: version, Epoch: epoch,
			Sizes: layout.Sizes{Boot: 64 << 20, System: 64 << 20, Persistent: 16 << 20}})
	if err != nil {
		return "", fmt.Errorf("build %s image %s: %w", profile, version, err)
	}
	return img, nil
}
