package release

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// A release on disk is an OCI image layout directory (the format of
// `oras`, `skopeo copy oci:` and go-containerregistry's layout package):
// oci-layout, index.json naming one manifest, blobs/sha256/<hex>.

const (
	indexMediaType = "application/vnd.oci.image.index.v1+json"
	refNameAnn     = "org.opencontainers.image.ref.name"
)

type ociIndex struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

func blobPath(dir, digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	var h Hash
	if !ok || h.UnmarshalText([]byte(hexPart)) != nil {
		return "", fmt.Errorf("digest %q is not sha256:<64 hex>", digest)
	}
	return filepath.Join(dir, "blobs", "sha256", hexPart), nil
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// writeBlob stores b under its digest.
func writeBlob(dir string, b []byte) (string, error) {
	d := digestOf(b)
	p, _ := blobPath(dir, d)
	if err := writeFileAtomic(p, b); err != nil {
		return "", err
	}
	return d, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readBlob reads a blob of the layout and checks its digest.
func readBlob(dir, digest string, limit int64) ([]byte, error) {
	p, err := blobPath(dir, digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("release directory %s: blob %s: %w", dir, digest, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", digest, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("blob %s is larger than %d bytes", digest, limit)
	}
	if digestOf(b) != digest {
		return nil, fmt.Errorf("blob %s in %s does not match its digest: corrupted or tampered", digest, dir)
	}
	return b, nil
}

// writeLayout writes oci-layout and index.json naming rawManifest, which
// it stores as a blob; a previous manifest blob is removed.
func writeLayout(dir string, rawManifest []byte, version string) (string, error) {
	if err := writeFileAtomic(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return "", err
	}
	old, _ := readIndex(dir)
	d, err := writeBlob(dir, rawManifest)
	if err != nil {
		return "", err
	}
	ann := map[string]string{}
	if version != "" {
		ann[refNameAnn] = version
	}
	idx := ociIndex{SchemaVersion: 2, MediaType: indexMediaType, Manifests: []descriptor{{
		MediaType: manifestMediaType, Digest: d, Size: int64(len(rawManifest)), ArtifactType: ArtifactType, Annotations: ann}}}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, "index.json"), b); err != nil {
		return "", err
	}
	if old != nil && old.Digest != d {
		if p, err := blobPath(dir, old.Digest); err == nil {
			os.Remove(p)
		}
	}
	return d, nil
}

func readIndex(dir string) (*descriptor, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a release directory (made by `provision release create`): %w", dir, err)
	}
	var idx ociIndex
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%s/index.json: %w", dir, err)
	}
	var found *descriptor
	for i, m := range idx.Manifests {
		if m.MediaType == manifestMediaType && (m.ArtifactType == ArtifactType || m.ArtifactType == "") {
			if found != nil {
				return nil, fmt.Errorf("%s/index.json names several manifests; a release directory holds one", dir)
			}
			found = &idx.Manifests[i]
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%s/index.json names no release manifest", dir)
	}
	return found, nil
}

// ReadDir reads the manifest and config of the release in the OCI layout
// directory dir, checking both against their digests (not the signature:
// call Verify for that).
func ReadDir(dir string) (rawManifest, config []byte, err error) {
	d, err := readIndex(dir)
	if err != nil {
		return nil, nil, err
	}
	rawManifest, err = readBlob(dir, d.Digest, maxManifestBytes)
	if err != nil {
		return nil, nil, err
	}
	m, err := parseManifest(rawManifest)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", dir, err)
	}
	config, err = readBlob(dir, m.Config.Digest, MaxConfigBytes)
	if err != nil {
		return nil, nil, err
	}
	return rawManifest, config, nil
}

// SignDir signs the release in dir with priv, rewriting its manifest, and
// returns the new manifest digest.
func SignDir(dir string, priv ed25519.PrivateKey) (string, error) {
	raw, cfg, err := ReadDir(dir)
	if err != nil {
		return "", err
	}
	signed, err := Sign(priv, raw, cfg)
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", dir, err)
	}
	c, err := ParseConfig(cfg)
	if err != nil {
		return "", err
	}
	return writeLayout(dir, signed, c.Version)
}

// DirSource serves a release directory's blobs to a Fetcher.
type DirSource struct{ Dir string }

// OpenRange opens length bytes at off of a blob.
func (s DirSource) OpenRange(ctx context.Context, digest string, off, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := blobPath(s.Dir, digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("release directory %s: %w", s.Dir, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if off < 0 || length < 0 || off+length > st.Size() {
		f.Close()
		return nil, errors.New("range outside the blob")
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, length), f}, nil
}
