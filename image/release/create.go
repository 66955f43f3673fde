package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/release/cdc"
)

// DefaultPartitions are the partitions a release carries: both slots,
// since the build writes them differently (root= in cmdline.txt, fstab).
var defaultPartitions = []string{"boot_a", "system_a", "boot_b", "system_b"}

// DefaultPartitions returns the partition names Create uses when given none.
func DefaultPartitions() []string { return append([]string(nil), defaultPartitions...) }

// DefaultPackSize is the size at which Create starts a new pack blob.
const DefaultPackSize = 512 << 20

// Meta is what Create records besides the partitions.
type Meta struct {
	Version         string
	Profile         string
	MinAgentVersion string
	// SecurityVersion is Config.SecurityVersion; 0 means the image's build
	// time (image.json's created). A value below the build time is refused:
	// a robot running the image takes its build time as its floor, so such
	// a release could not even be installed again on a robot that runs it.
	SecurityVersion int64
}

// CreateOptions tune Create.
type CreateOptions struct {
	// Partitions are the GPT partition names to carry; nil means
	// DefaultPartitions.
	Partitions []string
	// PackSize starts a new pack once one reaches it; 0 means
	// DefaultPackSize.
	PackSize int64
}

// Create makes a release of the A/B disk image at imagePath in the OCI
// layout directory dir (created; it must not exist or be empty) and returns
// the manifest digest. The release is unsigned: SignDir signs it.
// The output depends only on the image bytes, meta and this package's
// version (chunking and zstd settings are fixed): the default security
// version is read from the image, not the clock.
func Create(ctx context.Context, imagePath, dir string, meta Meta, o CreateOptions) (string, error) {
	if meta.Version == "" {
		return "", errors.New("a release needs a version")
	}
	names := o.Partitions
	if names == nil {
		names = defaultPartitions
	}
	packSize := o.PackSize
	if packSize <= 0 {
		packSize = DefaultPackSize
	}
	f, err := os.Open(imagePath)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	plan, err := layout.ReadGPT(f, st.Size())
	if err != nil {
		return "", fmt.Errorf("image %s: %w (a release is made from an image built by `provision image build`)", imagePath, err)
	}
	security, err := securityVersion(f, plan, meta.SecurityVersion)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", imagePath, err)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return "", fmt.Errorf("release directory %s exists and is not empty: choose a new one", dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return "", fmt.Errorf("release directory: %w", err)
	}

	pw := &packWriter{dir: dir, limit: packSize}
	defer pw.abort()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))
	if err != nil {
		return "", err
	}
	defer enc.Close()
	cfg := Config{Version: meta.Version, Profile: meta.Profile, MinAgentVersion: meta.MinAgentVersion, SecurityVersion: security, Chunking: CurrentChunking()}
	seen := map[Hash]int{}
	var frame []byte
	for _, name := range names {
		part := partitionNamed(plan, name)
		if part == nil {
			return "", fmt.Errorf("image %s has no partition named %q", imagePath, name)
		}
		p := Partition{Name: name, Size: part.Size}
		whole := sha256.New()
		c := cdc.New(io.TeeReader(io.NewSectionReader(f, part.Start, part.Size), whole))
		for {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			_, data, err := c.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return "", fmt.Errorf("read partition %s of %s: %w", name, imagePath, err)
			}
			h := Hash(sha256.Sum256(data))
			i, ok := seen[h]
			if !ok {
				frame = enc.EncodeAll(data, frame[:0])
				pack, off, err := pw.add(frame)
				if err != nil {
					return "", err
				}
				i = len(cfg.Chunks)
				seen[h] = i
				cfg.Chunks = append(cfg.Chunks, ChunkRef{SHA256: h, Length: len(data), Pack: pack, Offset: off, CompressedLength: len(frame)})
			}
			p.Chunks = append(p.Chunks, i)
		}
		copy(p.SHA256[:], whole.Sum(nil))
		cfg.Partitions = append(cfg.Partitions, p)
	}
	packs, err := pw.finish()
	if err != nil {
		return "", err
	}
	cfg.Packs = packs
	if err := cfg.check(); err != nil {
		return "", fmt.Errorf("release of %s: %w", imagePath, err)
	}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	cfgDigest, err := writeBlob(dir, cfgBytes)
	if err != nil {
		return "", err
	}
	m := manifest{SchemaVersion: 2, MediaType: manifestMediaType, ArtifactType: ArtifactType,
		Config:      descriptor{MediaType: ConfigMediaType, Digest: cfgDigest, Size: int64(len(cfgBytes))},
		Annotations: map[string]string{AnnotationVersion: meta.Version}}
	for _, p := range packs {
		m.Layers = append(m.Layers, descriptor{MediaType: PackMediaType, Digest: p.Digest, Size: p.Size})
	}
	if meta.Profile != "" {
		m.Annotations[AnnotationProfile] = meta.Profile
	}
	if meta.MinAgentVersion != "" {
		m.Annotations[AnnotationMinAgent] = meta.MinAgentVersion
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	return writeLayout(dir, raw, meta.Version)
}

