// Package flash writes one disk image to many targets at once: the engine behind
// `provision flash`.
//
// Design:
//
//   - One reader. The source is read once, front to back, in large aligned chunks
//     (Options.ChunkSize). With a block map only the mapped bytes are read; without
//     one every chunk is read and all-zero 4 KiB blocks are treated as holes.
//     Holes are never written: the target keeps what it had. That is bmaptool's
//     contract with a block map (unmapped blocks are "don't care"); without a map
//     it is only right for targets that read zeros where nothing was written
//     (fresh file targets; block-device targets will have to discard/zero-out
//     first), because zero blocks a file system relies on would otherwise keep
//     stale data, and verification checks only the non-zero blocks.
//   - Bounded fan-out. Each chunk is handed to every target through a per-target
//     queue of Options.QueueDepth chunks; chunk buffers come from a pool of
//     QueueDepth+1 buffers that is shared by all targets, so memory stays bounded
//     and the reader runs at most QueueDepth chunks ahead of the slowest healthy
//     target: memory is (QueueDepth+1)×ChunkSize plus the 2 MiB held back below. A
//     slow target therefore paces the others once they are QueueDepth chunks
//     ahead, unless Options.StallTimeout drops it after its queue stayed full that
//     long. A target that fails stops writing but keeps draining its queue, so it
//     never holds the others back. Flash returns when every target's goroutine
//     has returned: a card whose writes never return still delays that, though the others
//     report PhaseDone through Progress as they finish.
//   - Partition table last. The first and last MiB of the image (MBR/primary GPT
//     and backup GPT) are held back in memory. Each target first has those regions
//     overwritten with zeros and synced, then gets the data, a sync, and only then
//     the held-back header bytes, backwards (backup GPT, primary GPT, then the MBR
//     in sector 0 as the very last write) and a final sync. A target interrupted anywhere
//     before that has no partition table at all, so it never looks like a good card.
//   - Verify against the source. Every mapped range is read back from the target and
//     its sha256 compared with the block map's checksum, or, without a map, with the
//     checksum computed while the source was read. A mismatch names the range and
//     the first differing byte (found by comparing with the source).
package flash

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// Phase is how far a target got.
type Phase string

const (
	PhasePrepare Phase = "prepare" // zeroing the partition-table regions
	PhaseWrite   Phase = "write"   // writing mapped data
	PhaseHeader  Phase = "header"  // syncing data, then writing the partition-table regions
	PhaseVerify  Phase = "verify"  // reading back and comparing checksums
	PhaseDone    Phase = "done"    // finished successfully
)

// HeaderRegion is the size of the regions at the start and the end of the image
// that hold the partition table (MBR, primary GPT; backup GPT) and are written last.
const HeaderRegion = 1 << 20

const (
	DefaultChunkSize  = 4 << 20
	DefaultQueueDepth = 4
	zeroBlock         = 4096 // granularity of hole detection without a block map
)

// Options tune Flash. The zero value is usable.
type Options struct {
	NoVerify   bool // skip reading back (not recommended)
	ChunkSize  int  // bytes per read and write; a multiple of 4096; default DefaultChunkSize
	QueueDepth int  // chunks a target may lag behind the reader; default DefaultQueueDepth
	// StallTimeout, if positive, drops a target whose queue stays full that long
	// (it fails with a "stalled" error) so that the others go on at their own
	// pace; zero paces every target by the slowest one.
	StallTimeout time.Duration
	// Progress, if set, is called from the targets' goroutines (concurrently) with
	// the phase and progress in bytes: during write, the position reached in the
	// image out of its size; during verify, bytes checked out of the mapped bytes.
	Progress func(target string, phase Phase, done, total int64)
}

// Result is the outcome for one target.
type Result struct {
	Target       string
	Err          error // nil if the target was written (and verified)
	BytesWritten int64 // image bytes written, header included, zeroing not counted
	Duration     time.Duration
	Phase        Phase // last phase reached; PhaseDone on success
}

// extent is a byte range [off, end) of the image.
type extent struct{ off, end int64 }

// chunk is a piece of the image read from the source: buf holds the image bytes
// from base on; exts are the mapped parts to write.
type chunk struct {
	base int64
	buf  []byte
	exts []extent
	refs atomic.Int32
	pool chan []byte // where buf goes back when every target is done with it; nil if not pooled
}

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 && c.pool != nil {
		select {
		case c.pool <- c.buf[:cap(c.buf)]:
		default: // the pool is full after a dropped target's buffers were replaced
		}
	}
}

// checked is a mapped range and its expected sha256.
type checked struct {
	extent
	sum []byte
}

