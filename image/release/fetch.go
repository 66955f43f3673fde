package release

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/klauspost/compress/zstd"

	"github.com/lekiwi/heartbeat/image/release/cdc"
)

// BlobSource serves byte ranges of a release's pack blobs: a
// RegistrySource, or a DirSource for a release directory.
type BlobSource interface {
	OpenRange(ctx context.Context, digest string, off, length int64) (io.ReadCloser, error)
}

// LocalChunks are chunks the robot has without downloading them, e.g. its
// active slot (SlotChunks).
type LocalChunks interface {
	// Has reports whether the chunk with this sha256 is available.
	Has(h Hash) bool
	// ReadChunk fills p, whose length is the chunk's, with the chunk's
	// bytes; false means it is not available (any more).
	ReadChunk(h Hash, p []byte) (bool, error)
}

// ErrChunkUnavailable means a chunk WritePartition needs is neither local
// (or no longer matches its hash) nor in the cache: run Fetch again.
var ErrChunkUnavailable = errors.New("chunk is neither local nor downloaded")

// ErrCorruptChunk means downloaded bytes are not the chunk the signed
// release names (they do not decompress, or do not match its hash): the
// source serves corrupted or tampered data, so fetching again from it is
// pointless.
var ErrCorruptChunk = errors.New("corrupt chunk")

// Defaults for Fetcher.
const (
	DefaultMaxGap     = 0
	DefaultMaxRequest = 64 << 20
)

// Fetcher downloads the chunks of a verified release that the robot lacks
// and writes its partitions. Downloaded frames are kept in CacheDir, one
// file per chunk named by its sha256, written only after the chunk's hash
// checked out, so a download cut anywhere (link drop, power cut) resumes
// with only the chunks not yet in the cache. Cache files are not fsynced:
// a file damaged by a power cut fails its hash when used and is fetched
// again.
type Fetcher struct {
	Release  *Release
	Source   BlobSource
	Local    LocalChunks // nil: nothing local (a full download)
	CacheDir string
	// MaxGap merges two missing frames of a pack into one Range request
	// when at most this many bytes of unneeded frames lie between them
	// (trading bytes for requests); 0 merges only adjacent frames.
	MaxGap int64
	// MaxRequest bounds one Range request; 0 means DefaultMaxRequest.
	MaxRequest int64
}

// Plan is what a Fetch of some partitions would do.
type Plan struct {
	Chunks        int   // distinct chunks the partitions need
	Local         int   // of which the robot has
	Cached        int   // of which an earlier download left in the cache
	Missing       int   // of which must be downloaded
	MissingBytes  int64 // compressed bytes of the missing chunks
	Requests      int   // Range requests to fetch them
	DownloadBytes int64 // bytes those requests transfer (MissingBytes plus merged gaps)
	TotalBytes    int64 // uncompressed size of the partitions
	missing       []int
	groups        []fetchGroup
}

type fetchGroup struct {
	pack       int
	off, end   int64
	chunkIndex []int // in offset order
}

func (f *Fetcher) cachePath(h Hash) string {
	return filepath.Join(f.CacheDir, h.String()+".zst")
}

func (f *Fetcher) cached(c ChunkRef) bool {
	st, err := os.Stat(f.cachePath(c.SHA256))
	return err == nil && st.Size() == int64(c.CompressedLength)
}

// Plan says what Fetch would download for the named partitions (all of
// the release's when none are named).
func (f *Fetcher) Plan(partitions ...string) (*Plan, error) {
	if f.Release == nil || f.Release.Config == nil {
		return nil, errors.New("fetcher has no verified release: call Verify first")
	}
	cfg := f.Release.Config
	if len(partitions) == 0 {
		for _, p := range cfg.Partitions {
			partitions = append(partitions, p.Name)
		}
	}
	p := &Plan{}
	need := map[int]bool{}
	for _, name := range partitions {
		part, ok := cfg.Partition(name)
		if !ok {
			return nil, fmt.Errorf("release %s has no partition %q", cfg.Version, name)
		}
		p.TotalBytes += part.Size
		for _, i := range part.Chunks {
			need[i] = true
		}
	}
	p.Chunks = len(need)
	for i := range need {
		c := cfg.Chunks[i]
		switch {
		case f.Local != nil && f.Local.Has(c.SHA256):
			p.Local++
		case f.CacheDir != "" && f.cached(c):
			p.Cached++
		default:
			p.missing = append(p.missing, i)
			p.MissingBytes += int64(c.CompressedLength)
		}
	}
	p.Missing = len(p.missing)
	sort.Slice(p.missing, func(a, b int) bool {
		ca, cb := cfg.Chunks[p.missing[a]], cfg.Chunks[p.missing[b]]
		if ca.Pack != cb.Pack {
			return ca.Pack < cb.Pack
		}
		return ca.Offset < cb.Offset
	})
	maxReq := f.MaxRequest
	if maxReq <= 0 {
		maxReq = DefaultMaxRequest
	}
	for _, i := range p.missing {
		c := cfg.Chunks[i]
		end := c.Offset + int64(c.CompressedLength)
		if k := len(p.groups) - 1; k >= 0 {
			g := &p.groups[k]
			if g.pack == c.Pack && c.Offset >= g.end && c.Offset-g.end <= f.MaxGap && end-g.off <= maxReq {
				g.end = end
				g.chunkIndex = append(g.chunkIndex, i)
				continue
			}
		}
		p.groups = append(p.groups, fetchGroup{pack: c.Pack, off: c.Offset, end: end, chunkIndex: []int{i}})
	}
	p.Requests = len(p.groups)
	for _, g := range p.groups {
		p.DownloadBytes += g.end - g.off
	}
	return p, nil
}