// errNoBuildTime: the image carries no build metadata with a build time.
var errNoBuildTime = errors.New("no build time")

// securityVersion is the release's security version: explicit when set
// (and not below the image's build time, when the image records one),
// else the image's build time.
func securityVersion(r io.ReaderAt, plan *layout.Plan, explicit int64) (int64, error) {
	if explicit < 0 {
		return 0, fmt.Errorf("security version %d is negative", explicit)
	}
	built, err := buildTime(r, plan)
	switch {
	case explicit == 0 && err != nil:
		return 0, fmt.Errorf("%w: the release's security version defaults to the image's build time; give one (provision release create --security-version N, e.g. the build's SOURCE_DATE_EPOCH)", err)
	case explicit == 0:
		return built, nil
	case err == nil && explicit < built:
		return 0, fmt.Errorf("security version %d is below the image's build time %d: robots running this image take its build time as their floor and would refuse the release; give %d or more", explicit, built, built)
	}
	return explicit, nil
}

// buildTime reads the image's build time from the metadata the image
// builder writes onto boot_a (layout.BootInfoFile).
func buildTime(r io.ReaderAt, plan *layout.Plan) (int64, error) {
	const boot = "boot_a"
	part := partitionNamed(plan, boot)
	if part == nil {
		return 0, fmt.Errorf("%w: no %s partition holds build metadata", errNoBuildTime, boot)
	}
	fsys, err := fat.Open(io.NewSectionReader(r, part.Start, part.Size), part.Size)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", errNoBuildTime, boot, err)
	}
	b, err := fsys.ReadFile(layout.BootInfoFile)
	if err != nil {
		return 0, fmt.Errorf("%w: %s has no %s (was the image made by provision image build?): %w", errNoBuildTime, boot, layout.BootInfoFile, err)
	}
	info, err := layout.ParseImageInfo(b)
	if err != nil {
		return 0, fmt.Errorf("%s/%s: %w", boot, layout.BootInfoFile, err)
	}
	if info.Created <= 0 {
		return 0, fmt.Errorf("%w: %s/%s records build time %d", errNoBuildTime, boot, layout.BootInfoFile, info.Created)
	}
	return info.Created, nil
}

func partitionNamed(plan *layout.Plan, name string) *layout.Partition {
	for i := range plan.Partitions {
		if plan.Partitions[i].Name == name {
			return &plan.Partitions[i]
		}
	}
	return nil
}

// packWriter appends zstd frames to pack files, starting a new one at
// limit bytes, and names each by its digest when done.
type packWriter struct {
	dir   string
	limit int64
	cur   *os.File
	h     hash.Hash
	n     int64
	packs []Pack
}

func (w *packWriter) add(frame []byte) (pack int, off int64, err error) {
	if w.cur != nil && w.n+int64(len(frame)) > w.limit {
		if err := w.close(); err != nil {
			return 0, 0, err
		}
	}
	if w.cur == nil {
		f, err := os.CreateTemp(filepath.Join(w.dir, "blobs", "sha256"), ".pack-*")
		if err != nil {
			return 0, 0, fmt.Errorf("pack file: %w", err)
		}
		w.cur, w.h, w.n = f, sha256.New(), 0
	}
	if _, err := w.cur.Write(frame); err != nil {
		return 0, 0, fmt.Errorf("write pack %s: %w", w.cur.Name(), err)
	}
	w.h.Write(frame)
	off = w.n
	w.n += int64(len(frame))
	return len(w.packs), off, nil
}

func (w *packWriter) close() error {
	f := w.cur
	w.cur = nil
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write pack: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	d := "sha256:" + hex.EncodeToString(w.h.Sum(nil))
	p, _ := blobPath(w.dir, d)
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	w.packs = append(w.packs, Pack{Digest: d, Size: w.n})
	return nil
}

func (w *packWriter) finish() ([]Pack, error) {
	if w.cur != nil {
		if err := w.close(); err != nil {
			return nil, err
		}
	}
	return w.packs, nil
}

func (w *packWriter) abort() {
	if w.cur != nil {
		w.cur.Close()
		os.Remove(w.cur.Name())
	}
}