// Flash writes src to every target in parallel and returns one Result per target,
// in the order of targets. It never stops because one target fails; it stops all
// targets when ctx is cancelled or the source cannot be read. Targets are not
// closed.
func Flash(ctx context.Context, src Source, targets []Target, opts Options) []Result {
	results := make([]Result, len(targets))
	for i, t := range targets {
		results[i] = Result{Target: t.Name(), Phase: PhasePrepare}
	}
	if len(targets) == 0 {
		return results
	}
	fail := func(err error) []Result {
		for i := range results {
			results[i].Err = err
		}
		return results
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.QueueDepth == 0 {
		opts.QueueDepth = DefaultQueueDepth
	}
	if opts.ChunkSize < zeroBlock || opts.ChunkSize%zeroBlock != 0 || opts.ChunkSize > 1<<30 {
		return fail(fmt.Errorf("flash: chunk size %d must be a multiple of %d up to 1 GiB", opts.ChunkSize, zeroBlock))
	}
	if opts.QueueDepth < 1 {
		return fail(fmt.Errorf("flash: queue depth %d must be at least 1", opts.QueueDepth))
	}
	p, err := newPlan(src, opts.ChunkSize)
	if err != nil {
		return fail(err)
	}

	queues := make([]chan *chunk, len(targets))
	for i := range queues {
		queues[i] = make(chan *chunk, opts.QueueDepth)
	}
	r := &reader{src: src, plan: p, queues: queues, opts: opts, dropped: make([]atomic.Bool, len(targets))}
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			w := &writer{t: t, plan: p, reader: r, opts: opts, res: &results[i], dropped: &r.dropped[i]}
			w.run(ctx, queues[i])
		})
	}
	r.run(ctx)
	wg.Wait()
	return results
}

// plan is what Flash knows about the image before reading it.
type plan struct {
	size          int64
	chunkSize     int64
	head, tail    extent    // partition-table regions, written last
	mapped        []extent  // from the block map; nil without one
	checks        []checked // from the block map when it has every checksum
	haveMap       bool
	haveChecksums bool
}

func newPlan(src Source, chunkSize int) (*plan, error) {
	size := src.Size()
	if size <= 0 {
		return nil, fmt.Errorf("flash: source %s: size %d must be positive", src.Name(), size)
	}
	p := &plan{size: size, chunkSize: int64(chunkSize)}
	p.head = extent{0, min(HeaderRegion, size)}
	p.tail = extent{max(size-HeaderRegion, p.head.end), size}
	if m := src.BlockMap(); m != nil {
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("flash: block map of %s: %w", src.Name(), err)
		}
		if m.ImageSize != size {
			return nil, fmt.Errorf("flash: block map of %s is for a %d-byte image, the source has %d bytes", src.Name(), m.ImageSize, size)
		}
		p.haveMap = true
		p.haveChecksums = true
		bs := int64(m.BlockSize)
		for _, r := range m.Ranges {
			e := extent{r.First * bs, min((r.Last+1)*bs, size)}
			p.mapped = append(p.mapped, e)
			sum, err := hex.DecodeString(r.SHA256)
			if err != nil || len(sum) != sha256.Size {
				p.haveChecksums = false
			}
			p.checks = append(p.checks, checked{e, sum})
		}
		if !p.haveChecksums {
			p.checks = nil
		}
	}
	return p, nil
}

// pieces splits the image into the chunks the reader reads: chunk-aligned, and cut
// at the borders of the partition-table regions so those can be held back exactly.
func (p *plan) pieces() []extent {
	var cuts []int64
	for off := int64(0); off < p.size; {
		next := min((off/p.chunkSize+1)*p.chunkSize, p.size)
		for _, b := range []int64{p.head.end, p.tail.off} {
			if b > off && b < next {
				next = b
			}
		}
		cuts = append(cuts, next)
		off = next
	}
	out := make([]extent, 0, len(cuts))
	prev := int64(0)
	for _, c := range cuts {
		out = append(out, extent{prev, c})
		prev = c
	}
	return out
}

func (p *plan) isHeader(e extent) bool {
	return e.end <= p.head.end || e.off >= p.tail.off
}

// reader reads the source once and feeds the queues.
type reader struct {
	src    Source
	plan   *plan
	queues []chan *chunk
	opts   Options
	// dropped marks targets that stalled longer than Options.StallTimeout; the
	// reader sends them nothing more.
	dropped []atomic.Bool

	// Set before the queues are closed and read by writers only after, so the
	// channel close orders them.
	err     error
	headers []*chunk  // held-back partition-table pieces
	checks  []checked // without map checksums: one per written extent
}

