package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"time"

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/client"
	"gopkg.in/yaml.v3"
)

// Backups.
//
// The event log is the source of truth, so a backup is the whole events
// table, read in one read transaction (a consistent snapshot: nothing
// committed after its first read is in it, nothing committed before is
// missing) and written as JSON lines:
//
//	{"format":"lekiwi-heartbeat-backup","version":1,"schema_version":3,"last_seq":812,"events":790,...}
//	{"seq":1,"prev":0,"robot_id":"kiwi-1","type":"RobotRegistered","time":"…","data":{…}}
//	{"seq":2,"prev":1,…}
//	…
//	{"end":{"events":790,"last_seq":812,"sha256":"…"}}
//
// Every event line names the seq of the event before it in the snapshot
// ("prev"). Seqs have holes where telemetry retention deleted events; prev
// tells those holes apart from lines missing from the file. The end line
// carries the SHA-256 of every byte before it, so a truncated or altered
// file is refused as a whole. A node that fails half way through writes
// {"error":"…"} instead of the end line.
//
// Restore replays the lines into a fresh node with their original seqs,
// through the same projection code as Append, then verifies the projection.

// Backup file format identification.
const (
	BackupFormat  = "lekiwi-heartbeat-backup"
	BackupVersion = 1
)

// MaxBackupLine is the longest line a backup may hold (an event's data is
// at most a 64 KiB robot frame, or a 1 MiB API body).
const MaxBackupLine = 4 << 20

// BackupHeader is the first line of a backup.
type BackupHeader struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// SchemaVersion is the newest migration of the database backed up.
	SchemaVersion int `json:"schema_version"`
	// LastSeq is the newest event in the snapshot (0 for an empty log).
	LastSeq int64 `json:"last_seq"`
	// Events is how many events follow.
	Events    int64     `json:"events"`
	CreatedAt time.Time `json:"created_at"`
	// Node is the dqlite address of the node that wrote the backup.
	Node string `json:"node"`
}

// BackupEnd is the last line of a complete backup.
type BackupEnd struct {
	Events  int64 `json:"events"`
	LastSeq int64 `json:"last_seq"`
	// SHA256 is the hex digest of every byte of the file before this line.
	SHA256 string `json:"sha256"`
}

// BackupOptions tune Backup.
type BackupOptions struct {
	// Node is written to the header (default: this node's dqlite address).
	Node string
	// Now stamps the header; zero means time.Now().
	Now time.Time
	// PageSize is the rows read per query inside the read transaction
	// (default 1000).
	PageSize int
	// StallTimeout bounds how long the snapshot waits for w to take a
	// page. A reader that stops reading would otherwise keep the read
	// transaction (and dqlite's WAL) open for ever. Default 2 minutes.
	StallTimeout time.Duration
}

// BackupSummary describes a written backup.
type BackupSummary struct {
	Header BackupHeader
	// Bytes were written to w (0 means nothing was: the caller may still
	// answer with an error of its own).
	Bytes  int64
	SHA256 string
}

// ErrBackupStalled is returned when the backup's reader stopped reading.
var ErrBackupStalled = errors.New("backup reader stopped reading; the snapshot was released")

