package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// signaturePrefix separates release signatures from anything else the same
// key might ever sign.
const signaturePrefix = "lekiwi-release-signature-v1\x00"

// SignedPayload is the exact byte string a signature covers:
//
//	"lekiwi-release-signature-v1\x00" artifactType "\x00" configDigest "\x00" configSize(decimal)
func SignedPayload(artifactType, configDigest string, configSize int64) []byte {
	return []byte(signaturePrefix + artifactType + "\x00" + configDigest + "\x00" + strconv.FormatInt(configSize, 10))
}

// Signature is one entry of the AnnotationSignatures JSON array.
type Signature struct {
	KeyID string `json:"keyid"` // KeyID of the public key
	Sig   string `json:"sig"`   // base64 (standard, padded) Ed25519 signature
}

// KeyID names a public key: the first 16 hex digits of the sha256 of its
// PKIX DER encoding.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:8])
}

// GenerateKey makes a signing key and writes it to path (PKCS#8 PEM, mode
// 0600) and its public half to path+".pub" (PKIX PEM, the file `provision
// image build --update-key` bakes into images). It refuses to overwrite.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate Ed25519 key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{{path, "PRIVATE KEY", der, 0o600}, {path + ".pub", "PUBLIC KEY", pubDER, 0o644}} {
		out, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return nil, fmt.Errorf("create key file (it must not exist yet): %w", err)
		}
		if err := pem.Encode(out, &pem.Block{Type: f.typ, Bytes: f.der}); err != nil {
			out.Close()
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
		if err := out.Sync(); err != nil {
			out.Close()
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
		if err := out.Close(); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return pub, nil
}

// ReadPrivateKey reads a PKCS#8 PEM Ed25519 key.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s is not a PEM \"PRIVATE KEY\" (make one with `provision release keygen`)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s is a %T, want Ed25519", path, k)
	}
	return priv, nil
}

// ParsePublicKey reads a PKIX PEM Ed25519 public key.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM \"PUBLIC KEY\"")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("a %T, want Ed25519", k)
	}
	return pub, nil
}

// ReadPublicKeys reads every *.pub and *.pem file in dir (an image's
// /etc/lekiwi/update-keys); a file that is not an Ed25519 public key is an
// error, so a broken key is noticed rather than silently untrusted.
func ReadPublicKeys(dir string) ([]ed25519.PublicKey, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("trusted update keys: %w", err)
	}
	var keys []ed25519.PublicKey
	for _, e := range ents {
		if e.IsDir() || (filepath.Ext(e.Name()) != ".pub" && filepath.Ext(e.Name()) != ".pem") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("trusted update key: %w", err)
		}
		k, err := ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("trusted update key %s: %w", e.Name(), err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no trusted update keys (*.pub) in %s: this robot can accept no release", dir)
	}
	return keys, nil
}

// manifest is the OCI image manifest fields we write and read.
type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func parseManifest(raw []byte) (*manifest, error) {
	if len(raw) > maxManifestBytes {
		return nil, fmt.Errorf("manifest of %d bytes, at most %d", len(raw), maxManifestBytes)
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if m.MediaType != manifestMediaType || m.SchemaVersion != 2 {
		return nil, fmt.Errorf("manifest media type %q schema %d, want %s schema 2", m.MediaType, m.SchemaVersion, manifestMediaType)
	}
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("artifact type %q (config %q) is not a Lekiwi release (%s): push releases with `provision release push`", m.ArtifactType, m.Config.MediaType, ArtifactType)
	}
	if len(m.Layers) > maxPacks {
		return nil, fmt.Errorf("%d layers, at most %d", len(m.Layers), maxPacks)
	}
	return &m, nil
}

func (m *manifest) signatures() ([]Signature, error) {
	s, ok := m.Annotations[AnnotationSignatures]
	if !ok {
		return nil, nil
	}
	var sigs []Signature
	if err := json.Unmarshal([]byte(s), &sigs); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationSignatures, err)
	}
	return sigs, nil
}

// Sign adds priv's signature to the manifest and returns the new manifest
// bytes; an earlier signature by the same key is replaced. It checks the
// config against the manifest first, so only a well-formed release is
// signed.
func Sign(priv ed25519.PrivateKey, rawManifest, config []byte) ([]byte, error) {
	m, err := parseManifest(rawManifest)
	if err != nil {
		return nil, err
	}
	if err := checkConfigBlob(m, config); err != nil {
		return nil, err
	}
	if _, err := ParseConfig(config); err != nil {
		return nil, err
	}
	sigs, err := m.signatures()
	if err != nil {
		return nil, err
	}
	pub := priv.Public().(ed25519.PublicKey)
	id := KeyID(pub)
	kept := sigs[:0]
	for _, s := range sigs {
		if s.KeyID != id {
			kept = append(kept, s)
		}
	}
	sig := ed25519.Sign(priv, SignedPayload(m.ArtifactType, m.Config.Digest, m.Config.Size))
	kept = append(kept, Signature{KeyID: id, Sig: base64.StdEncoding.EncodeToString(sig)})
	b, err := json.Marshal(kept)
	if err != nil {
		return nil, err
	}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[AnnotationSignatures] = string(b)
	return json.Marshal(m)
}