func (r *reader) run(ctx context.Context) {
	defer func() {
		for _, q := range r.queues {
			close(q)
		}
	}()
	// Buffers are made on demand, up to the pool's capacity, so a deep queue
	// costs memory only if some target actually lags that far.
	pool := make(chan []byte, r.opts.QueueDepth+1)
	made, limit := 0, cap(pool)
	mapped := r.plan.mapped
	for _, piece := range r.plan.pieces() {
		if err := ctx.Err(); err != nil {
			r.err = err
			return
		}
		var exts []extent
		readFrom, readTo := piece.off, piece.end
		if r.plan.haveMap {
			for len(mapped) > 0 && mapped[0].end <= piece.off {
				mapped = mapped[1:]
			}
			for _, m := range mapped {
				if m.off >= piece.end {
					break
				}
				exts = append(exts, extent{max(m.off, piece.off), min(m.end, piece.end)})
			}
			if len(exts) == 0 {
				continue
			}
			readFrom, readTo = exts[0].off, exts[len(exts)-1].end
		}
		c := &chunk{base: readFrom}
		if r.plan.isHeader(piece) {
			c.buf = make([]byte, readTo-readFrom)
		} else {
			var buf []byte
			select {
			case buf = <-pool:
			default:
				if made < limit {
					buf = make([]byte, r.opts.ChunkSize)
					made++
					break
				}
				select {
				case buf = <-pool:
				case <-ctx.Done():
					r.err = ctx.Err()
					return
				}
			}
			c.buf, c.pool = buf[:readTo-readFrom], pool
		}
		if err := readFull(r.src, c.buf, readFrom); err != nil {
			r.err = fmt.Errorf("flash: read source %s at offset %d: %w", r.src.Name(), readFrom, err)
			return
		}
		if !r.plan.haveMap {
			exts = nonZeroRuns(c.buf, readFrom)
		}
		if !r.plan.haveChecksums {
			for _, e := range exts {
				s := sha256.Sum256(c.buf[e.off-c.base : e.end-c.base])
				r.checks = append(r.checks, checked{e, s[:]})
			}
		}
		c.exts = exts
		if len(exts) == 0 {
			if c.pool != nil {
				pool <- c.buf[:cap(c.buf)]
			}
			continue
		}
		if r.plan.isHeader(piece) {
			r.headers = append(r.headers, c)
			continue
		}
		live := 0
		for i := range r.dropped {
			if !r.dropped[i].Load() {
				live++
			}
		}
		if live == 0 {
			return // every target stalled; each reports it
		}
		c.refs.Store(int32(live))
		for i, q := range r.queues {
			if r.dropped[i].Load() {
				continue
			}
			sent, err := r.send(ctx, q, c)
			if err != nil {
				r.err = err
				return
			}
			if !sent {
				// The stalled target may never give its buffers back: allow
				// as many new ones.
				r.dropped[i].Store(true)
				c.release()
				limit += r.opts.QueueDepth + 1
			}
		}
	}
}