// Backup writes a consistent snapshot of the event log to w (see the
// format above). Rows are paged inside one read transaction and handed to
// the writer a page at a time, so memory stays bounded by a few pages
// whatever the size of the log. Writers are not blocked: dqlite's WAL
// lets them commit while the snapshot is read.
//
// If it fails after writing started, Backup writes an error line and
// returns the error with Bytes > 0.
func (s *Store) Backup(ctx context.Context, w io.Writer, o BackupOptions) (BackupSummary, error) {
	if o.Node == "" {
		o.Node = s.Address()
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 2 * time.Minute
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	headers := make(chan BackupHeader, 1)
	pages := make(chan []byte, 2)
	done := make(chan error, 1)
	// The header is read first, and the channels are closed only after
	// snapshot returns: a snapshot that ended before anyone looked (a
	// small log) still hands over its header, and one that failed before
	// it closes headers empty. (Selecting on header and result at once
	// once took a finished snapshot's nil result for a failure.)
	go func() {
		err := s.snapshot(ctx, o, headers, pages)
		close(headers)
		close(pages)
		done <- err
	}()

	var sum BackupSummary
	h := sha256.New()
	out := &countingWriter{w: io.MultiWriter(w, h)}
	hdr, ok := <-headers
	if !ok {
		err := <-done
		if err == nil {
			err = errors.New("the snapshot ended without a header")
		}
		return sum, fmt.Errorf("back up the event log: %w", err)
	}
	sum.Header = hdr
	line, err := json.Marshal(hdr)
	if err != nil {
		cancel()
		<-done
		return sum, err
	}
	writeErr := writeLine(out, line)
	for page := range pages {
		if writeErr == nil {
			writeErr = writeAll(out, page)
		}
		if writeErr != nil {
			cancel() // the snapshot stops at its next page
		}
	}
	snapErr := <-done
	sum.Bytes = out.n
	if writeErr != nil {
		return sum, fmt.Errorf("write backup: %w", writeErr)
	}
	if snapErr != nil {
		// Tell whoever reads the file why it ends here.
		msg, _ := json.Marshal(map[string]string{"error": snapErr.Error()})
		_ = writeLine(out, msg)
		sum.Bytes = out.n
		return sum, fmt.Errorf("back up the event log after %d bytes: %w", sum.Bytes, snapErr)
	}
	sum.SHA256 = hex.EncodeToString(h.Sum(nil))
	end, _ := json.Marshal(struct {
		End BackupEnd `json:"end"`
	}{BackupEnd{Events: hdr.Events, LastSeq: hdr.LastSeq, SHA256: sum.SHA256}})
	// The end line goes to w only: the checksum covers what precedes it.
	if err := writeLine(w, end); err != nil {
		return sum, fmt.Errorf("write backup: %w", err)
	}
	sum.Bytes = out.n + int64(len(end)) + 1
	return sum, nil
}

// snapshot reads the log in one read transaction: the header's numbers
// first, then every row in pages, encoded as lines.
func (s *Store) snapshot(ctx context.Context, o BackupOptions, headers chan<- BackupHeader, pages chan<- []byte) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("begin read transaction: %w", err)
	}
	defer tx.Rollback()
	hdr := BackupHeader{Format: BackupFormat, Version: BackupVersion, CreatedAt: o.Now.UTC(), Node: o.Node}
	// One statement, so the three numbers come from the same instant; the
	// transaction keeps every later read at that instant too.
	if err := tx.QueryRowContext(ctx, `SELECT
			(SELECT count(*) FROM events),
			(SELECT coalesce(max(seq), 0) FROM events),
			(SELECT coalesce(max(version), 0) FROM schema_migrations)`).Scan(&hdr.Events, &hdr.LastSeq, &hdr.SchemaVersion); err != nil {
		return fmt.Errorf("read log size: %w", err)
	}
	headers <- hdr
	stall := time.NewTimer(o.StallTimeout)
	defer stall.Stop()
	var prev, n int64
	for {
		rows, err := tx.QueryContext(ctx, `SELECT seq, robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time
			FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, prev, o.PageSize)
		if err != nil {
			return fmt.Errorf("read events after seq %d: %w", prev, err)
		}
		var buf []byte
		count := 0
		for rows.Next() {
			e, err := scanEvent(rows)
			if err != nil {
				rows.Close()
				return err
			}
			if e.Seq > hdr.LastSeq {
				rows.Close()
				return fmt.Errorf("event seq %d is past the snapshot's last seq %d: the read transaction did not isolate", e.Seq, hdr.LastSeq)
			}
			if buf, err = appendEventLine(buf, e, prev); err != nil {
				rows.Close()
				return err
			}
			prev = e.Seq
			count++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read events after seq %d: %w", prev, err)
		}
		n += int64(count)
		if count > 0 {
			stall.Reset(o.StallTimeout)
			select {
			case pages <- buf:
			case <-stall.C:
				return ErrBackupStalled
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if count < o.PageSize {
			break
		}
	}
	if n != hdr.Events {
		return fmt.Errorf("snapshot holds %d events but counted %d at its start: the read transaction did not isolate", n, hdr.Events)
	}
	return nil
}

// eventMeta is an event line without its data, which is spliced in raw
// so the stored bytes come back exactly.
type eventMeta struct {
	Seq           int64     `json:"seq"`
	Prev          int64     `json:"prev"`
	RobotID       string    `json:"robot_id,omitempty"`
	Type          string    `json:"type"`
	Time          time.Time `json:"time"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	CausationID   string    `json:"causation_id,omitempty"`
	Actor         string    `json:"actor,omitempty"`
	Stream        string    `json:"stream,omitempty"`
	RobotSeq      uint64    `json:"robot_seq,omitempty"`
	RobotTime     time.Time `json:"robot_time,omitzero"`
}

// appendEventLine appends e as one backup line (with its newline) to buf.
func appendEventLine(buf []byte, e Event, prev int64) ([]byte, error) {
	meta, err := json.Marshal(eventMeta{Seq: e.Seq, Prev: prev, RobotID: e.RobotID, Type: e.Type, Time: e.Time.UTC(),
		CorrelationID: e.CorrelationID, CausationID: e.CausationID, Actor: e.Actor,
		Stream: e.Stream, RobotSeq: e.RobotSeq, RobotTime: e.RobotTime.UTC()})
	if err != nil {
		return buf, fmt.Errorf("encode event %d: %w", e.Seq, err)
	}
	data := []byte(e.Data)
	if len(data) == 0 {
		data = []byte("{}")
	}
	if !json.Valid(data) {
		return buf, fmt.Errorf("event %d (%s) holds data that is not JSON: the database is damaged", e.Seq, e.Type)
	}
	// Whitespace inside JSON is insignificant, but a newline would split
	// the line: only then is the data compacted.
	if bytes.ContainsAny(data, "\r\n") {
		var c bytes.Buffer
		if err := json.Compact(&c, data); err != nil {
			return buf, fmt.Errorf("event %d: %w", e.Seq, err)
		}
		data = c.Bytes()
	}
	buf = append(buf, meta[:len(meta)-1]...)
	buf = append(buf, `,"data":`...)
	buf = append(buf, data...)
	return append(buf, '}', '\n'), nil
}

// backupLine is any line after the header: an event, the end, or an error.
type backupLine struct {
	Seq           *int64          `json:"seq"`
	Prev          *int64          `json:"prev"`
	RobotID       string          `json:"robot_id"`
	Type          string          `json:"type"`
	Time          *time.Time      `json:"time"`
	CorrelationID string          `json:"correlation_id"`
	CausationID   string          `json:"causation_id"`
	Actor         string          `json:"actor"`
	Stream        string          `json:"stream"`
	RobotSeq      uint64          `json:"robot_seq"`
	RobotTime     *time.Time      `json:"robot_time"`
	Data          json.RawMessage `json:"data"`
	End           *BackupEnd      `json:"end"`
	Error         *string         `json:"error"`
}

// Line kinds.
const (
	lineEvent = iota
	lineEnd
	lineError
)

// Times a database row can hold: nanoseconds since 1970 in an int64.
var (
	minEventTime = time.Unix(0, math.MinInt64).UTC()
	maxEventTime = time.Unix(0, math.MaxInt64).UTC()
)

// parseBackupLine decodes and checks one line after the header. For an
// event line it returns the event and the seq the line says precedes it.
func parseBackupLine(line []byte) (kind int, e Event, prev int64, end BackupEnd, errMsg string, err error) {
	var l backupLine
	if err := strictJSON(line, &l); err != nil {
		return 0, Event{}, 0, BackupEnd{}, "", err
	}
	isEvent := l.Seq != nil || l.Prev != nil || l.Type != "" || l.Time != nil || l.Data != nil || l.RobotID != "" ||
		l.CorrelationID != "" || l.CausationID != "" || l.Actor != "" || l.Stream != "" || l.RobotSeq != 0 || l.RobotTime != nil
	switch {
	case l.End != nil && !isEvent && l.Error == nil:
		if l.End.Events < 0 || l.End.LastSeq < 0 {
			return 0, Event{}, 0, BackupEnd{}, "", errors.New("end line has negative counts")
		}
		return lineEnd, Event{}, 0, *l.End, "", nil
	case l.Error != nil && !isEvent && l.End == nil:
		return lineError, Event{}, 0, BackupEnd{}, *l.Error, nil
	case l.End != nil || l.Error != nil:
		return 0, Event{}, 0, BackupEnd{}, "", errors.New("line mixes an event with an end or error marker")
	}
	switch {
	case l.Seq == nil:
		return 0, Event{}, 0, BackupEnd{}, "", errors.New(`event line has no "seq"`)
	case *l.Seq <= 0:
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d is not positive", *l.Seq)
	case l.Prev == nil:
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf(`event seq %d has no "prev"`, *l.Seq)
	case *l.Prev < 0 || *l.Prev >= *l.Seq:
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d says it follows seq %d: prev must be below seq", *l.Seq, *l.Prev)
	case l.Type == "":
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d has no type", *l.Seq)
	case l.Time == nil || l.Time.IsZero():
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d has no time", *l.Seq)
	case l.Time.Before(minEventTime) || l.Time.After(maxEventTime):
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d: time %s is outside what the log can hold", *l.Seq, l.Time)
	case l.RobotTime != nil && !l.RobotTime.IsZero() && (l.RobotTime.Before(minEventTime) || l.RobotTime.After(maxEventTime)):
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d: robot_time %s is outside what the log can hold", *l.Seq, l.RobotTime)
	case l.Data == nil:
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf(`event seq %d has no "data"`, *l.Seq)
	case (l.Stream == "") != (l.RobotSeq == 0):
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d: stream and robot_seq go together", *l.Seq)
	case l.RobotSeq > math.MaxInt64:
		return 0, Event{}, 0, BackupEnd{}, "", fmt.Errorf("event seq %d: robot_seq %d is too large", *l.Seq, l.RobotSeq)
	}
	e = Event{Seq: *l.Seq, RobotID: l.RobotID, Type: l.Type, Time: l.Time.UTC(), Data: l.Data,
		CorrelationID: l.CorrelationID, CausationID: l.CausationID, Actor: l.Actor, Stream: l.Stream, RobotSeq: l.RobotSeq}
	if l.RobotTime != nil && !l.RobotTime.IsZero() {
		e.RobotTime = l.RobotTime.UTC()
	}
	return lineEvent, e, *l.Prev, BackupEnd{}, "", nil
}

// strictJSON decodes exactly one JSON object with no unknown fields.
func strictJSON(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not a valid backup line: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("not a valid backup line: more than one JSON value")
	}
	return nil
}

