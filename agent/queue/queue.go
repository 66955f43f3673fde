// Package queue is the agent's bounded on-disk queue of messages that control
// has not acknowledged yet, and the home of the robot's message sequence.
//
// Control acknowledges telemetry and events only once they are durable on its
// side; until then the agent must be able to resend them, across reconnects,
// crashes and power loss. The queue therefore keeps every unacknowledged
// message as its encoded envelope (original sequence, timestamp and payload)
// in a bbolt file, together with:
//
//   - the stream id, created once with the state, that tells control a
//     re-flashed robot's restarted sequences are not replays;
//   - the sequence allocator, which never goes backwards across restarts. It
//     persists a reserved high-water mark in blocks (Options.SeqBlock) so
//     that not every heartbeat costs an fsync; after a restart numbering
//     continues above the reserved mark, leaving a gap, which is harmless;
//   - the counts of messages dropped under pressure.
//
// The queue is bounded in items and bytes. When full, telemetry is
// sacrificed before events: a new telemetry message evicts the oldest queued
// telemetry or, if there is none, is itself dropped; a new event evicts the
// oldest telemetry or, if there is none, the oldest event.
package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/lekiwi/heartbeat/protocol"
)

// FileName is the queue's file inside the agent's state directory.
const FileName = "queue.db"

// Class decides what is sacrificed first when the queue is full.
type Class uint8

// The classes. Responses to commands travel as Event: they must not be lost
// to telemetry pressure either.
const (
	Telemetry Class = 1
	Event     Class = 2
)

