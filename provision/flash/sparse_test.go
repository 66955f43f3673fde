package flash

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// countingSource counts the bytes read from the source.
type countingSource struct {
	*ImageFile
	read atomic.Int64
}

func (c *countingSource) ReadAt(p []byte, off int64) (int, error) {
	c.read.Add(int64(len(p)))
	return c.ImageFile.ReadAt(p, off)
}

// recordingTarget records the extents written after the partition-table regions
// were zeroed (its first Sync).
type recordingTarget struct {
	*FileTarget
	synced bool
	writes []extent
}

func (r *recordingTarget) WriteAt(p []byte, off int64) (int, error) {
	if r.synced {
		r.writes = append(r.writes, extent{off, off + int64(len(p))})
	}
	return r.FileTarget.WriteAt(p, off)
}

func (r *recordingTarget) Sync() error {
	r.synced = true
	return r.FileTarget.Sync()
}

// TestFlashWritesOnlyMappedData checks the sparse promise: every byte written
// (besides zeroing the partition-table regions) is mapped, and with a block map
// the holes are not even read.
func TestFlashWritesOnlyMappedData(t *testing.T) {
	for _, withMap := range []bool{true, false} {
		t.Run(fmt.Sprintf("bmap=%v", withMap), func(t *testing.T) {
			dir := t.TempDir()
			img := openSource(t, makeImage(t, dir, withMap))
			src := &countingSource{ImageFile: img}
			var mapped []extent
			if m := img.BlockMap(); m != nil {
				p, err := newPlan(img, testChunk)
				if err != nil {
					t.Fatal(err)
				}
				mapped = p.mapped
			} else {
				b := make([]byte, imageSize)
				if _, err := img.ReadAt(b, 0); err != nil {
					t.Fatal(err)
				}
				mapped = nonZeroRuns(b, 0)
			}
			tgt := &recordingTarget{FileTarget: openTarget(t, filepath.Join(dir, "card.img"))}
			r := Flash(t.Context(), src, []Target{tgt}, Options{ChunkSize: testChunk})
			if r[0].Err != nil {
				t.Fatal(r[0].Err)
			}
			var written int64
			for _, w := range tgt.writes {
				written += w.end - w.off
				inside := false
				for _, m := range mapped {
					if w.off >= m.off && w.end <= m.end {
						inside = true
						break
					}
				}
				if !inside {
					t.Errorf("write %d–%d is not inside a mapped range", w.off, w.end-1)
				}
			}
			if written != mappedBytes(t, img) || written != r[0].BytesWritten {
				t.Errorf("wrote %d bytes (result says %d), want the %d mapped bytes", written, r[0].BytesWritten, mappedBytes(t, img))
			}
			// Flash reads each source byte at most once; verification goes to
			// the source again only to explain a mismatch.
			read := src.read.Load()
			if withMap && (read < written || read > imageSize/2) {
				t.Errorf("read %d bytes of the source with a block map, want between the %d mapped bytes and half the image", read, written)
			}
			if !withMap && read != imageSize {
				t.Errorf("read %d bytes of the source without a block map, want exactly the image size %d", read, imageSize)
			}
		})
	}
}
