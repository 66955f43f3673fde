package release

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lekiwi/heartbeat/image/ociart"
)

// Registry access goes through ociart.Options (Insecure, Auth, Transport)
// and its ParseReference and RemoteOptions, so the CLI's registry flags
// serve images and releases alike.

// blobFile is a layout blob uploaded by remote.Pusher.
type blobFile struct {
	path, mediaType string
	digest          v1.Hash
	size            int64
}

func (b *blobFile) Digest() (v1.Hash, error)            { return b.digest, nil }
func (b *blobFile) DiffID() (v1.Hash, error)            { return b.digest, nil }
func (b *blobFile) Size() (int64, error)                { return b.size, nil }
func (b *blobFile) MediaType() (types.MediaType, error) { return types.MediaType(b.mediaType), nil }
func (b *blobFile) Uncompressed() (io.ReadCloser, error) {
	return os.Open(b.path)
}
func (b *blobFile) Compressed() (io.ReadCloser, error) { return os.Open(b.path) }

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return manifestMediaType, nil }

// Push uploads the release in directory dir to ref (signed or not: the
// robots check) and returns the manifest digest. Blobs the registry has
// already are not uploaded again.
func Push(ctx context.Context, dir, ref string, o ociart.Options) (string, error) {
	r, err := o.ParseReference(ref, "release")
	if err != nil {
		return "", err
	}
	raw, _, err := ReadDir(dir)
	if err != nil {
		return "", err
	}
	m, err := parseManifest(raw)
	if err != nil {
		return "", err
	}
	pusher, err := remote.NewPusher(o.RemoteOptions(ctx, "lekiwi-release")...)
	if err != nil {
		return "", fmt.Errorf("registry client for %s: %w", ref, err)
	}
	for _, d := range append(append([]descriptor{}, m.Layers...), m.Config) {
		p, err := blobPath(dir, d.Digest)
		if err != nil {
			return "", err
		}
		h, _ := v1.NewHash(d.Digest)
		if err := pusher.Upload(ctx, r.Context(), &blobFile{path: p, mediaType: d.MediaType, digest: h, size: d.Size}); err != nil {
			return "", fmt.Errorf("upload blob %s to %s: %w", d.Digest, r.Context(), err)
		}
	}
	if err := pusher.Push(ctx, r, rawManifest(raw)); err != nil {
		return "", fmt.Errorf("push release manifest to %s: %w", ref, err)
	}
	return digestOf(raw), nil
}

// Pull fetches a release's manifest and config blob from a registry,
// checking both against their digests (not the signature: call Verify).
func Pull(ctx context.Context, ref string, o ociart.Options) (rawManifest, config []byte, err error) {
	r, err := o.ParseReference(ref, "release")
	if err != nil {
		return nil, nil, err
	}
	puller, err := remote.NewPuller(o.RemoteOptions(ctx, "lekiwi-release")...)
	if err != nil {
		return nil, nil, fmt.Errorf("registry client for %s: %w", ref, err)
	}
	desc, err := puller.Get(ctx, r)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return nil, nil, fmt.Errorf("no release %s in the registry (check the repository and tag): %w", ref, err)
		}
		return nil, nil, fmt.Errorf("fetch release manifest %s: %w", ref, err)
	}
	raw := desc.Manifest
	m, err := parseManifest(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", ref, err)
	}
	if m.Config.Size <= 0 || m.Config.Size > MaxConfigBytes {
		return nil, nil, fmt.Errorf("%s: config blob of %d bytes (at most %d)", ref, m.Config.Size, MaxConfigBytes)
	}
	l, err := puller.Layer(ctx, r.Context().Digest(m.Config.Digest))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch release config %s: %w", m.Config.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, fmt.Errorf("fetch release config %s: %w", m.Config.Digest, err)
	}
	defer rc.Close()
	config, err = io.ReadAll(io.LimitReader(rc, m.Config.Size+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch release config %s: %w", m.Config.Digest, err)
	}
	if err := checkConfigBlob(m, config); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", ref, err)
	}
	return raw, config, nil
}

// RegistrySource serves byte ranges of a repository's blobs with HTTP
// Range requests (GET /v2/<repo>/blobs/<digest>, "Range: bytes=a-b"), the
// way the OCI distribution spec allows and docker-registry implements.
type RegistrySource struct {
	client *http.Client
	base   string // scheme://registry/v2/repository/blobs/
}

// NewRegistrySource connects to ref's registry (authenticating for pull)
// and serves blobs of ref's repository.
func NewRegistrySource(ctx context.Context, ref string, o ociart.Options) (*RegistrySource, error) {
	r, err := o.ParseReference(ref, "release")
	if err != nil {
		return nil, err
	}
	repo := r.Context()
	auth := o.Auth
	if auth == nil {
		if auth, err = authn.DefaultKeychain.Resolve(repo.Registry); err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
		}
	}
	base := o.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, base, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("connect to registry %s: %w", repo.RegistryStr(), err)
	}
	return &RegistrySource{client: &http.Client{Transport: tr},
		base: fmt.Sprintf("%s://%s/v2/%s/blobs/", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr())}, nil
}

// OpenRange returns length bytes of the blob at off. The server must answer
// 206 with that range: a server that ignores Range would send the whole
// blob, which is what delta updates exist to avoid, so that is an error.
func (s *RegistrySource) OpenRange(ctx context.Context, digest string, off, length int64) (io.ReadCloser, error) {
	if off < 0 || length <= 0 {
		return nil, fmt.Errorf("blob range %d+%d is empty or negative", off, length)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+digest, nil)
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("bytes %d-%d/", off, off+length-1)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch blob %s bytes %d+%d: %w", digest, off, length, err)
	}
	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		return nil, fmt.Errorf("fetch blob %s bytes %d+%d: registry answered %s, not 206 Partial Content (it must support Range requests on blobs)", digest, off, length, resp.Status)
	}
	if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, want) {
		resp.Body.Close()
		return nil, fmt.Errorf("fetch blob %s: asked for %s…, registry sent Content-Range %q", digest, want, cr)
	}
	if cl := resp.Header.Get("Content-Length"); cl != "" && cl != strconv.FormatInt(length, 10) {
		resp.Body.Close()
		return nil, fmt.Errorf("fetch blob %s: asked for %d bytes, registry sends %s", digest, length, cl)
	}
	return resp.Body, nil
}

// ManifestJSON pretty-prints a raw manifest (for inspect).
func ManifestJSON(raw []byte) ([]byte, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return json.MarshalIndent(v, "", "  ")
}