// BackupError is a problem with a backup file, at a line.
type BackupError struct {
	Line int
	Msg  string
}

func (e *BackupError) Error() string {
	if e.Line == 0 {
		return "backup: " + e.Msg
	}
	return fmt.Sprintf("backup line %d: %s", e.Line, e.Msg)
}

// BackupReader reads and checks a backup line by line.
type BackupReader struct {
	sc      *bufio.Scanner
	h       hash.Hash
	line    int
	bytes   int64
	header  BackupHeader
	prev    int64
	prevAt  int // line of the previous event
	events  int64
	done    bool
	failure error
}

// NewBackupReader reads the header and checks it names a backup this
// control can restore.
func NewBackupReader(r io.Reader) (*BackupReader, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxBackupLine)
	b := &BackupReader{sc: sc, h: sha256.New()}
	line, ok, err := b.next()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &BackupError{Msg: "the file is empty: not a Lekiwi Heartbeat backup"}
	}
	hdr, err := parseBackupHeader(line)
	if err != nil {
		return nil, &BackupError{Line: 1, Msg: err.Error()}
	}
	b.header = hdr
	b.h.Write(line)
	b.h.Write([]byte{'\n'})
	return b, nil
}

// parseBackupHeader checks the first line of a backup.
func parseBackupHeader(line []byte) (BackupHeader, error) {
	// Format and version first, leniently, so a newer format is named as
	// such rather than as unknown fields.
	var id struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(line, &id); err != nil || id.Format != BackupFormat {
		return BackupHeader{}, fmt.Errorf("not a Lekiwi Heartbeat backup (the first line must be a header with \"format\":%q)", BackupFormat)
	}
	if id.Version != BackupVersion {
		return BackupHeader{}, fmt.Errorf("backup format version %d is not supported: this control reads version %d (restore with the control release that wrote it, or a newer one)", id.Version, BackupVersion)
	}
	var h BackupHeader
	if err := strictJSON(line, &h); err != nil {
		return BackupHeader{}, fmt.Errorf("header: %w", err)
	}
	current := migrations[len(migrations)-1].version
	switch {
	case h.SchemaVersion < 1:
		return BackupHeader{}, fmt.Errorf("header: schema_version %d is not a schema version", h.SchemaVersion)
	case h.SchemaVersion > current:
		return BackupHeader{}, fmt.Errorf("backup schema version %d is newer than this control's (%d): restore with the control release that wrote it, or a newer one", h.SchemaVersion, current)
	case h.LastSeq < 0 || h.Events < 0 || h.Events > h.LastSeq:
		return BackupHeader{}, fmt.Errorf("header: %d events up to seq %d is impossible", h.Events, h.LastSeq)
	}
	return h, nil
}

