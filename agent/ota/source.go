package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/image/release"
)

// Source is where releases come from: Pull returns a release's manifest
// and config (not yet verified: the Updater verifies them), Blobs its pack
// blobs for ranged reads.
type Source interface {
	Pull(ctx context.Context, ref string) (rawManifest, config []byte, err error)
	Blobs(ctx context.Context, ref string) (release.BlobSource, error)
}

// RegistrySource pulls releases from an OCI registry (control's, or any
// other) with go-containerregistry; refs are registry/repo@sha256:… .
type RegistrySource struct {
	Options ociart.Options // Insecure, Auth, Transport (mTLS to control)
}

// Pull implements Source.
func (s RegistrySource) Pull(ctx context.Context, ref string) ([]byte, []byte, error) {
	return release.Pull(ctx, ref, s.Options)
}

// Blobs implements Source.
func (s RegistrySource) Blobs(ctx context.Context, ref string) (release.BlobSource, error) {
	return release.NewRegistrySource(ctx, ref, s.Options)
}

// DirSource reads releases from OCI layout directories (as `provision
// release create` writes them): a ref is a directory, relative to Root
// unless absolute, optionally followed by @sha256:… to pin the manifest.
type DirSource struct {
	Root string
}

func (s DirSource) dir(ref string) string {
	d, _, _ := strings.Cut(ref, "@")
	if !filepath.IsAbs(d) {
		d = filepath.Join(s.Root, d)
	}
	return d
}

// Pull implements Source.
func (s DirSource) Pull(ctx context.Context, ref string) ([]byte, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return release.ReadDir(s.dir(ref))
}

// Blobs implements Source.
func (s DirSource) Blobs(_ context.Context, ref string) (release.BlobSource, error) {
	return release.DirSource{Dir: s.dir(ref)}, nil
}

// pinnedDigest is the manifest digest a ref pins (…@sha256:<hex>), or "".
func pinnedDigest(ref string) string {
	i := strings.LastIndex(ref, "@")
	if i < 0 || !strings.HasPrefix(ref[i+1:], "sha256:") {
		return ""
	}
	return ref[i+1:]
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// countingSource counts the bytes read from a BlobSource: what an update
// actually downloads.
type countingSource struct {
	src release.BlobSource
	n   *atomic.Int64
}

func (c countingSource) OpenRange(ctx context.Context, digest string, off, length int64) (io.ReadCloser, error) {
	rc, err := c.src.OpenRange(ctx, digest, off, length)
	if err != nil {
		return nil, err
	}
	return &countingReader{rc: rc, n: c.n}, nil
}

type countingReader struct {
	rc io.ReadCloser
	n  *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (r *countingReader) Close() error { return r.rc.Close() }
