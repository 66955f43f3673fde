package release

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
)

func FuzzParseConfig(f *testing.F) {
	good := Config{Version: "1", Chunking: CurrentChunking(),
		Packs:      []Pack{{Digest: "sha256:" + Hash{1}.String(), Size: 100}},
		Chunks:     []ChunkRef{{SHA256: Hash{2}, Length: 20000, Pack: 0, Offset: 10, CompressedLength: 50}},
		Partitions: []Partition{{Name: "boot_a", Size: 40000, Chunks: []int{0, 0}}}}
	b, _ := json.Marshal(good)
	if _, err := ParseConfig(b); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"chunks":[["00",1,2,3]]}`))
	f.Add([]byte(`{"version":"1","partitions":[{"name":"x","size":1,"chunks":[-1]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		// Whatever parses is safe to index: every reference in range.
		for _, p := range c.Partitions {
			var n int64
			for _, i := range p.Chunks {
				ch := c.Chunks[i]
				n += int64(ch.Length)
				if ch.Offset+int64(ch.CompressedLength) > c.Packs[ch.Pack].Size {
					t.Fatalf("chunk frame outside its pack: %+v", ch)
				}
			}
			if n != p.Size {
				t.Fatalf("partition %s: %d bytes of chunks, size %d", p.Name, n, p.Size)
			}
		}
	})
}

func FuzzVerify(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	cfg := Config{Version: "1", Chunking: CurrentChunking(),
		Packs:      []Pack{{Digest: "sha256:" + Hash{1}.String(), Size: 100}},
		Chunks:     []ChunkRef{{SHA256: Hash{2}, Length: 20000, Pack: 0, Offset: 10, CompressedLength: 50}},
		Partitions: []Partition{{Name: "boot_a", Size: 20000, Chunks: []int{0}}}}
	cb, _ := json.Marshal(cfg)
	m := manifest{SchemaVersion: 2, MediaType: manifestMediaType, ArtifactType: ArtifactType,
		Config: descriptor{MediaType: ConfigMediaType, Digest: digestOf(cb), Size: int64(len(cb))},
		Layers: []descriptor{{MediaType: PackMediaType, Digest: cfg.Packs[0].Digest, Size: 100}}}
	mb, _ := json.Marshal(m)
	signed, err := Sign(priv, mb, cb)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := Verify([]ed25519.PublicKey{pub}, signed, cb); err != nil {
		f.Fatal(err)
	}
	f.Add(signed, cb)
	f.Add(mb, cb)
	f.Add([]byte(`{"schemaVersion":2,"annotations":{"org.lekiwi.release.signatures":"[{}]"}}`), []byte("{}"))
	f.Fuzz(func(t *testing.T, manifest, config []byte) {
		r, err := Verify([]ed25519.PublicKey{pub}, manifest, config)
		if err != nil {
			return
		}
		// Only a manifest signed by the key over this exact config passes.
		if digestOf(config) != digestOf(cb) {
			t.Fatalf("accepted a config other than the signed one: %q", config)
		}
		if r.SignedBy != KeyID(pub) {
			t.Fatalf("signed by %q", r.SignedBy)
		}
	})
}
