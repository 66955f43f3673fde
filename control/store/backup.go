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
	"os"
	"path/filepath"
	"time"
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
	go func() {
		done <- s.snapshot(ctx, o, headers, pages)
		close(pages)
	}()

	var sum BackupSummary
	h := sha256.New()
	out := &countingWriter{w: io.MultiWriter(w, h)}
	var hdr BackupHeader
	select {
	case hdr = <-headers:
	case err := <-done:
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
	if err := writeLine(&countingWriter{w: w, n: out.n}, end); err != nil {
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
		return Event{}, &BackupError{Line: b.line, Msg: fmt.Sprintf("gap: event seq %d follows seq %d in the log, but the line before holds seq %d: events are missing from the file", e.Seq, prev, b.prev)}
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