// next reads one line; ok is false at the end of the input.
func (b *BackupReader) next() ([]byte, bool, error) {
	if !b.sc.Scan() {
		if err := b.sc.Err(); err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				return nil, false, &BackupError{Line: b.line + 1, Msg: fmt.Sprintf("line is longer than %d bytes: not a backup line", MaxBackupLine)}
			}
			return nil, false, fmt.Errorf("read backup after line %d: %w", b.line, err)
		}
		return nil, false, nil
	}
	b.line++
	line := b.sc.Bytes()
	b.bytes += int64(len(line)) + 1
	return line, true, nil
}

// Header is the backup's first line.
func (b *BackupReader) Header() BackupHeader { return b.header }

// Line is the number of the last line read.
func (b *BackupReader) Line() int { return b.line }

// Bytes is how much of the file has been read.
func (b *BackupReader) Bytes() int64 { return b.bytes }

// Events is how many events have been read.
func (b *BackupReader) Events() int64 { return b.events }

// Next returns the next event. After the last one it checks the end line
// (counts and checksum) and returns io.EOF; any other error names the line.
func (b *BackupReader) Next() (Event, error) {
	if b.failure != nil {
		return Event{}, b.failure
	}
	if b.done {
		return Event{}, io.EOF
	}
	e, err := b.read()
	if err != nil && err != io.EOF {
		b.failure = err
	}
	return e, err
}

