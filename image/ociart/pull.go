package ociart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/zstd"
)

// Pull fetches the image artifact at ref and writes it to imagePath:
// first to imagePath.partial, sparsely, checking every layer's digest and
// every partition's sha256, then fsynced and renamed. The block map in the
// artifact is written next to it (imagePath.bmap); a stale one from an
// earlier image is removed. On error nothing is left at imagePath or its
// .partial names.
func Pull(ctx context.Context, ref, imagePath string, opts Options) (Meta, error) {
	r, err := opts.ParseReference(ref, "image")
	if err != nil {
		return Meta{}, err
	}
	puller, err := remote.NewPuller(opts.RemoteOptions(ctx, "lekiwi-provision")...)
	if err != nil {
		return Meta{}, fmt.Errorf("registry client for %s: %w", ref, err)
	}
	desc, err := puller.Get(ctx, r)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return Meta{}, fmt.Errorf("no image %s in the registry (check the repository and tag): %w", ref, err)
		}
		return Meta{}, fmt.Errorf("fetch manifest %s: %w", ref, err)
	}
	mf, err := parseManifest(desc.Manifest, string(desc.MediaType))
	if err != nil {
		return Meta{}, fmt.Errorf("%s: %w", ref, err)
	}
	fetch := func(d descriptor) (io.ReadCloser, error) {
		h, err := v1.NewHash(d.Digest)
		if err != nil {
			return nil, err
		}
		l, err := puller.Layer(ctx, r.Context().Digest(h.String()))
		if err != nil {
			return nil, err
		}
		// remote layers check the digest and size as the last byte is read.
		return l.Compressed()
	}
	cfg, err := fetchConfig(mf.Config, fetch)
	if err != nil {
		return Meta{}, fmt.Errorf("%s: %w", ref, err)
	}
	plan, err := planPull(mf, cfg)
	if err != nil {
		return Meta{}, fmt.Errorf("%s: %w", ref, err)
	}
	meta := Meta{Profile: cfg.Profile, Version: cfg.Version, Base: cfg.Base}
	if c := mf.Annotations[AnnotationCreated]; c != "" {
		if t, err := time.Parse(time.RFC3339, c); err == nil {
			meta.Created = t
		}
	}
	if err := writeImage(ctx, imagePath, cfg, plan, fetch, opts.Progress); err != nil {
		return Meta{}, fmt.Errorf("pull %s to %s: %w", ref, imagePath, err)
	}
	return meta, nil
}

// parseManifest checks that raw is an OCI manifest of a Lekiwi image.
func parseManifest(raw []byte, mediaType string) (*manifest, error) {
	var mf manifest
	if err := json.Unmarshal(raw, &mf); err != nil {
		return nil, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if mediaType != "" && mediaType != manifestMediaType {
		return nil, fmt.Errorf("is a %s, not a Lekiwi disk image (want an OCI manifest with artifactType %s pushed by `provision image push`)", mediaType, ArtifactType)
	}
	if mf.ArtifactType != ArtifactType && mf.Config.MediaType != ConfigMediaType {
		at := mf.ArtifactType
		if at == "" {
			at = mf.Config.MediaType
		}
		return nil, fmt.Errorf("is an artifact of type %q, not a Lekiwi disk image (%s); is this a container image?", at, ArtifactType)
	}
	if mf.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("config has media type %q, want %s", mf.Config.MediaType, ConfigMediaType)
	}
	if len(mf.Layers) > maxManifestLayers {
		return nil, fmt.Errorf("%d layers, at most %d expected", len(mf.Layers), maxManifestLayers)
	}
	return &mf, nil
}

func fetchConfig(d descriptor, fetch func(descriptor) (io.ReadCloser, error)) (*Config, error) {
	if d.Size <= 0 || d.Size > maxConfigBytes {
		return nil, fmt.Errorf("config blob of %d bytes (at most %d)", d.Size, maxConfigBytes)
	}
	rc, err := fetch(d)
	if err != nil {
		return nil, fmt.Errorf("fetch config blob %s: %w", d.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch config blob %s: %w", d.Digest, err)
	}
	sum := sha256.Sum256(b)
	if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest {
		return nil, fmt.Errorf("config blob does not match its digest %s", d.Digest)
	}
	return parseConfig(b)
}

// parseConfig reads and checks a config blob.
func parseConfig(b []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("config blob: %w", err)
	}
	if c.SectorSize != 512 && c.SectorSize != 4096 {
		return nil, fmt.Errorf("config: sector size %d, want 512 or 4096", c.SectorSize)
	}
	if c.ImageSize <= 0 || c.ImageSize > maxImageSize || c.ImageSize%c.SectorSize != 0 {
		return nil, fmt.Errorf("config: image size %d is not a positive multiple of %d below %d", c.ImageSize, c.SectorSize, maxImageSize)
	}
	if len(c.Partitions) == 0 || len(c.Partitions) > maxManifestLayers {
		return nil, fmt.Errorf("config: %d partitions", len(c.Partitions))
	}
	sectors := uint64(c.ImageSize / c.SectorSize)
	for _, p := range c.Partitions {
		if p.LastLBA < p.FirstLBA || p.LastLBA >= sectors {
			return nil, fmt.Errorf("config: partition %d (%s) spans LBA %d..%d outside the %d-sector image", p.Number, p.Name, p.FirstLBA, p.LastLBA, sectors)
		}
	}
	return &c, nil
}

