package ociart

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
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// newEncoder returns the zstd encoder every partition layer is made with.
// The options are fixed (one goroutine, default level, checksums on) so the
// compressed bytes, and hence the layer digests, depend only on the input
// and the klauspost/compress version.
func newEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderCRC(true), zstd.WithWindowSize(1<<22), zstd.WithZeroFrames(true))
}

// fileLayer is a blob stored in a local file whose digest is already known.
type fileLayer struct {
	path      string
	mediaType string
	digest    v1.Hash
	size      int64
	meter     **meter // the upload meter, set when uploading starts
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.MediaType(l.mediaType), nil }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	return l.Compressed()
}
func (l *fileLayer) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	var m *meter
	if l.meter != nil {
		m = *l.meter
	}
	return struct {
		io.Reader
		io.Closer
	}{countingReader{f, m}, f}, nil
}

func (l *fileLayer) descriptor(ann map[string]string) descriptor {
	return descriptor{MediaType: l.mediaType, Digest: l.digest.String(), Size: l.size, Annotations: ann}
}

func sha256File(path string) (v1.Hash, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer f.Close()
	return v1.SHA256(f)
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// rawManifest is what remote.Put pushes.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return manifestMediaType, nil }

// Push uploads the GPT disk image at imagePath to ref and returns the
// manifest digest ("sha256:…"). The sidecar imagePath.bmap is pushed too
// when it exists.
func Push(ctx context.Context, imagePath, ref string, meta Meta, opts Options) (string, error) {
	r, err := opts.ParseReference(ref, "image")
	if err != nil {
		return "", err
	}
	f, err := os.Open(imagePath)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat image %s: %w", imagePath, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("image %s is not a regular file: push an image file, not a device", imagePath)
	}
	size := st.Size()
	t, err := readGPT(f, size)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", imagePath, err)
	}
	tmp, err := os.MkdirTemp(opts.TempDir, "lekiwi-push-*")
	if err != nil {
		return "", fmt.Errorf("temporary directory for compressed layers (set TMPDIR or --tmp to a disk with room): %w", err)
	}
	defer os.RemoveAll(tmp)

	cfg := Config{ImageSize: size, SectorSize: t.SectorSize, DiskGUID: t.DiskGUID, Profile: meta.Profile, Version: meta.Version, Base: meta.Base}
	for _, e := range t.Entries {
		cfg.Partitions = append(cfg.Partitions, Partition{Number: e.Number, Name: e.Name, TypeGUID: e.Type, GUID: e.GUID, FirstLBA: e.FirstLBA, LastLBA: e.LastLBA, Attributes: e.Attributes})
	}

	gpt, extents, err := packOutside(ctx, f, t, size, tmp)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", imagePath, err)
	}
	parts, err := compressPartitions(ctx, f, t, tmp, opts.Progress)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", imagePath, err)
	}
	layers := []*fileLayer{gpt}
	descs := []descriptor{gpt.descriptor(map[string]string{AnnotationExtents: formatExtents(extents)})}
	for _, p := range parts {
		layers = append(layers, p.layer)
		descs = append(descs, p.layer.descriptor(map[string]string{
			AnnotationPartName: p.entry.Name,
			AnnotationPartOff:  strconv.FormatInt(int64(p.entry.FirstLBA)*t.SectorSize, 10),
			AnnotationPartSize: strconv.FormatInt(int64(p.entry.LastLBA-p.entry.FirstLBA+1)*t.SectorSize, 10),
			AnnotationPartSHA:  p.sha256,
		}))
	}
	bmapPath := imagePath + bmapSuffix
	if _, err := os.Stat(bmapPath); !errors.Is(err, os.ErrNotExist) {
		h, n, err := sha256File(bmapPath)
		if err != nil {
			return "", fmt.Errorf("sidecar %s: %w", bmapPath, err)
		}
		l := &fileLayer{path: bmapPath, mediaType: BmapMediaType, digest: h, size: n}
		layers = append(layers, l)
		descs = append(descs, l.descriptor(map[string]string{AnnotationTitle: "image" + bmapSuffix}))
	}

	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	cfgPath := tmp + "/config.json"
	if err := os.WriteFile(cfgPath, cfgBytes, 0o600); err != nil {
		return "", fmt.Errorf("write config blob: %w", err)
	}
	sum := sha256.Sum256(cfgBytes)
	cfgLayer := &fileLayer{path: cfgPath, mediaType: ConfigMediaType, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, size: int64(len(cfgBytes))}

	ann := map[string]string{}
	for k, v := range map[string]string{AnnotationVersion: meta.Version, AnnotationProfile: meta.Profile, AnnotationBase: meta.Base} {
		if v != "" {
			ann[k] = v
		}
	}
	if !meta.Created.IsZero() {
		ann[AnnotationCreated] = meta.Created.UTC().Format(time.RFC3339)
	}
	mf := manifest{SchemaVersion: 2, MediaType: manifestMediaType, ArtifactType: ArtifactType, Config: cfgLayer.descriptor(nil), Layers: descs, Annotations: ann}
	raw, err := json.Marshal(mf)
	if err != nil {
		return "", err
	}

	pusher, err := remote.NewPusher(opts.RemoteOptions(ctx, "lekiwi-provision")...)
	if err != nil {
		return "", fmt.Errorf("registry client for %s: %w", ref, err)
	}
	var total int64
	for _, l := range layers {
		total += l.size
	}
	var up *meter
	up = newMeter(opts.Progress, "upload "+r.Context().String(), total)
	defer up.Stop()
	for _, l := range append(layers, cfgLayer) {
		l.meter = &up
		if err := pusher.Upload(ctx, r.Context(), l); err != nil {
			return "", fmt.Errorf("upload %s layer %s to %s: %w", l.mediaType, l.digest, r.Context(), err)
		}
	}
	up.Finish()
	if err := pusher.Push(ctx, r, rawManifest(raw)); err != nil {
		return "", fmt.Errorf("push manifest to %s: %w", ref, err)
	}
	sum = sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// packOutside writes the image's bytes outside every partition (protective
