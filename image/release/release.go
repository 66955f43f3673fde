// Package release is the over-the-air update artifact: the boot and system
// partitions of a built A/B image, cut into content-defined chunks so a
// robot downloads only the chunks it does not already have, signed with
// Ed25519 so a robot installs only what a key baked into its image vouches
// for, and stored as an OCI artifact so any registry (control's, a Docker
// registry, a cloud one) carries it.
//
// # Artifact
//
// An OCI image manifest with artifactType application/vnd.lekiwi.release.v1:
//
//   - config (ConfigMediaType): the Config JSON below — metadata and the
//     whole chunk index;
//   - layers (PackMediaType): pack blobs, each the concatenation of
//     independent zstd frames, one per distinct chunk;
//   - annotation AnnotationSignatures: the detached Ed25519 signatures.
//
// # Chunks and the index
//
// Each partition (boot_a, system_a, boot_b, system_b as the build wrote
// them: the slots differ in cmdline.txt and fstab, and carrying both costs
// only their differing chunks since identical chunks are stored once) is cut
// with package cdc (FastCDC, 16/64/256 KiB). Config.Chunks is the table of
// distinct chunks — sha256 and length of the uncompressed bytes, and where
// its zstd frame sits (pack, offset, compressed length); a partition is the
// ordered list of indexes into that table, with its size and sha256.
// A robot chunks its active slot the same way (Chunk), so it knows which
// chunks it has by hash even when an ext4 rebuild moved data; it fetches the
// others with HTTP Range requests on the pack blobs (Fetcher), adjacent
// missing frames coalesced into one request. Packs hold chunks in order of
// first use, so a changed file's new chunks are usually adjacent.
//
// # Signature
//
// The signature covers the bytes of SignedPayload: a domain-separation
// prefix, the artifact type and the config blob's descriptor digest and
// size. The config digest pins the whole index (every chunk hash, every
// pack digest) and the metadata; the layers are checked against the
// config's pack list, so nothing in the artifact is outside the signature's
// reach, and the signed bytes are small and fixed-form (no JSON
// canonicalization). Signatures live in a manifest annotation rather than a
// second artifact with a subject: annotations travel with every push, pull,
// copy and OCI layout, need no referrers API (Debian's docker-registry has
// none), and the updater gets them with the manifest it must fetch anyway.
// Adding a signature changes the manifest digest but not the config digest
// the signature is over, so signing is repeatable (key rotation: several
// signatures, one per key).
//
// Verify refuses a manifest whose signatures do not include a valid one by a
// trusted key, or whose config does not match its digest, before the
// updater writes anything; the Fetcher checks each chunk's sha256 as it
// arrives and each partition's sha256 as it is produced.
//
// # Security version
//
// A valid signature says a release was approved once, not that it is still
// safe: an old release with a known hole stays validly signed. The config's
// SecurityVersion, covered by the signature, lets a robot refuse to go back
// below what it already ran. Create defaults it to the image's build time
// (image.json's created, SOURCE_DATE_EPOCH), so each build supersedes the
// ones before it with nobody counting, and the same image still gives the
// same release.
package release

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/lekiwi/heartbeat/image/release/cdc"
)

// Media types.
const (
	ArtifactType      = "application/vnd.lekiwi.release.v1"
	ConfigMediaType   = "application/vnd.lekiwi.release.config.v1+json"
	PackMediaType     = "application/vnd.lekiwi.release.pack.v1.zstd-frames"
	manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
)

// Manifest annotations.
const (
	AnnotationVersion    = "org.opencontainers.image.version"
	AnnotationProfile    = "org.lekiwi.release.profile"
	AnnotationMinAgent   = "org.lekiwi.release.min-agent-version"
	AnnotationSignatures = "org.lekiwi.release.signatures"
)

// Limits on what a config may describe, so parsing untrusted bytes stays
// bounded.
const (
	MaxConfigBytes   = 64 << 20
	maxManifestBytes = 4 << 20
	maxChunks        = 1 << 23 // 512 GiB at the average chunk size
	maxPartitions    = 16
	maxPacks         = 256
	maxPartitionSize = 1 << 40
	maxPackSize      = 1 << 40
	maxNameLen       = 64
	maxMetaLen       = 256
)