func (b *BackupReader) read() (Event, error) {
	line, ok, err := b.next()
	if err != nil {
		return Event{}, err
	}
	if !ok {
		return Event{}, &BackupError{Line: b.line, Msg: fmt.Sprintf("the file ends after %d of %d events without its end line: the backup is truncated (was it interrupted?); take it again", b.events, b.header.Events)}
	}
	kind, e, prev, end, msg, err := parseBackupLine(line)
	if err != nil {
		return Event{}, &BackupError{Line: b.line, Msg: err.Error()}
	}
	switch kind {
	case lineError:
		return Event{}, &BackupError{Line: b.line, Msg: "the node failed while writing this backup: " + msg + "; take it again"}
	case lineEnd:
		return Event{}, b.finish(end)
	}
	switch {
	case e.Seq <= b.prev:
		return Event{}, &BackupError{Line: b.line, Msg: fmt.Sprintf("event seq %d does not follow seq %d on line %d: seqs must increase strictly", e.Seq, b.prev, b.prevAt)}
	case prev != b.prev:
		before := fmt.Sprintf("the line before holds seq %d", b.prev)
		if b.prevAt == 0 {
			before = "it is the first event of the file"
		}
		return Event{}, &BackupError{Line: b.line, Msg: fmt.Sprintf("gap: event seq %d follows seq %d in the log, but %s: events are missing from the file", e.Seq, prev, before)}
	case e.Seq > b.header.LastSeq:
		return Event{}, &BackupError{Line: b.line, Msg: fmt.Sprintf("event seq %d is past the header's last_seq %d", e.Seq, b.header.LastSeq)}
	}
	b.h.Write(line)
	b.h.Write([]byte{'\n'})
	b.prev, b.prevAt = e.Seq, b.line
	b.events++
	return e, nil
}