func checkConfigBlob(m *manifest, config []byte) error {
	sum := sha256.Sum256(config)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != m.Config.Digest || int64(len(config)) != m.Config.Size {
		return fmt.Errorf("config blob (%s, %d bytes) does not match the manifest's config descriptor (%s, %d bytes): tampered or corrupted", got, len(config), m.Config.Digest, m.Config.Size)
	}
	return nil
}

// Release is a verified release: its manifest and parsed config.
type Release struct {
	Manifest       []byte
	ManifestDigest string // sha256 of Manifest, "sha256:…"
	Config         *Config
	// SignedBy is the KeyID of the trusted key whose signature verified.
	SignedBy string
}

// ErrUnsigned, ErrBadSignature and ErrUntrusted say why Verify refused a
// release's signatures.
var (
	ErrUnsigned     = errors.New("release is not signed")
	ErrBadSignature = errors.New("release signature does not verify")
	ErrUntrusted    = errors.New("release is signed only by keys this robot does not trust")
)

// Verify checks a release before anything of it is written: the manifest is
// a Lekiwi release, the config blob matches the manifest's config digest,
// a trusted key signed that digest, the config is well formed and the
// manifest's layers are exactly the config's packs. A signature by a trusted
// key that does not verify is an error even when another one does: it
// means tampering.
func Verify(trusted []ed25519.PublicKey, rawManifest, config []byte) (*Release, error) {
	m, err := parseManifest(rawManifest)
	if err != nil {
		return nil, fmt.Errorf("verify release: %w", err)
	}
	sigs, err := m.signatures()
	if err != nil {
		return nil, fmt.Errorf("verify release: %w", err)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("verify release: %w (sign it with `provision release sign`)", ErrUnsigned)
	}
	if err := checkConfigBlob(m, config); err != nil {
		return nil, fmt.Errorf("verify release: %w", err)
	}
	byID := map[string]ed25519.PublicKey{}
	for _, k := range trusted {
		if len(k) == ed25519.PublicKeySize {
			byID[KeyID(k)] = k
		}
	}
	payload := SignedPayload(m.ArtifactType, m.Config.Digest, m.Config.Size)
	signedBy := ""
	for _, s := range sigs {
		k, ok := byID[s.KeyID]
		if !ok {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil || !ed25519.Verify(k, payload, sig) {
			return nil, fmt.Errorf("verify release: key %s: %w", s.KeyID, ErrBadSignature)
		}
		signedBy = s.KeyID
	}
	if signedBy == "" {
		ids := make([]string, len(sigs))
		for i, s := range sigs {
			ids[i] = s.KeyID
		}
		return nil, fmt.Errorf("verify release: %w (signed by %v)", ErrUntrusted, ids)
	}
	c, err := ParseConfig(config)
	if err != nil {
		return nil, fmt.Errorf("verify release: %w", err)
	}
	if len(m.Layers) != len(c.Packs) {
		return nil, fmt.Errorf("verify release: manifest has %d layers, config lists %d packs", len(m.Layers), len(c.Packs))
	}
	for i, l := range m.Layers {
		if l.MediaType != PackMediaType || l.Digest != c.Packs[i].Digest || l.Size != c.Packs[i].Size {
			return nil, fmt.Errorf("verify release: layer %d (%s %s, %d bytes) is not pack %d of the signed config (%s, %d bytes)", i, l.MediaType, l.Digest, l.Size, i, c.Packs[i].Digest, c.Packs[i].Size)
		}
	}
	sum := sha256.Sum256(rawManifest)
	return &Release{Manifest: bytes.Clone(rawManifest), ManifestDigest: "sha256:" + hex.EncodeToString(sum[:]), Config: c, SignedBy: signedBy}, nil
}

// Inspect parses a release without checking signatures (for `provision
// release inspect`): it returns the config and the KeyIDs that signed it.
func Inspect(rawManifest, config []byte) (*Config, []string, error) {
	m, err := parseManifest(rawManifest)
	if err != nil {
		return nil, nil, err
	}
	if err := checkConfigBlob(m, config); err != nil {
		return nil, nil, err
	}
	c, err := ParseConfig(config)
	if err != nil {
		return nil, nil, err
	}
	sigs, err := m.signatures()
	if err != nil {
		return nil, nil, err
	}
	var ids []string
	for _, s := range sigs {
		ids = append(ids, s.KeyID)
	}
	return c, ids, nil
}