// Hash is a sha256.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText writes the hash in hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads 64 hex digits.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("sha256 %q is not 64 hex digits", b)
	}
	_, err := hex.Decode(h[:], b)
	if err != nil {
		return fmt.Errorf("sha256 %q: %w", b, err)
	}
	return nil
}

// Config is the config blob: metadata and the chunk index.
type Config struct {
	Version         string `json:"version"`
	Profile         string `json:"profile,omitempty"`
	MinAgentVersion string `json:"minAgentVersion,omitempty"`
	// SecurityVersion orders releases for downgrade protection: a robot
	// refuses a release below the highest security version it committed
	// or the build time of the image it runs, unless an engineer asks for
	// the downgrade. It is the image's build time (Unix seconds) unless
	// the release's maker raised it. A release without one (made before
	// security versions) counts as 0: every robot takes it for a downgrade.
	SecurityVersion int64       `json:"securityVersion,omitempty"`
	Chunking        Chunking    `json:"chunking"`
	Partitions      []Partition `json:"partitions"`
	Packs           []Pack      `json:"packs"`
	Chunks          []ChunkRef  `json:"chunks"`
}

// Chunking records the chunker; a robot refuses any other.
type Chunking struct {
	Algorithm string `json:"algorithm"`
	Min       int    `json:"min"`
	Avg       int    `json:"avg"`
	Max       int    `json:"max"`
}

// CurrentChunking is what package cdc does.
func CurrentChunking() Chunking {
	return Chunking{Algorithm: cdc.Algorithm, Min: cdc.Min, Avg: cdc.Avg, Max: cdc.Max}
}

// Partition is one partition's content as a sequence of chunks.
type Partition struct {
	Name   string `json:"name"` // GPT name: boot_a, system_a, boot_b, system_b
	Size   int64  `json:"size"`
	SHA256 Hash   `json:"sha256"`
	Chunks []int  `json:"chunks"` // indexes into Config.Chunks, in order
}

// Pack is one pack blob (a layer).
type Pack struct {
	Digest string `json:"digest"` // "sha256:…"
	Size   int64  `json:"size"`
}

// ChunkRef is one distinct chunk: its uncompressed sha256 and length, and
// where its zstd frame is. It is written as a JSON array
// ["sha256", length, pack, offset, compressedLength] to keep the index
// small (about 100 bytes per chunk).
type ChunkRef struct {
	SHA256           Hash
	Length           int
	Pack             int
	Offset           int64
	CompressedLength int
}

// MarshalJSON writes the compact array form.
func (c ChunkRef) MarshalJSON() ([]byte, error) {
	return []byte(`["` + c.SHA256.String() + `",` + strconv.Itoa(c.Length) + `,` + strconv.Itoa(c.Pack) + `,` +
		strconv.FormatInt(c.Offset, 10) + `,` + strconv.Itoa(c.CompressedLength) + `]`), nil
}

// UnmarshalJSON reads the compact array form.
func (c *ChunkRef) UnmarshalJSON(b []byte) error {
	var a []json.RawMessage
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Errorf("chunk: %w", err)
	}
	if len(a) != 5 {
		return fmt.Errorf("chunk has %d fields, want 5 [sha256, length, pack, offset, compressedLength]", len(a))
	}
	if err := json.Unmarshal(a[0], &c.SHA256); err != nil {
		return fmt.Errorf("chunk sha256: %w", err)
	}
	for i, p := range []any{&c.Length, &c.Pack, &c.Offset, &c.CompressedLength} {
		if err := json.Unmarshal(a[i+1], p); err != nil {
			return fmt.Errorf("chunk field %d: %w", i+1, err)
		}
	}
	return nil
}

// ParseConfig reads and checks a config blob: every index in range, every
// frame inside its pack, every partition's chunk lengths adding up to its
// size, the chunking the one this package does.
func ParseConfig(b []byte) (*Config, error) {
	if len(b) > MaxConfigBytes {
		return nil, fmt.Errorf("release config of %d bytes, at most %d", len(b), MaxConfigBytes)
	}
	var c Config
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("release config: %w", err)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("release config: %w", err)
	}
	return &c, nil
}