func (b *BackupReader) finish(end BackupEnd) error {
	b.done = true
	fail := func(format string, a ...any) error { return &BackupError{Line: b.line, Msg: fmt.Sprintf(format, a...)} }
	switch {
	case b.events != b.header.Events || end.Events != b.header.Events:
		return fail("the file holds %d events, the header announces %d and the end line %d: events are missing", b.events, b.header.Events, end.Events)
	case b.prev != b.header.LastSeq || end.LastSeq != b.header.LastSeq:
		return fail("the last event is seq %d, the header announces %d and the end line %d: events are missing", b.prev, b.header.LastSeq, end.LastSeq)
	}
	if sum := hex.EncodeToString(b.h.Sum(nil)); sum != end.SHA256 {
		return fail("checksum mismatch (file %s, end line %s): the file was altered or damaged", sum, end.SHA256)
	}
	for {
		line, ok, err := b.next()
		if err != nil {
			return err
		}
		if !ok {
			return io.EOF
		}
		if len(bytes.TrimSpace(line)) > 0 {
			return fail("data after the end line")
		}
	}
}

// BackupProgress reports how far reading or restoring a backup got.
type BackupProgress struct {
	Events int64 // events so far
	Total  int64 // events announced by the header
	Bytes  int64 // bytes of the file read
}

// CheckBackup reads a whole backup and checks every line, the counts and
// the checksum. progress (optional) is called every few thousand events.
func CheckBackup(r io.Reader, progress func(BackupProgress)) (BackupHeader, error) {
	br, err := NewBackupReader(r)
	if err != nil {
		return BackupHeader{}, err
	}
	for {
		if _, err := br.Next(); err == io.EOF {
			break
		} else if err != nil {
			return br.Header(), err
		}
		if progress != nil && br.Events()%5000 == 0 {
			progress(BackupProgress{Events: br.Events(), Total: br.Header().Events, Bytes: br.Bytes()})
		}
	}
	if progress != nil {
		progress(BackupProgress{Events: br.Events(), Total: br.Header().Events, Bytes: br.Bytes()})
	}
	return br.Header(), nil
}