// FetchStats says what Fetch did.
type FetchStats struct {
	Requests int
	Chunks   int   // chunks downloaded and cached
	Bytes    int64 // bytes read from the source
}

// Fetch downloads every chunk the named partitions (all when none are
// named) need that is neither local nor cached, checking each chunk's
// sha256 before it enters the cache. On error, what arrived intact stays
// cached: calling Fetch again continues from there.
func (f *Fetcher) Fetch(ctx context.Context, partitions ...string) (FetchStats, error) {
	var st FetchStats
	if f.CacheDir == "" {
		return st, errors.New("fetcher needs a cache directory for downloaded chunks")
	}
	if err := os.MkdirAll(f.CacheDir, 0o700); err != nil {
		return st, fmt.Errorf("chunk cache: %w", err)
	}
	plan, err := f.Plan(partitions...)
	if err != nil {
		return st, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*cdc.Max))
	if err != nil {
		return st, err
	}
	defer dec.Close()
	cfg := f.Release.Config
	buf := make([]byte, 0, cdc.Max+1024)
	var out []byte
	for _, g := range plan.groups {
		pack := cfg.Packs[g.pack]
		rc, err := f.Source.OpenRange(ctx, pack.Digest, g.off, g.end-g.off)
		if err != nil {
			return st, fmt.Errorf("release %s: %w", cfg.Version, err)
		}
		st.Requests++
		pos := g.off
		err = func() error {
			defer rc.Close()
			for _, i := range g.chunkIndex {
				c := cfg.Chunks[i]
				if skip := c.Offset - pos; skip > 0 {
					n, err := io.CopyN(io.Discard, rc, skip)
					st.Bytes += n
					if err != nil {
						return fmt.Errorf("download pack %s at %d: %w", pack.Digest, pos, err)
					}
				}
				frame := buf[:c.CompressedLength]
				n, err := io.ReadFull(rc, frame)
				st.Bytes += int64(n)
				if err != nil {
					return fmt.Errorf("download pack %s at %d: %w", pack.Digest, c.Offset, err)
				}
				pos = c.Offset + int64(c.CompressedLength)
				if out, err = decodeChunk(dec, frame, c, out[:0]); err != nil {
					return fmt.Errorf("pack %s at %d: %w", pack.Digest, c.Offset, err)
				}
				if err := writeFileAtomic(f.cachePath(c.SHA256), frame); err != nil {
					return fmt.Errorf("chunk cache: %w", err)
				}
				st.Chunks++
			}
			return nil
		}()
		if err != nil {
			return st, fmt.Errorf("release %s: %w (what arrived is cached; fetch again to resume)", cfg.Version, err)
		}
	}
	return st, nil
}

// decodeChunk decompresses one frame into dst and checks it is the chunk.
func decodeChunk(dec *zstd.Decoder, frame []byte, c ChunkRef, dst []byte) ([]byte, error) {
	out, err := dec.DecodeAll(frame, dst)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w: decompress: %w", c.SHA256, ErrCorruptChunk, err)
	}
	if len(out) != c.Length || Hash(sha256.Sum256(out)) != c.SHA256 {
		return nil, fmt.Errorf("chunk %s: %w: the downloaded bytes do not match its hash: corrupted or tampered", c.SHA256, ErrCorruptChunk)
	}
	return out, nil
}

