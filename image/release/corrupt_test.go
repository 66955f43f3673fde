package release

import (
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A frame that is not the chunk the release names is ErrCorruptChunk
// (the updater stops retrying on it); the right frame is not.
func TestDecodeChunkCorrupt(t *testing.T) {
	data := []byte("the chunk the signed release names")
	other := []byte("what a tampering mirror serves inste")
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	ref := ChunkRef{SHA256: Hash(sha256.Sum256(data)), Length: len(data)}
	good := enc.EncodeAll(data, nil)
	for _, c := range []struct {
		name    string
		frame   []byte
		corrupt bool
	}{
		{"the chunk", good, false},
		{"other bytes of the same length", enc.EncodeAll(other, nil), true},
		{"truncated", enc.EncodeAll(data[:10], nil), true},
		{"not zstd", []byte("garbage, not a zstd frame"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := decodeChunk(dec, c.frame, ref, nil)
			if got := errors.Is(err, ErrCorruptChunk); got != c.corrupt {
				t.Fatalf("errors.Is(%v, ErrCorruptChunk) = %v, want %v", err, got, c.corrupt)
			}
			if !c.corrupt && string(out) != string(data) {
				t.Fatalf("decoded %q", out)
			}
		})
	}
}