func (c *Config) check() error {
	if c.Version == "" || len(c.Version) > maxMetaLen || len(c.Profile) > maxMetaLen || len(c.MinAgentVersion) > maxMetaLen {
		return fmt.Errorf("version %q, profile and minimum agent version must be set and short", c.Version)
	}
	if c.SecurityVersion < 0 {
		return fmt.Errorf("security version %d is negative", c.SecurityVersion)
	}
	if c.Chunking != CurrentChunking() {
		return fmt.Errorf("chunked with %+v, this agent chunks with %+v: upgrade the agent first", c.Chunking, CurrentChunking())
	}
	if len(c.Packs) == 0 || len(c.Packs) > maxPacks {
		return fmt.Errorf("%d packs, want 1 to %d", len(c.Packs), maxPacks)
	}
	for i, p := range c.Packs {
		if p.Size <= 0 || p.Size > maxPackSize {
			return fmt.Errorf("pack %d has size %d", i, p.Size)
		}
		if len(p.Digest) != 71 || p.Digest[:7] != "sha256:" {
			return fmt.Errorf("pack %d digest %q is not sha256:<64 hex>", i, p.Digest)
		}
		var h Hash
		if err := h.UnmarshalText([]byte(p.Digest[7:])); err != nil {
			return fmt.Errorf("pack %d: %w", i, err)
		}
	}
	if len(c.Chunks) == 0 || len(c.Chunks) > maxChunks {
		return fmt.Errorf("%d chunks, want 1 to %d", len(c.Chunks), maxChunks)
	}
	for i, ch := range c.Chunks {
		if ch.Length <= 0 || ch.Length > c.Chunking.Max {
			return fmt.Errorf("chunk %d is %d bytes, want 1 to %d", i, ch.Length, c.Chunking.Max)
		}
		if ch.Pack < 0 || ch.Pack >= len(c.Packs) {
			return fmt.Errorf("chunk %d is in pack %d of %d", i, ch.Pack, len(c.Packs))
		}
		// zstd never expands a chunk by more than a small header; allow slack.
		if ch.CompressedLength <= 0 || ch.CompressedLength > ch.Length+1024 || ch.Offset < 0 || ch.Offset > c.Packs[ch.Pack].Size-int64(ch.CompressedLength) {
			return fmt.Errorf("chunk %d's frame (offset %d, %d bytes) is outside pack %d (%d bytes)", i, ch.Offset, ch.CompressedLength, ch.Pack, c.Packs[ch.Pack].Size)
		}
	}
	if len(c.Partitions) == 0 || len(c.Partitions) > maxPartitions {
		return fmt.Errorf("%d partitions, want 1 to %d", len(c.Partitions), maxPartitions)
	}
	seen := map[string]bool{}
	for _, p := range c.Partitions {
		if p.Name == "" || len(p.Name) > maxNameLen || seen[p.Name] {
			return fmt.Errorf("partition name %q is empty, too long or repeated", p.Name)
		}
		seen[p.Name] = true
		if p.Size <= 0 || p.Size > maxPartitionSize {
			return fmt.Errorf("partition %s has size %d", p.Name, p.Size)
		}
		if int64(len(p.Chunks)) > p.Size {
			return fmt.Errorf("partition %s has more chunks than bytes", p.Name)
		}
		var total int64
		for _, i := range p.Chunks {
			if i < 0 || i >= len(c.Chunks) {
				return fmt.Errorf("partition %s refers to chunk %d of %d", p.Name, i, len(c.Chunks))
			}
			total += int64(c.Chunks[i].Length)
		}
		if total != p.Size {
			return fmt.Errorf("partition %s: its chunks hold %d bytes, its size is %d", p.Name, total, p.Size)
		}
	}
	return nil
}

// Partition returns the named partition.
func (c *Config) Partition(name string) (*Partition, bool) {
	for i := range c.Partitions {
		if c.Partitions[i].Name == name {
			return &c.Partitions[i], true
		}
	}
	return nil, false
}
