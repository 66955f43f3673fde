// Package outbox keeps a netboot station's events for control on disk until
// control has stored them. The factory floor keeps working while control is
// away (a failover, a cut cable): devices are still seen, boards still wait
// at their identity step, and every event reaches control, once, when it
// comes back.
//
// On disk (a directory):
//
//	stream  the outbox's stream name, made once; with each event's sequence
//	        number it lets control drop an event it already has (a batch
//	        resent after a lost answer)
//	log     one JSON protocol.FactoryEvent per line, appended and fsynced by
//	        Add before it returns
//	acked   the highest sequence control confirmed, atomically replaced
//
// A crash can leave a torn last line in log: it was never acknowledged to
// Add's caller, so Open drops it. The log is rewritten without the
// confirmed events once enough of them piled up.
package outbox

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// MaxPending bounds the events waiting for control. Beyond it Add fails
// (loudly) rather than filling the disk: at factory rates that is days of
// control being unreachable.
const MaxPending = 200_000

// compactAfter is how many confirmed events the log may hold before it is
// rewritten.
const compactAfter = 10_000

// SendFunc delivers a batch to control; it returns nil only when control
// stored (or already had) every event of it.
type SendFunc func(ctx context.Context, batch protocol.FactoryEvents) error

// Status is what the station shows about its link to control.
type Status struct {
	Pending          int       `json:"pending"`
	LastSeq          uint64    `json:"last_seq"`
	Acked            uint64    `json:"acked"`
	UnreachableSince time.Time `json:"unreachable_since,omitzero"`
	LastError        string    `json:"last_error,omitempty"`
}

// Outbox is a durable queue of factory events. Safe for concurrent use.
type Outbox struct {
	dir    string
	stream string
	now    func() time.Time

	mu         sync.Mutex
	log        *os.File
	lastSeq    uint64
	acked      uint64
	pending    []protocol.FactoryEvent
	ackedLines int // confirmed events still in log
	status     Status
	wake       chan struct{}
	// compactAfter is compactAfter but for tests.
	compactAfter int
}