func (c Class) String() string {
	switch c {
	case Telemetry:
		return "telemetry"
	case Event:
		return "event"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Item is one queued message.
type Item struct {
	Seq   uint64
	Class Class
	Type  protocol.Type
	Data  []byte // the encoded envelope, sent as is
}

// Options bound and tune a queue. Zero fields take the defaults.
type Options struct {
	MaxItems int   // default DefaultMaxItems
	MaxBytes int64 // default DefaultMaxBytes; counts keys and stored values
	// NoSync skips fsync on commit. Only for simulators that run thousands of
	// agents in one process: a crash of the machine may then lose or corrupt
	// the queue.
	NoSync bool
	// SeqBlock is how many sequence numbers are reserved per durable write.
	SeqBlock uint64 // default DefaultSeqBlock
	// LockTimeout bounds the wait for another process holding the file.
	LockTimeout time.Duration // default 1s
}

// Defaults.
const (
	DefaultMaxItems = 10000
	DefaultMaxBytes = 8 << 20
	DefaultSeqBlock = 1000
)

// File format names. Strings, not []byte, so they are constants.
const (
	bucketMeta  = "meta"
	bucketItems = "items"

	keyFormat   = "format"
	keyStream   = "stream"
	keyReserved = "seq_reserved"

	itemFormat    = byte(1)
	currentFormat = uint64(1)
)

// ErrItemTooBig is returned by Append for a message larger than the queue's
// whole byte bound: no eviction could make room for it.
var ErrItemTooBig = errors.New("item larger than the queue's byte limit")

// droppedKey and reportedKey name a class's drop counters in the meta bucket.
func droppedKey(c Class) []byte  { return []byte("dropped_" + c.String()) }
func reportedKey(c Class) []byte { return []byte("reported_" + c.String()) }

// Queue is safe for concurrent use. Appends are serialised, so items enter
// the queue in sequence order: a reader that has seen sequence s will never
// later find a new item below s.
type Queue struct {
	path string
	db   *bolt.DB
	opts Options

	mu       sync.Mutex
	stream   string
	next     uint64 // next sequence to hand out
	reserved uint64 // durable high-water mark: every sequence handed out is <= reserved
	count    [3]int // items per class
	bytes    int64
	dropped  [3]uint64
	reported [3]uint64
}

// Open opens or creates the queue file at path (its directory is created).
func Open(path string, opts Options) (*Queue, error) {
	if opts.MaxItems <= 0 {
		opts.MaxItems = DefaultMaxItems
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.SeqBlock == 0 {
		opts.SeqBlock = DefaultSeqBlock
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory for queue %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        opts.LockTimeout,
		NoSync:         opts.NoSync,
		NoFreelistSync: opts.NoSync,
		NoGrowSync:     opts.NoSync,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open queue %s: the file is locked by another process (is another agent running with the same state directory?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open queue %s: %w (if the file is corrupt, move it away: its unacknowledged messages are lost)", path, err)
	}
	q := &Queue{path: path, db: db, opts: opts}
	if err := db.Update(q.load); err != nil {
		db.Close()
		return nil, fmt.Errorf("open queue %s: %w", path, err)
	}
	return q, nil
}

// load creates the buckets and stream on first use and rebuilds the
// in-memory counters from the file.
func (q *Queue) load(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists([]byte(bucketMeta))
	if err != nil {
		return err
	}
	items, err := tx.CreateBucketIfNotExists([]byte(bucketItems))
	if err != nil {
		return err
	}
	if f := meta.Get([]byte(keyFormat)); f == nil {
		if err := meta.Put([]byte(keyFormat), u64(currentFormat)); err != nil {
			return err
		}
	} else if v, ok := fromU64(f); !ok || v != currentFormat {
		return fmt.Errorf("queue format %x is not %d: this file was written by a different agent version; move it away to start over", f, currentFormat)
	}
	if s := meta.Get([]byte(keyStream)); s != nil {
		q.stream = string(s)
	} else {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("create stream id: %w", err)
		}
		q.stream = hex.EncodeToString(b[:])
		if err := meta.Put([]byte(keyStream), []byte(q.stream)); err != nil {
			return err
		}
	}
	var ok bool
	if q.reserved, ok = getU64(meta, []byte(keyReserved)); !ok {
		return errors.New("meta key seq_reserved is corrupt")
	}
	for _, c := range []Class{Telemetry, Event} {
		if q.dropped[c], ok = getU64(meta, droppedKey(c)); !ok {
			return fmt.Errorf("meta key %s is corrupt", droppedKey(c))
		}
		if q.reported[c], ok = getU64(meta, reportedKey(c)); !ok {
			return fmt.Errorf("meta key %s is corrupt", reportedKey(c))
		}
	}
	q.next = q.reserved + 1
	return items.ForEach(func(k, v []byte) error {
		it, err := decodeItem(k, v)
		if err != nil {
			return err
		}
		if it.Seq >= q.next {
			// Cannot happen with this code (every sequence is reserved
			// before use), but never hand out a sequence that is queued.
			q.next = it.Seq + 1
		}
		q.count[it.Class]++
		q.bytes += int64(len(k) + len(v))
		return nil
	})
}

// Close closes the file.
func (q *Queue) Close() error {
	if err := q.db.Close(); err != nil {
		return fmt.Errorf("close queue %s: %w", q.path, err)
	}
	return nil
}

// Path is the queue file.
func (q *Queue) Path() string { return q.path }

// Stream is the stream id created with the queue (protocol.Hello.Stream).
func (q *Queue) Stream() string { return q.stream }

// NextSeq hands out the next sequence number for a message that is not
// queued (hello, heartbeats). It writes to disk only when it crosses the
// reserved mark.
func (q *Queue) NextSeq() (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	seq, newReserved := q.next, q.reserved
	if seq > q.reserved {
		newReserved = seq - 1 + q.opts.SeqBlock
		if err := q.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(bucketMeta)).Put([]byte(keyReserved), u64(newReserved))
		}); err != nil {
			return 0, fmt.Errorf("reserve sequence numbers in %s: %w", q.path, err)
		}
	}
	q.next, q.reserved = seq+1, newReserved
	return seq, nil
}

// Encoder builds the stored bytes of a message given its sequence.
type Encoder func(seq uint64) ([]byte, error)