// send hands c to a target's queue, waiting at most Options.StallTimeout if that
// is set; sent is false when it timed out.
func (r *reader) send(ctx context.Context, q chan<- *chunk, c *chunk) (sent bool, err error) {
	select {
	case q <- c:
		return true, nil
	default:
	}
	var timeout <-chan time.Time
	if r.opts.StallTimeout > 0 {
		t := time.NewTimer(r.opts.StallTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case q <- c:
		return true, nil
	case <-timeout:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// nonZeroRuns lists the runs of blocks of b (image bytes from base on) that are
// not all zeros.
func nonZeroRuns(b []byte, base int64) []extent {
	var out []extent
	for i := 0; i < len(b); i += zeroBlock {
		blk := b[i:min(i+zeroBlock, len(b))]
		if sparse.IsZero(blk) {
			continue
		}
		off, end := base+int64(i), base+int64(i+len(blk))
		if n := len(out); n > 0 && out[n-1].end == off {
			out[n-1].end = end
		} else {
			out = append(out, extent{off, end})
		}
	}
	return out
}

// writer writes one target.
type writer struct {
	t       Target
	plan    *plan
	reader  *reader
	opts    Options
	res     *Result
	dropped *atomic.Bool // set by the reader, before it closes the queue
}

func (w *writer) run(ctx context.Context, queue <-chan *chunk) {
	start := time.Now()
	defer func() { w.res.Duration = time.Since(start) }()
	err := w.prepare()
	if err == nil {
		w.res.Phase = PhaseWrite
	}
	stalled := fmt.Errorf("stalled: its queue of %d chunks stayed full for %v, so it was dropped to let the other targets go on (a failing card or reader?)", w.opts.QueueDepth, w.opts.StallTimeout)
	for c := range queue {
		// A failed target keeps draining so that the reader never waits for it.
		if err == nil {
			err = ctx.Err()
		}
		if err == nil && w.dropped.Load() {
			err = stalled
		}
		if err == nil {
			err = w.write(c)
			w.progress(PhaseWrite, c.exts[len(c.exts)-1].end, w.plan.size)
		}
		c.release()
	}
	if err == nil && w.dropped.Load() {
		err = stalled
	}
	if err == nil {
		err = w.reader.err
	}
	if err == nil {
		err = w.finish(ctx)
	}
	if err != nil {
		w.res.Err = fmt.Errorf("%s: %w", w.t.Name(), err)
		return
	}
	w.res.Phase = PhaseDone
	w.progress(PhaseDone, w.plan.size, w.plan.size)
}

func (w *writer) progress(ph Phase, done, total int64) {
	if w.opts.Progress != nil {
		w.opts.Progress(w.t.Name(), ph, done, total)
	}
}

// prepare zeroes the partition-table regions so that the target stops looking
// like a valid disk before any data lands on it.
func (w *writer) prepare() error {
	w.progress(PhasePrepare, 0, w.plan.size)
	for _, e := range []extent{w.plan.head, w.plan.tail} {
		if e.end <= e.off {
			continue
		}
		if _, err := w.t.WriteAt(make([]byte, e.end-e.off), e.off); err != nil {
			return fmt.Errorf("zero the partition-table region %d–%d: %w", e.off, e.end-1, err)
		}
	}
	if err := w.t.Sync(); err != nil {
		return fmt.Errorf("sync after zeroing the partition-table regions: %w", err)
	}
	return nil
}

func (w *writer) write(c *chunk) error {
	for _, e := range c.exts {
		if _, err := w.t.WriteAt(c.buf[e.off-c.base:e.end-c.base], e.off); err != nil {
			return fmt.Errorf("write bytes %d–%d: %w", e.off, e.end-1, err)
		}
		w.res.BytesWritten += e.end - e.off
	}
	return nil
}

// finish syncs the data, writes the held-back partition-table regions, syncs
// again and verifies.
func (w *writer) finish(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.res.Phase = PhaseHeader
	w.progress(PhaseHeader, w.plan.size, w.plan.size)
	if err := w.t.Sync(); err != nil {
		return fmt.Errorf("sync data: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Backwards, so that the backup GPT lands before the primary one and the
	// protective MBR in the first sector is the very last write.
	for _, c := range slices.Backward(w.reader.headers) {
		if err := w.write(c); err != nil {
			return fmt.Errorf("partition table: %w", err)
		}
	}
	if err := w.t.Sync(); err != nil {
		return fmt.Errorf("sync partition table: %w", err)
	}
	if w.opts.NoVerify {
		return nil
	}
	w.res.Phase = PhaseVerify
	return w.verify(ctx)
}

func (w *writer) verify(ctx context.Context) error {
	checks := w.plan.checks
	if !w.plan.haveChecksums {
		checks = w.reader.checks
	}
	var total int64
	for _, c := range checks {
		total += c.end - c.off
	}
	buf := make([]byte, w.opts.ChunkSize)
	var done int64
	for _, c := range checks {
		h := sha256.New()
		for off := c.off; off < c.end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(buf)), c.end-off)
			if err := readFull(w.t, buf[:n], off); err != nil {
				return fmt.Errorf("verify: read back bytes %d–%d: %w", off, off+n-1, err)
			}
			h.Write(buf[:n])
			off += n
			done += n
			w.progress(PhaseVerify, done, total)
		}
		if !bytes.Equal(h.Sum(nil), c.sum) {
			return w.mismatch(c.extent)
		}
	}
	return nil
}

// mismatch explains a checksum mismatch by finding the first byte that differs
// from the source.
func (w *writer) mismatch(e extent) error {
	n := min(int64(w.opts.ChunkSize), e.end-e.off)
	want, got := make([]byte, n), make([]byte, n)
	for off := e.off; off < e.end; off += n {
		k := min(n, e.end-off)
		if err := readFull(w.reader.src, want[:k], off); err != nil {
			return fmt.Errorf("verify: byte range %d–%d differs from the source (reading the source to locate the difference failed: %v)", e.off, e.end-1, err)
		}
		if err := readFull(w.t, got[:k], off); err != nil {
			return fmt.Errorf("verify: byte range %d–%d differs from the source (reading it back again failed: %v)", e.off, e.end-1, err)
		}
		for i := range k {
			if want[i] != got[i] {
				return fmt.Errorf("verify: byte range %d–%d differs from the source (first difference at offset %d)", e.off, e.end-1, off+i)
			}
		}
	}
	return fmt.Errorf("verify: byte range %d–%d matches the source but not the block map checksum: the image or its .bmap is corrupt (regenerate the map)", e.off, e.end-1)
}

// readFull reads len(p) bytes at off. io.ReaderAt allows io.EOF alongside a full
// read at the end of the data; that is success here.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) && (err == nil || errors.Is(err, io.EOF)) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read: %d of %d bytes: %w", n, len(p), io.ErrUnexpectedEOF)
	}
	return err
}