// Open opens (or creates) the outbox in dir. now may be nil (time.Now).
func Open(dir string, now func() time.Time) (*Outbox, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: make %s: %w", dir, err)
	}
	o := &Outbox{dir: dir, now: now, wake: make(chan struct{}, 1), compactAfter: compactAfter}
	stream, err := readOrMakeStream(filepath.Join(dir, "stream"))
	if err != nil {
		return nil, err
	}
	o.stream = stream
	if b, err := os.ReadFile(filepath.Join(dir, "acked")); err == nil {
		v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return nil, fmt.Errorf("outbox: %s/acked holds %q, not a sequence number: the outbox is damaged (move it away to start a new one)", dir, b)
		}
		o.acked = v
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	path := filepath.Join(dir, "log")
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	events, good, err := parseLog(raw)
	if err != nil {
		return nil, fmt.Errorf("outbox: %s: %w (move it away to start a new outbox; its events would be lost)", path, err)
	}
	o.lastSeq = o.acked
	for _, e := range events {
		o.lastSeq = max(o.lastSeq, e.Seq)
		if e.Seq > o.acked {
			o.pending = append(o.pending, e)
		} else {
			o.ackedLines++
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	// Drop a torn tail left by a crash in the middle of an append.
	if err := f.Truncate(int64(good)); err != nil {
		f.Close()
		return nil, fmt.Errorf("outbox: trim torn tail of %s: %w", path, err)
	}
	if _, err := f.Seek(int64(good), 0); err != nil {
		f.Close()
		return nil, err
	}
	o.log = f
	o.status.Pending, o.status.LastSeq, o.status.Acked = len(o.pending), o.lastSeq, o.acked
	return o, nil
}

func readOrMakeStream(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if s == "" || len(s) > 64 {
			return "", fmt.Errorf("outbox: %s holds %q, not a stream name", path, b)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("outbox: %w", err)
	}
	var r [8]byte
	_, _ = crand.Read(r[:])
	s := "outbox-" + hex.EncodeToString(r[:])
	if err := writeAtomic(path, []byte(s+"\n")); err != nil {
		return "", err
	}
	return s, nil
}

// parseLog reads the log's events; good is the length of the prefix made of
// whole lines. Only the last line may be torn (no newline, or not JSON);
// damage anywhere else is an error.
func parseLog(raw []byte) (events []protocol.FactoryEvent, good int, err error) {
	var last uint64
	for off := 0; off < len(raw); {
		nl := bytes.IndexByte(raw[off:], '\n')
		if nl < 0 {
			return events, off, nil // torn tail
		}
		line := raw[off : off+nl]
		var e protocol.FactoryEvent
		if jerr := json.Unmarshal(line, &e); jerr != nil || e.Seq == 0 {
			if off+nl+1 == len(raw) {
				return events, off, nil // torn last line
			}
			return nil, 0, fmt.Errorf("line at byte %d is not an event: %q", off, truncate(line, 80))
		}
		if e.Seq <= last {
			return nil, 0, fmt.Errorf("line at byte %d: sequence %d after %d", off, e.Seq, last)
		}
		last = e.Seq
		events = append(events, e)
		off += nl + 1
	}
	return events, len(raw), nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// Stream is the outbox's stream name.
func (o *Outbox) Stream() string { return o.stream }

// Add appends an event, durably, and returns its sequence number. Type,
// RobotID and Data are the caller's; Time defaults to now.
func (o *Outbox) Add(e protocol.FactoryEvent) (uint64, error) {
	if e.Time.IsZero() {
		e.Time = o.now().UTC()
	}
	if len(e.Data) == 0 {
		e.Data = json.RawMessage(`{}`)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.log == nil {
		return 0, errors.New("outbox: closed")
	}
	if len(o.pending) >= MaxPending {
		return 0, fmt.Errorf("outbox: %d events already wait for control (unreachable since %s): refusing more; bring control back", len(o.pending), o.status.UnreachableSince.Format(time.RFC3339))
	}
	e.Seq = o.lastSeq + 1
	line, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("outbox: encode %s event: %w", e.Type, err)
	}
	if _, err := o.log.Write(append(line, '\n')); err != nil {
		return 0, fmt.Errorf("outbox: append: %w", err)
	}
	if err := o.log.Sync(); err != nil {
		return 0, fmt.Errorf("outbox: sync: %w", err)
	}
	o.lastSeq = e.Seq
	o.pending = append(o.pending, e)
	o.status.Pending, o.status.LastSeq = len(o.pending), o.lastSeq
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return e.Seq, nil
}

// Status reports the queue and the link.
func (o *Outbox) Status() Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.status
}

// Run sends pending events to control in order, in batches, until ctx ends.
// A failed send is retried with backoff (retry, up to maxBackoff) and shows
// in Status; events are never dropped.
func (o *Outbox) Run(ctx context.Context, send SendFunc, retry, maxBackoff time.Duration) {
	if retry <= 0 {
		retry = 500 * time.Millisecond
	}
	if maxBackoff < retry {
		maxBackoff = 30 * time.Second
	}
	backoff := retry
	for {
		o.mu.Lock()
		batch := protocol.FactoryEvents{Stream: o.stream, Events: append([]protocol.FactoryEvent(nil), o.pending[:min(len(o.pending), protocol.MaxFactoryBatch)]...)}
		o.mu.Unlock()
		if len(batch.Events) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-o.wake:
				continue
			}
		}
		err := send(ctx, batch)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			o.mu.Lock()
			if o.status.UnreachableSince.IsZero() {
				o.status.UnreachableSince = o.now().UTC()
			}
			o.status.LastError = err.Error()
			o.mu.Unlock()
			// Jitter so that many stations do not come back in step.
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, maxBackoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		backoff = retry
		if err := o.confirm(batch.Events[len(batch.Events)-1].Seq); err != nil {
			o.mu.Lock()
			o.status.LastError = err.Error()
			o.mu.Unlock()
		}
	}
}

// confirm records that control has every event up to seq.
func (o *Outbox) confirm(seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for n < len(o.pending) && o.pending[n].Seq <= seq {
		n++
	}
	o.pending = o.pending[n:]
	o.ackedLines += n
	o.acked = seq
	o.status.Pending, o.status.Acked = len(o.pending), seq
	o.status.UnreachableSince, o.status.LastError = time.Time{}, ""
	if err := writeAtomic(filepath.Join(o.dir, "acked"), []byte(strconv.FormatUint(seq, 10)+"\n")); err != nil {
		return err
	}
	if o.ackedLines >= o.compactAfter {
		return o.compact()
	}
	return nil
}

// compact rewrites the log with the pending events only. Called with mu held.
func (o *Outbox) compact() error {
	path := filepath.Join(o.dir, "log")
	var buf bytes.Buffer
	for _, e := range o.pending {
		line, err := json.Marshal(e)
		if err != nil {
			return err
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if err := writeAtomic(path, buf.Bytes()); err != nil {
		return fmt.Errorf("outbox: compact: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("outbox: reopen log after compaction: %w", err)
	}
	o.log.Close()
	o.log, o.ackedLines = f, 0
	return nil
}

// Close closes the log; pending events stay on disk for the next Open.
func (o *Outbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.log == nil {
		return nil
	}
	err := o.log.Close()
	o.log = nil
	return err
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync dir.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	w := bufio.NewWriter(f)
	w.Write(data)
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("outbox: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("outbox: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