type pullPart struct {
	d        descriptor
	name     string
	off, len int64
	sha256   string
}

type pullPlan struct {
	gpt     descriptor
	extents []extent
	parts   []pullPart
	bmap    *descriptor // the block map layer, if the artifact has one
}

// planPull checks the layers against the config: one GPT layer whose
// extents avoid the partitions, one layer per partition at the offset and
// size the config gives, at most one block map.
func planPull(mf *manifest, c *Config) (*pullPlan, error) {
	p := &pullPlan{}
	byName := map[string]Partition{}
	for _, part := range c.Partitions {
		byName[part.Name] = part
	}
	seen := map[string]bool{}
	gpts := 0
	for _, l := range mf.Layers {
		if l.Size < 0 {
			return nil, fmt.Errorf("layer %s has negative size", l.Digest)
		}
		switch l.MediaType {
		case GPTMediaType:
			gpts++
			xs, err := parseExtents(l.Annotations[AnnotationExtents], c.ImageSize)
			if err != nil {
				return nil, fmt.Errorf("GPT layer: %w", err)
			}
			var n int64
			for _, x := range xs {
				n += x.Len
			}
			if n != l.Size {
				return nil, fmt.Errorf("GPT layer holds %d bytes but its extents add up to %d", l.Size, n)
			}
			p.gpt, p.extents = l, xs
		case PartitionMediaType:
			name := l.Annotations[AnnotationPartName]
			cp, ok := byName[name]
			if !ok || seen[name] {
				return nil, fmt.Errorf("partition layer %q is not in the config's partition table or appears twice", name)
			}
			seen[name] = true
			off, err1 := strconv.ParseInt(l.Annotations[AnnotationPartOff], 10, 64)
			size, err2 := strconv.ParseInt(l.Annotations[AnnotationPartSize], 10, 64)
			if err1 != nil || err2 != nil || off != int64(cp.FirstLBA)*c.SectorSize || size != int64(cp.LastLBA-cp.FirstLBA+1)*c.SectorSize {
				return nil, fmt.Errorf("partition layer %q: offset %q size %q do not match the partition table", name, l.Annotations[AnnotationPartOff], l.Annotations[AnnotationPartSize])
			}
			sum := l.Annotations[AnnotationPartSHA]
			if b, err := hex.DecodeString(sum); err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("partition layer %q: %s annotation %q is not a sha256", name, AnnotationPartSHA, sum)
			}
			p.parts = append(p.parts, pullPart{d: l, name: name, off: off, len: size, sha256: sum})
		case BmapMediaType:
			if p.bmap != nil {
				return nil, fmt.Errorf("two %s layers", l.MediaType)
			}
			p.bmap = &l
		case retiredBlockIndexType:
			// Nothing reads it any more; see retiredBlockIndexType.
		default:
			return nil, fmt.Errorf("unknown layer media type %q: this artifact was made by a newer `provision`; upgrade it", l.MediaType)
		}
	}
	if gpts != 1 {
		return nil, fmt.Errorf("%d GPT layers, want exactly one", gpts)
	}
	if len(seen) != len(c.Partitions) {
		return nil, fmt.Errorf("%d partition layers for %d partitions in the table", len(seen), len(c.Partitions))
	}
	// Every region written must be disjoint from every other.
	var all []extent
	all = append(all, p.extents...)
	for _, pp := range p.parts {
		all = append(all, extent{pp.off, pp.len})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Off < all[j].Off })
	for i := 1; i < len(all); i++ {
		if all[i-1].Off+all[i-1].Len > all[i].Off {
			return nil, fmt.Errorf("layers overlap at byte %d", all[i].Off)
		}
	}
	return p, nil
}