// MBR, primary GPT, alignment gap, backup GPT) to a file in tmp, leaving out
// all-zero sectors, and returns the layer and the extents it holds.
func packOutside(ctx context.Context, f *os.File, t *gptTable, size int64, tmp string) (*fileLayer, []extent, error) {
	ents := append([]gptEntry(nil), t.Entries...)
	sort.Slice(ents, func(i, j int) bool { return ents[i].FirstLBA < ents[j].FirstLBA })
	var gaps []extent
	var pos int64
	for _, e := range ents {
		start := int64(e.FirstLBA) * t.SectorSize
		if start > pos {
			gaps = append(gaps, extent{pos, start - pos})
		}
		pos = int64(e.LastLBA+1) * t.SectorSize
	}
	if pos < size {
		gaps = append(gaps, extent{pos, size - pos})
	}
	out, err := os.Create(tmp + "/gpt")
	if err != nil {
		return nil, nil, err
	}
	defer out.Close()
	h := sha256.New()
	w := io.MultiWriter(out, h)
	var xs []extent
	buf := make([]byte, 1<<20)
	ss := t.SectorSize
	for _, g := range gaps {
		r := newHoleReader(f, g.Off, g.Len)
		for off := g.Off; off < g.Off+g.Len; {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			n, err := io.ReadFull(r, buf[:min(int64(len(buf)), g.Off+g.Len-off)])
			if err != nil {
				return nil, nil, fmt.Errorf("read bytes at %d outside the partitions: %w", off, err)
			}
			for i := 0; i < n; i += int(ss) {
				sec := buf[i:min(i+int(ss), n)]
				if sparse.IsZero(sec) {
					continue
				}
				at := off + int64(i)
				if k := len(xs) - 1; k >= 0 && xs[k].Off+xs[k].Len == at {
					xs[k].Len += int64(len(sec))
				} else {
					xs = append(xs, extent{at, int64(len(sec))})
				}
				if _, err := w.Write(sec); err != nil {
					return nil, nil, fmt.Errorf("write GPT layer: %w", err)
				}
			}
			off += int64(n)
		}
	}
	if len(xs) > maxGPTExtents {
		return nil, nil, fmt.Errorf("the bytes outside the partitions form %d separate runs, more than the %d an artifact may carry; zero the unpartitioned space", len(xs), maxGPTExtents)
	}
	var n int64
	for _, x := range xs {
		n += x.Len
	}
	return &fileLayer{path: out.Name(), mediaType: GPTMediaType, digest: hashOf(h), size: n}, xs, nil
}

type packedPartition struct {
	entry  gptEntry
	layer  *fileLayer
	sha256 string // of the uncompressed bytes
}

// compressPartitions compresses each partition to a file in tmp, several
// at once (each encoder is single-threaded so its output is stable).
func compressPartitions(ctx context.Context, f *os.File, t *gptTable, tmp string, progress io.Writer) ([]packedPartition, error) {
	var total int64
	for _, e := range t.Entries {
		total += int64(e.LastLBA-e.FirstLBA+1) * t.SectorSize
	}
	m := newMeter(progress, "compress", total)
	defer m.Stop()
	out := make([]packedPartition, len(t.Entries))
	errs := make([]error, len(t.Entries))
	sem := make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i, e := range t.Entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i], errs[i] = compressPartition(ctx, f, t, e, fmt.Sprintf("%s/part%d.zst", tmp, e.Number), m)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	m.Finish()
	return out, nil
}

func compressPartition(ctx context.Context, f *os.File, t *gptTable, e gptEntry, path string, m *meter) (packedPartition, error) {
	off := int64(e.FirstLBA) * t.SectorSize
	size := int64(e.LastLBA-e.FirstLBA+1) * t.SectorSize
	dst, err := os.Create(path)
	if err != nil {
		return packedPartition{}, err
	}
	defer dst.Close()
	ch := sha256.New()
	enc, err := newEncoder(io.MultiWriter(dst, ch))
	if err != nil {
		return packedPartition{}, err
	}
	uh := sha256.New()
	src := countingReader{newHoleReader(f, off, size), m}
	buf := make([]byte, 1<<20)
	var done int64
	for done < size {
		if err := ctx.Err(); err != nil {
			return packedPartition{}, err
		}
		n, err := io.ReadFull(src, buf[:min(int64(len(buf)), size-done)])
		if err != nil {
			return packedPartition{}, fmt.Errorf("read partition %d (%s) at byte %d: %w", e.Number, e.Name, off+done, err)
		}
		uh.Write(buf[:n])
		if _, err := enc.Write(buf[:n]); err != nil {
			return packedPartition{}, fmt.Errorf("compress partition %d (%s): %w", e.Number, e.Name, err)
		}
		done += int64(n)
	}
	if err := enc.Close(); err != nil {
		return packedPartition{}, fmt.Errorf("compress partition %d (%s): %w", e.Number, e.Name, err)
	}
	st, err := dst.Stat()
	if err != nil {
		return packedPartition{}, err
	}
	return packedPartition{entry: e, sha256: hex.EncodeToString(uh.Sum(nil)),
		layer: &fileLayer{path: path, mediaType: PartitionMediaType, digest: hashOf(ch), size: st.Size()}}, nil
}