// ImportEvents writes events exactly as they are, with their own seqs, and
// applies them to the projections in one transaction, through the same
// code as Append (Apply for the robots, applySecurity for tokens,
// enrollments and certificates, applyCommands for the command outbox). Unlike Append it adds nothing (no
// RobotRegistered before a first connection: the log being imported
// already holds it) and drops nothing: a duplicate is an error. Seqs must
// increase strictly and follow the newest event already in the log; the
// explicit seqs carry the AUTOINCREMENT counter along, so events appended
// later continue after the imported ones. At most MaxAppendBatch events.
func (s *Store) ImportEvents(ctx context.Context, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	if len(events) > MaxAppendBatch {
		return fmt.Errorf("import %d events: more than %d in one transaction is unsafe with libdqlite 1.11; split the batch", len(events), MaxAppendBatch)
	}
	for i := range events {
		if err := CheckEvent(&events[i]); err != nil {
			return fmt.Errorf("import event seq %d: %w", events[i].Seq, err)
		}
		if events[i].Seq <= 0 {
			return fmt.Errorf("import %s event: seq %d is not positive", events[i].Type, events[i].Seq)
		}
		if i > 0 && events[i].Seq <= events[i-1].Seq {
			return fmt.Errorf("import events: seq %d after seq %d; seqs must increase strictly", events[i].Seq, events[i-1].Seq)
		}
	}
	err := WithTx(ctx, s.db, func(tx *sql.Tx) error {
		var last sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT max(seq) FROM events`).Scan(&last); err != nil {
			return fmt.Errorf("read newest seq: %w", err)
		}
		if events[0].Seq <= last.Int64 {
			return fmt.Errorf("event seq %d is not after the newest event already in the log (seq %d)", events[0].Seq, last.Int64)
		}
		robots := newRobotCache(tx)
		for _, e := range events {
			if err := importOne(ctx, tx, robots, e); err != nil {
				return err
			}
		}
		return robots.flush(ctx)
	})
	if err != nil {
		return fmt.Errorf("import events %d-%d: %w", events[0].Seq, events[len(events)-1].Seq, err)
	}
	return nil
}

func importOne(ctx context.Context, tx *sql.Tx, robots *robotCache, e Event) error {
	var stream, robotSeq, robotTime any
	if e.Stream != "" {
		stream, robotSeq = e.Stream, int64(e.RobotSeq)
	}
	if !e.RobotTime.IsZero() {
		robotTime = e.RobotTime.UnixNano()
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events
		(seq, robot_id, type, time, data, correlation_id, causation_id, actor, stream, robot_seq, robot_time)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.Seq, e.RobotID, e.Type, e.Time.UnixNano(), string(e.Data), e.CorrelationID, e.CausationID, e.Actor, stream, robotSeq, robotTime); err != nil {
		return fmt.Errorf("insert event seq %d (%s, robot %q): %w", e.Seq, e.Type, e.RobotID, err)
	}
	// The same projections, in the same order, as appendBatch.
	if err := applySecurity(ctx, tx, e); err != nil {
		return err
	}
	if err := applyCommands(ctx, tx, e); err != nil {
		return err
	}
	if e.RobotID != "" && robotEvent(e.Type) {
		return robots.apply(ctx, e)
	}
	return nil
}

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// Store describes the new node: Dir is where its data goes (absent or
	// empty), Address its dqlite address — the one `control run` will use
	// on this data directory, since a node remembers its address. While
	// restoring, the node listens on a free loopback port instead (nothing
	// outside the host can reach it, and the final address may still be in
	// use by the node being replaced), so ListenTLS and DialTLS are not
	// used; the final address is written into the node's identity and raft
	// configuration after it stopped.
	Store Options
	// Progress, if set, is called after every transaction.
	Progress func(BackupProgress)
}

// RestoreReport describes a finished restore.
type RestoreReport struct {
	Header BackupHeader
	Events int64
	Robots int
	Bytes  int64
}

// Restore makes a new single-node database from a backup: it checks the
// header, starts a fresh dqlite node on a loopback port in a temporary
// directory next to o.Store.Dir, imports the events with their original
// seqs in transactions of MaxAppendBatch, checks the counts and the
// checksum, verifies that the robots projection equals a replay of the log,
// closes the node, gives it its final address (as `control recover` does:
// identity, raft configuration, peer list) and only then moves the
// directory into place. On any failure nothing is left at o.Store.Dir.
// Start `control run` on the directory afterwards.
func Restore(ctx context.Context, r io.Reader, o RestoreOptions) (RestoreReport, error) {
	dir := o.Store.Dir
	if dir == "" {
		return RestoreReport{}, errors.New("restore: a data directory for the new node is required")
	}
	if o.Store.Address == "" {
		return RestoreReport{}, errors.New("restore: the new node's dqlite address (host:port) is required")
	}
	if len(o.Store.Join) > 0 {
		return RestoreReport{}, errors.New("restore: a restored node starts a new cluster; other nodes join it afterwards")
	}
	if _, _, err := net.SplitHostPort(o.Store.Address); err != nil {
		return RestoreReport{}, fmt.Errorf("restore: dqlite address %q is not host:port", o.Store.Address)
	}
	if err := checkEmptyDir(dir); err != nil {
		return RestoreReport{}, err
	}
	br, err := NewBackupReader(r)
	if err != nil {
		return RestoreReport{}, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o750); err != nil {
		return RestoreReport{}, fmt.Errorf("restore: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".restoring-")
	if err != nil {
		return RestoreReport{}, fmt.Errorf("restore: make a working directory next to %s: %w", dir, err)
	}
	rep, err := restoreInto(ctx, br, o, tmp)
	if err == nil {
		err = setNodeAddress(tmp, o.Store.Address)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return rep, err
	}
	// An empty directory at dir goes first (os.Remove fails on anything
	// else, so nothing but an empty directory can be lost).
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		os.RemoveAll(tmp)
		return rep, fmt.Errorf("restore: data directory %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return rep, fmt.Errorf("restore: move the restored data to %s: %w", dir, err)
	}
	if d, err := os.Open(parent); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return rep, nil
}

func restoreInto(ctx context.Context, br *BackupReader, o RestoreOptions, dir string) (RestoreReport, error) {
	rep := RestoreReport{Header: br.Header()}
	so := o.Store
	so.Dir, so.ListenTLS, so.DialTLS = dir, nil, nil
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return rep, fmt.Errorf("restore: find a free loopback port: %w", err)
	}
	so.Address = l.Addr().String()
	l.Close()
	st, err := Open(ctx, so)
	if err != nil {
		return rep, fmt.Errorf("restore: start the new node: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			st.Close()
		}
	}()
	if last, err := st.LastSeq(ctx); err != nil || last != 0 {
		return rep, fmt.Errorf("restore: the new node's log is not empty (last seq %d, %v)", last, err)
	}
	batch := make([]Event, 0, MaxAppendBatch)
	flush := func() error {
		if err := st.ImportEvents(ctx, batch); err != nil {
			return fmt.Errorf("restore (at line %d): %w", br.Line(), err)
		}
		rep.Events += int64(len(batch))
		batch = batch[:0]
		if o.Progress != nil {
			o.Progress(BackupProgress{Events: rep.Events, Total: rep.Header.Events, Bytes: br.Bytes()})
		}
		return nil
	}
	for {
		e, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return rep, err
		}
		batch = append(batch, e)
		if len(batch) == MaxAppendBatch {
			if err := flush(); err != nil {
				return rep, err
			}
		}
	}
	if err := flush(); err != nil {
		return rep, err
	}
	rep.Bytes = br.Bytes()
	last, err := st.LastSeq(ctx)
	if err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	var n int64
	if err := st.db.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
		return rep, fmt.Errorf("restore: count events: %w", err)
	}
	if last != rep.Header.LastSeq || n != rep.Header.Events {
		return rep, fmt.Errorf("restore: the new log holds %d events up to seq %d, the backup %d up to seq %d", n, last, rep.Header.Events, rep.Header.LastSeq)
	}
	mm, err := st.Verify(ctx)
	if err != nil {
		return rep, fmt.Errorf("restore: verify the projection: %w", err)
	}
	if len(mm) > 0 {
		return rep, fmt.Errorf("restore: the robots projection differs from a replay of the log for %d robots (first %q); this is a bug, report it with the backup", len(mm), mm[0].RobotID)
	}
	if rep.Robots, err = st.CountRobots(ctx, ""); err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	closed = true
	if err := st.Close(); err != nil {
		return rep, fmt.Errorf("restore: stop the new node: %w", err)
	}
	return rep, nil
}

// withInfoAddress is go-dqlite app's info.yaml b with Address replaced and
// every other field left as written. go-dqlite writes the file through
// ghodss/yaml (sorted keys, plain scalars), which this output keeps, so its
// own reader takes it back.
func withInfoAddress(b []byte, address string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("node identity is not a YAML mapping")
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "Address" {
			m.Content[i+1].SetString(address)
			m.Content[i+1].Style = 0 // quoted only if it must be, whatever the old value needed
		}
	}
	return yaml.Marshal(&doc)
}

// setNodeAddress gives a stopped node its final address: in its identity
// (go-dqlite app's info.yaml), its raft configuration, and its peer list.
func setNodeAddress(dir, address string) error {
	path := filepath.Join(dir, "info.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("restore: read the new node's identity: %w", err)
	}
	var info nodeInfo
	if err := yaml.Unmarshal(b, &info); err != nil || info.ID == 0 {
		return fmt.Errorf("restore: the new node's identity %s is unreadable: %v", path, err)
	}
	out, err := withInfoAddress(b, address)
	if err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	if err := os.WriteFile(path+".new", out, 0o600); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	self := []dqlite.NodeInfo{{ID: info.ID, Address: address, Role: client.Voter}}
	if err := dqlite.ReconfigureMembershipExt(dir, self); err != nil {
		return fmt.Errorf("restore: set the new node's address in its raft configuration: %w", err)
	}
	peers, err := client.NewYamlNodeStore(filepath.Join(dir, "cluster.yaml"))
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := peers.Set(context.Background(), self); err != nil {
		return fmt.Errorf("restore: set the new node's peer list: %w", err)
	}
	return nil
}

// checkEmptyDir accepts a missing or empty directory.
func checkEmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("restore: data directory %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("restore: data directory %s is not empty (%d entries, e.g. %s): restore only into a new, empty directory, never over a node's data", dir, len(entries), entries[0].Name())
	}
	return nil
}

// countingWriter counts bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeLine(w io.Writer, line []byte) error {
	if err := writeAll(w, line); err != nil {
		return err
	}
	return writeAll(w, []byte{'\n'})
}

func writeAll(w io.Writer, p []byte) error {
	_, err := w.Write(p)
	return err
}