// Append allocates the next sequence, encodes the message with it and stores
// it durably (unless NoSync), evicting as the class rules say. stored is
// false when the message was telemetry and the queue, full of events, had no
// room for it: it is counted as dropped. Allocation and storage happen under
// one lock, so items enter the queue in sequence order.
func (q *Queue) Append(class Class, typ protocol.Type, encode Encoder) (it Item, stored bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.appendLocked(class, typ, encode, false)
}

// DropReport builds the payload of a drop report from the totals.
type DropReport func(seq uint64, totals protocol.QueueDroppedData) ([]byte, error)

// AppendDropReport queues an event built by encode from the drop totals, if
// anything was dropped since the last report and the queue has room for it,
// and marks the totals reported in the same transaction. A report never
// evicts: losing an event to make room for the news that events were lost
// would feed itself. Without room it queues nothing; call again later.
func (q *Queue) AppendDropReport(encode DropReport) (it Item, queued bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dropped == q.reported {
		return Item{}, false, nil
	}
	totals := protocol.QueueDroppedData{Telemetry: q.dropped[Telemetry], Events: q.dropped[Event]}
	return q.appendLocked(Event, protocol.TypeEvent, func(seq uint64) ([]byte, error) { return encode(seq, totals) }, true)
}

func (q *Queue) appendLocked(class Class, typ protocol.Type, encode Encoder, isReport bool) (Item, bool, error) {
	if class != Telemetry && class != Event {
		return Item{}, false, fmt.Errorf("append to queue: unknown class %d", class)
	}
	seq := q.next
	data, err := encode(seq)
	if err != nil {
		return Item{}, false, fmt.Errorf("encode %s message %d for the queue: %w", typ, seq, err)
	}
	it := Item{Seq: seq, Class: class, Type: typ, Data: data}
	key, val := u64(seq), encodeItem(it)
	size := int64(len(key) + len(val))
	if size > q.opts.MaxBytes {
		return Item{}, false, fmt.Errorf("append %s message %d of %d bytes: %w (%d)", typ, seq, size, ErrItemTooBig, q.opts.MaxBytes)
	}

	// Work on copies; the in-memory state changes only once the
	// transaction committed.
	count, nbytes, dropped, reserved := q.count, q.bytes, q.dropped, q.reserved
	if isReport && (count[Telemetry]+count[Event]+1 > q.opts.MaxItems || nbytes+size > q.opts.MaxBytes) {
		return Item{}, false, nil
	}
	stored := true
	err = q.db.Update(func(tx *bolt.Tx) error {
		meta, items := tx.Bucket([]byte(bucketMeta)), tx.Bucket([]byte(bucketItems))
		if seq > reserved {
			reserved = seq - 1 + q.opts.SeqBlock
			if err := meta.Put([]byte(keyReserved), u64(reserved)); err != nil {
				return err
			}
		}
		droppedBefore := dropped
		for count[Telemetry]+count[Event]+1 > q.opts.MaxItems || nbytes+size > q.opts.MaxBytes {
			victim := Telemetry
			if count[Telemetry] == 0 {
				if class == Telemetry {
					stored = false
					dropped[Telemetry]++
					break
				}
				victim = Event
			}
			k, vsize, err := oldest(items, victim)
			if err != nil {
				return err
			}
			if err := items.Delete(k); err != nil {
				return err
			}
			count[victim]--
			nbytes -= vsize
			dropped[victim]++
		}
		for _, c := range []Class{Telemetry, Event} {
			if dropped[c] != droppedBefore[c] {
				if err := meta.Put(droppedKey(c), u64(dropped[c])); err != nil {
					return err
				}
			}
		}
		if isReport {
			for _, c := range []Class{Telemetry, Event} {
				if err := meta.Put(reportedKey(c), u64(dropped[c])); err != nil {
					return err
				}
			}
		}
		if !stored {
			return nil
		}
		count[class]++
		nbytes += size
		return items.Put(key, val)
	})
	if err != nil {
		return Item{}, false, fmt.Errorf("store %s message %d in queue %s: %w (is the state directory's disk full or read-only?)", typ, seq, q.path, err)
	}
	q.count, q.bytes, q.dropped, q.reserved = count, nbytes, dropped, reserved
	q.next = seq + 1
	if isReport {
		q.reported = dropped
	}
	return it, stored, nil
}

