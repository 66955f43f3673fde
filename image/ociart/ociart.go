// Package ociart ships built A/B disk images through OCI registries as
// artifacts: one zstd layer per GPT partition, one layer for the bytes
// outside the partitions (protective MBR, primary and backup GPT), the
// block map sidecar as a layer, and a config blob that
// records the partition table. Pull rebuilds the image byte for byte,
// sparsely, and refuses anything whose digests or checksums do not match.
//
// Pushes are reproducible: the same image, Meta and library versions give
// the same manifest digest, so a registry deduplicates unchanged partitions
// and a re-push is a no-op.
package ociart

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Media types of the artifact.
const (
	ArtifactType       = "application/vnd.lekiwi.image.v1"
	ConfigMediaType    = "application/vnd.lekiwi.image.config.v1+json"
	GPTMediaType       = "application/vnd.lekiwi.image.gpt.v1"
	PartitionMediaType = "application/vnd.lekiwi.image.partition.v1.raw+zstd"
	BmapMediaType      = "application/vnd.lekiwi.image.bmap.v2+xml"
	manifestMediaType  = "application/vnd.oci.image.manifest.v1+json"
	// retiredBlockIndexType is the layer of the 64 KiB block hash index
	// that pushes carried until nothing was found to read it (OTA deltas
	// use image/release/cdc). Pull skips it so artifacts already in a
	// registry stay pullable.
	retiredBlockIndexType = "application/vnd.lekiwi.image.blockindex.v1"
)

// Annotation keys.
const (
	AnnotationVersion        = "org.opencontainers.image.version"
	AnnotationCreated        = "org.opencontainers.image.created"
	AnnotationProfile        = "org.lekiwi.image.profile"
	AnnotationBase           = "org.lekiwi.image.base"
	AnnotationPartName       = "org.lekiwi.partition.name"
	AnnotationPartOff        = "org.lekiwi.partition.offset"
	AnnotationPartSize       = "org.lekiwi.partition.size"
	AnnotationPartSHA        = "org.lekiwi.partition.sha256"
	AnnotationExtents        = "org.lekiwi.image.gpt.extents" // "offset+length,…" of the bytes the GPT layer holds, in order
	AnnotationTitle          = "org.opencontainers.image.title"
	bmapSuffix               = ".bmap"
	maxConfigBytes           = 1 << 20
	maxManifestLayers        = 256
	maxGPTExtents            = 4096
	maxImageSize       int64 = 1 << 44 // 16 TiB: far beyond any SD card or NVMe a robot has
)

// Meta describes an image; it goes into the config blob and the manifest's
// annotations.
type Meta struct {
	Profile string
	Version string
	Base    string
	// Created is the build time (SOURCE_DATE_EPOCH); the zero time leaves
	// the annotation out. Never time.Now: it would change the digest.
	Created time.Time
}

// Options tune a push or pull.
type Options struct {
	// Insecure allows plain HTTP to the registry.
	Insecure bool
	// Auth authenticates to the registry; nil uses the Docker keychain
	// (~/.docker/config.json, credential helpers) and anonymous access.
	Auth authn.Authenticator
	// Progress receives progress: bars when it is a terminal, a plain line
	// every few seconds otherwise. Nil is silent.
	Progress io.Writer
	// Transport replaces the HTTP transport (custom CAs, client
	// certificates).
	Transport http.RoundTripper
	// TempDir holds the compressed layers while pushing; empty means
	// os.TempDir().
	TempDir string
}

// ParseReference parses ref, a kind ("image", "release") of artifact's
// registry/repository:tag, allowing plain HTTP when o.Insecure.
func (o Options) ParseReference(ref, kind string) (name.Reference, error) {
	var no []name.Option
	if o.Insecure {
		no = append(no, name.Insecure)
	}
	r, err := name.ParseReference(ref, no...)
	if err != nil {
		return nil, fmt.Errorf("%s reference %q: %w (want registry/repository:tag, e.g. control.local:8443/lekiwi/%s:1.2.0)", kind, ref, err, kind)
	}
	return r, nil
}

// RemoteOptions are the registry client options for o, sent as userAgent:
// o.Auth, else the Docker keychain, and o.Transport when set.
func (o Options) RemoteOptions(ctx context.Context, userAgent string) []remote.Option {
	ro := []remote.Option{remote.WithContext(ctx), remote.WithUserAgent(userAgent)}
	if o.Auth != nil {
		ro = append(ro, remote.WithAuth(o.Auth))
	} else {
		ro = append(ro, remote.WithAuthFromKeychain(authn.DefaultKeychain))
	}
	if o.Transport != nil {
		ro = append(ro, remote.WithTransport(o.Transport))
	}
	return ro
}

// Config is the artifact's config blob.
type Config struct {
	ImageSize  int64       `json:"imageSize"`
	SectorSize int64       `json:"sectorSize"`
	DiskGUID   string      `json:"diskGUID"`
	Partitions []Partition `json:"partitions"`
	Profile    string      `json:"profile,omitempty"`
	Version    string      `json:"version,omitempty"`
	Base       string      `json:"base,omitempty"`
}

// Partition is one GPT entry as recorded in the config.
type Partition struct {
	Number     int    `json:"number"`
	Name       string `json:"name"`
	TypeGUID   string `json:"typeGUID"`
	GUID       string `json:"partitionGUID"`
	FirstLBA   uint64 `json:"firstLBA"`
	LastLBA    uint64 `json:"lastLBA"`
	Attributes uint64 `json:"attributes"`
}

// descriptor and manifest are the OCI image manifest v1.1 fields we write
// and read; field order is the JSON order, so the bytes are stable.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// extent is a byte range of the image.
type extent struct{ Off, Len int64 }

func formatExtents(xs []extent) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%d+%d", x.Off, x.Len)
	}
	return strings.Join(parts, ",")
}

// parseExtents reads formatExtents' output, checking every range lies in
// [0, size), in increasing order and without overlap.
func parseExtents(s string, size int64) ([]extent, error) {
	if s == "" {
		return nil, nil
	}
	fields := strings.Split(s, ",")
	if len(fields) > maxGPTExtents {
		return nil, fmt.Errorf("%d extents, at most %d allowed", len(fields), maxGPTExtents)
	}
	var xs []extent
	var prevEnd int64
	for _, f := range fields {
		o, l, ok := strings.Cut(f, "+")
		if !ok {
			return nil, fmt.Errorf("extent %q is not offset+length", f)
		}
		off, err1 := strconv.ParseInt(o, 10, 64)
		n, err2 := strconv.ParseInt(l, 10, 64)
		if err1 != nil || err2 != nil || off < prevEnd || n <= 0 || n > size || off > size-n {
			return nil, fmt.Errorf("extent %q is outside the %d-byte image or out of order", f, size)
		}
		prevEnd = off + n
		xs = append(xs, extent{off, n})
	}
	return xs, nil
}