// WritePartition writes the named partition to w in order, from local
// chunks and the cache, checking every chunk's sha256 and, at the end, the
// partition's. It fails with ErrChunkUnavailable when a chunk is missing
// (Fetch first) and never writes a chunk that did not check out; a
// partition hash mismatch at the end means what was written must not be
// booted.
func (f *Fetcher) WritePartition(ctx context.Context, name string, w io.Writer) error {
	if f.Release == nil || f.Release.Config == nil {
		return errors.New("fetcher has no verified release: call Verify first")
	}
	cfg := f.Release.Config
	part, ok := cfg.Partition(name)
	if !ok {
		return fmt.Errorf("release %s has no partition %q", cfg.Version, name)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*cdc.Max))
	if err != nil {
		return err
	}
	defer dec.Close()
	whole := sha256.New()
	buf := make([]byte, cdc.Max)
	var out []byte
	var off int64
	for _, i := range part.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := cfg.Chunks[i]
		data, err := f.chunkBytes(dec, c, buf[:c.Length], &out)
		if err != nil {
			return fmt.Errorf("partition %s at byte %d: %w", name, off, err)
		}
		whole.Write(data)
		if _, err := w.Write(data); err != nil {
			return fmt.Errorf("write partition %s at byte %d: %w", name, off, err)
		}
		off += int64(len(data))
	}
	if Hash(whole.Sum(nil)) != part.SHA256 {
		return fmt.Errorf("partition %s: written bytes do not match its sha256 %s", name, part.SHA256)
	}
	return nil
}

// chunkBytes returns the chunk's bytes: read into local from the local
// chunks, or decoded from the cache into *scratch (which keeps its capacity
// for the next chunk).
func (f *Fetcher) chunkBytes(dec *zstd.Decoder, c ChunkRef, local []byte, scratch *[]byte) ([]byte, error) {
	if f.Local != nil && f.Local.Has(c.SHA256) {
		ok, err := f.Local.ReadChunk(c.SHA256, local)
		if err != nil {
			return nil, fmt.Errorf("local chunk %s: %w", c.SHA256, err)
		}
		if ok && Hash(sha256.Sum256(local)) == c.SHA256 {
			return local, nil
		}
	}
	if f.CacheDir != "" {
		frame, err := os.ReadFile(f.cachePath(c.SHA256))
		if err == nil {
			data, err := decodeChunk(dec, frame, c, (*scratch)[:0])
			if err == nil {
				*scratch = data
				return data, nil
			}
			os.Remove(f.cachePath(c.SHA256)) // damaged (power cut): fetch it again
		}
	}
	return nil, fmt.Errorf("chunk %s: %w", c.SHA256, ErrChunkUnavailable)
}

// Chunk cuts r exactly as a release's partitions are cut and calls fn for
// each chunk with its offset, length and sha256 (the robot runs it over
// its active slot).
func Chunk(ctx context.Context, r io.Reader, fn func(off int64, length int, h Hash) error) error {
	c := cdc.New(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		off, data, err := c.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(off, len(data), sha256.Sum256(data)); err != nil {
			return err
		}
	}
}

// SlotChunks are the chunks of one or more local partitions (the active
// boot and system slots), read back on demand.
type SlotChunks struct {
	where map[Hash]slotChunk
}

type slotChunk struct {
	r   io.ReaderAt
	off int64
	n   int
}

// NewSlotChunks returns an empty set; Add indexes partitions into it.
func NewSlotChunks() *SlotChunks { return &SlotChunks{where: map[Hash]slotChunk{}} }

// Add chunks size bytes of r (a partition) and remembers where each chunk
// is. r must stay open while the set is used.
func (s *SlotChunks) Add(ctx context.Context, r io.ReaderAt, size int64) error {
	return Chunk(ctx, io.NewSectionReader(r, 0, size), func(off int64, n int, h Hash) error {
		if _, ok := s.where[h]; !ok {
			s.where[h] = slotChunk{r, off, n}
		}
		return nil
	})
}

// Len is the number of distinct chunks.
func (s *SlotChunks) Len() int { return len(s.where) }

// Has implements LocalChunks.
func (s *SlotChunks) Has(h Hash) bool { _, ok := s.where[h]; return ok }

// ReadChunk implements LocalChunks; the caller checks the hash (a mounted
// slot may have changed since Add).
func (s *SlotChunks) ReadChunk(h Hash, p []byte) (bool, error) {
	c, ok := s.where[h]
	if !ok || c.n != len(p) {
		return false, nil
	}
	if _, err := c.r.ReadAt(p, c.off); err != nil {
		return false, err
	}
	return true, nil
}