// oldest finds the lowest-sequence item of class c.
func oldest(items *bolt.Bucket, c Class) (key []byte, size int64, err error) {
	cur := items.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		if len(v) >= 2 && Class(v[1]) == c {
			return bytes.Clone(k), int64(len(k) + len(v)), nil
		}
	}
	return nil, 0, fmt.Errorf("queue counters say a %s item exists but none was found (file modified behind the agent's back?)", c)
}

// Ack removes the acknowledged sequences and reports how many were queued.
// Unknown sequences (heartbeats, already acknowledged or evicted items) are
// ignored.
func (q *Queue) Ack(seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	count, nbytes := q.count, q.bytes
	removed := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		items := tx.Bucket([]byte(bucketItems))
		for _, s := range seqs {
			k := u64(s)
			v := items.Get(k)
			if v == nil {
				continue
			}
			if len(v) >= 2 && (Class(v[1]) == Telemetry || Class(v[1]) == Event) {
				count[v[1]]--
			}
			nbytes -= int64(len(k) + len(v))
			if err := items.Delete(k); err != nil {
				return err
			}
			removed++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("remove %d acknowledged messages from queue %s: %w", len(seqs), q.path, err)
	}
	q.count, q.bytes = count, nbytes
	return removed, nil
}

// Pending returns every queued item in sequence order.
func (q *Queue) Pending() ([]Item, error) { return q.PendingAfter(0, 0) }

// PendingAfter returns up to limit (all when limit <= 0) queued items with a
// sequence above after, in sequence order.
func (q *Queue) PendingAfter(after uint64, limit int) ([]Item, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []Item
	err := q.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket([]byte(bucketItems)).Cursor()
		for k, v := cur.Seek(u64(after + 1)); k != nil; k, v = cur.Next() {
			if limit > 0 && len(out) >= limit {
				break
			}
			it, err := decodeItem(k, v)
			if err != nil {
				return err
			}
			it.Data = bytes.Clone(it.Data) // v is only valid inside the transaction
			out = append(out, it)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pending messages from queue %s: %w", q.path, err)
	}
	return out, nil
}

// Stats are the queue's counters as a heartbeat reports them.
func (q *Queue) Stats() protocol.QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return protocol.QueueStats{
		Pending:          q.count[Telemetry] + q.count[Event],
		DroppedTelemetry: q.dropped[Telemetry],
		DroppedEvents:    q.dropped[Event],
	}
}

// Bytes is the queue's current size as the byte bound counts it.
func (q *Queue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Item value layout: format(1) class(1) typeLen(1) type data.
func encodeItem(it Item) []byte {
	v := make([]byte, 0, 3+len(it.Type)+len(it.Data))
	v = append(v, itemFormat, byte(it.Class), byte(len(it.Type)))
	v = append(v, it.Type...)
	return append(v, it.Data...)
}

func decodeItem(k, v []byte) (Item, error) {
	seq, ok := fromU64(k)
	if !ok {
		return Item{}, fmt.Errorf("queue item key %x is not a sequence", k)
	}
	if len(v) < 3 || v[0] != itemFormat || len(v) < 3+int(v[2]) {
		return Item{}, fmt.Errorf("queue item %d is malformed; move the queue file away to start over", seq)
	}
	c := Class(v[1])
	if c != Telemetry && c != Event {
		return Item{}, fmt.Errorf("queue item %d has unknown class %d", seq, v[1])
	}
	n := int(v[2])
	return Item{Seq: seq, Class: c, Type: protocol.Type(v[3 : 3+n]), Data: v[3+n:]}, nil
}

// Sequences are stored big-endian so bbolt's byte order is sequence order.
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func fromU64(b []byte) (uint64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}

func getU64(b *bolt.Bucket, k []byte) (uint64, bool) {
	v := b.Get(k)
	if v == nil {
		return 0, true
	}
	return fromU64(v)
}
