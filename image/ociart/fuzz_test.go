package ociart

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// smallGPT builds a 1 MiB GPT image in memory with go-diskfs for seeds.
func smallGPT(f *testing.F) []byte {
	f.Helper()
	dir := f.TempDir()
	img := makeImageSized(f, dir)
	b, err := os.ReadFile(img)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzReadGPT(f *testing.F) {
	img := smallGPT(f)
	f.Add(img)
	f.Add(img[:len(img)-512])
	f.Add(img[:34*512])
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := readGPT(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, e := range tab.Entries {
			if int64(e.LastLBA+1)*tab.SectorSize > int64(len(b)) || e.LastLBA < e.FirstLBA {
				t.Fatalf("entry %+v outside the %d-byte image", e, len(b))
			}
		}
	})
}

// FuzzPlanPull feeds manifests and configs from the network through every
// check Pull makes before it writes a byte.
func FuzzPlanPull(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.manifest.json")
	for _, m := range seeds {
		mb, err := os.ReadFile(m)
		if err != nil {
			f.Fatal(err)
		}
		cb, err := os.ReadFile(m[:len(m)-len(".manifest.json")] + ".config.json")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(mb, cb)
	}
	f.Add([]byte(`{}`), []byte(`{}`))
	f.Fuzz(func(t *testing.T, mb, cb []byte) {
		mf, err := parseManifest(mb, manifestMediaType)
		if err != nil {
			return
		}
		c, err := parseConfig(cb)
		if err != nil {
			return
		}
		p, err := planPull(mf, c)
		if err != nil {
			return
		}
		for _, pp := range p.parts {
			if pp.off < 0 || pp.len <= 0 || pp.off+pp.len > c.ImageSize {
				t.Fatalf("accepted partition layer %+v outside the %d-byte image", pp, c.ImageSize)
			}
		}
		_, _ = json.Marshal(p.extents)
	})
}