func writeImage(ctx context.Context, imagePath string, c *Config, p *pullPlan, fetch func(descriptor) (io.ReadCloser, error), progress io.Writer) (err error) {
	partial := imagePath + ".partial"
	var created []string
	defer func() {
		if err != nil {
			for _, f := range created {
				os.Remove(f)
			}
		}
	}()
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", partial, err)
	}
	created = append(created, partial)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	if err := f.Truncate(c.ImageSize); err != nil {
		return fmt.Errorf("size %s to %d bytes (is the disk full?): %w", partial, c.ImageSize, err)
	}
	var total int64
	for _, pp := range p.parts {
		total += pp.len
	}
	m := newMeter(progress, "pull", total)
	defer m.Stop()

	// Bytes outside the partitions.
	rc, err := fetch(p.gpt)
	if err != nil {
		return fmt.Errorf("fetch GPT layer: %w", err)
	}
	for _, x := range p.extents {
		if _, err := io.CopyN(&sparseWriter{f: f, off: x.Off}, rc, x.Len); err != nil {
			rc.Close()
			return fmt.Errorf("GPT layer %s is corrupted or cut short (push the image again): %w", p.gpt.Digest, err)
		}
	}
	if err := expectEOF(rc); err != nil {
		rc.Close()
		return fmt.Errorf("GPT layer %s is corrupted (push the image again): %w", p.gpt.Digest, err)
	}
	rc.Close()

	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27))
	if err != nil {
		return err
	}
	defer dec.Close()
	for _, pp := range p.parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := pullPartition(f, pp, dec, fetch, m); err != nil {
			return err
		}
	}
	m.Finish()
	if _, err := readGPT(f, c.ImageSize); err != nil {
		return fmt.Errorf("pulled image has no valid GPT: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", partial, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", partial, err)
	}
	f = nil

	bmapPath := imagePath + bmapSuffix
	if p.bmap != nil {
		created = append(created, bmapPath+".partial")
		if err := pullFile(bmapPath+".partial", *p.bmap, fetch); err != nil {
			return err
		}
	}
	// Block map first, image last: an image at imagePath always has its
	// own block map (or none) next to it.
	if p.bmap != nil {
		if err := os.Rename(bmapPath+".partial", bmapPath); err != nil {
			return err
		}
	} else if err := os.Remove(bmapPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale sidecar: %w", err)
	}
	if err := os.Rename(partial, imagePath); err != nil {
		return err
	}
	return syncDir(filepath.Dir(imagePath))
}

func pullPartition(f *os.File, pp pullPart, dec *zstd.Decoder, fetch func(descriptor) (io.ReadCloser, error), m *meter) error {
	rc, err := fetch(pp.d)
	if err != nil {
		return fmt.Errorf("fetch partition %s layer: %w", pp.name, err)
	}
	defer rc.Close()
	if err := dec.Reset(rc); err != nil {
		return fmt.Errorf("partition %s layer %s: %w", pp.name, pp.d.Digest, err)
	}
	h := sha256.New()
	w := io.MultiWriter(&sparseWriter{f: f, off: pp.off}, h)
	n, err := io.Copy(w, countingReader{io.LimitReader(dec, pp.len+1), m})
	if err != nil {
		return fmt.Errorf("partition %s layer %s is corrupted or cut short (push the image again): %w", pp.name, pp.d.Digest, err)
	}
	if n != pp.len {
		return fmt.Errorf("partition %s layer %s decompresses to %d bytes, the partition has %d", pp.name, pp.d.Digest, n, pp.len)
	}
	// Read the compressed stream to its end so the registry digest is checked.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("partition %s layer %s: %w", pp.name, pp.d.Digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != pp.sha256 {
		return fmt.Errorf("partition %s: sha256 %s, the artifact says %s (corrupted layer)", pp.name, got, pp.sha256)
	}
	return nil
}

func pullFile(path string, d descriptor, fetch func(descriptor) (io.ReadCloser, error)) error {
	rc, err := fetch(d)
	if err != nil {
		return fmt.Errorf("fetch %s layer: %w", d.MediaType, err)
	}
	defer rc.Close()
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	n, err := io.Copy(out, io.LimitReader(rc, d.Size+1))
	if err != nil {
		return fmt.Errorf("%s layer %s: %w", d.MediaType, d.Digest, err)
	}
	if n != d.Size {
		return fmt.Errorf("%s layer %s has %d bytes, the manifest says %d", d.MediaType, d.Digest, n, d.Size)
	}
	if err := expectEOF(rc); err != nil {
		return fmt.Errorf("%s layer %s: %w", d.MediaType, d.Digest, err)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// expectEOF reads r to its end: it must hold nothing more, and reading the
// end is what makes a remote layer verify its digest.
func expectEOF(r io.Reader) error {
	var b [1]byte
	n, err := io.ReadFull(r, b[:])
	if n > 0 {
		return errors.New("layer is longer than the manifest says")
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
