package identity

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Journal events.
const (
	EventIssued = "issued" // handed to a card; outcome not yet known
	EventOK     = "ok"     // the card came out good
	EventFailed = "failed" // the card failed; its identity is not reused
)

// Record is one journal line: time, event, robot id, target, detail.
type Record struct {
	Time    time.Time
	Event   string
	RobotID string
	Target  string
	Detail  string // why a card failed
}

// Journal is an append-only record of the identities handed out, one CSV
// line per event, each fsynced before the call returns.
type Journal struct {
	mu   sync.Mutex
	f    *os.File
	w    *csv.Writer
	path string
	now  func() time.Time
}

// OpenJournal opens (or creates) the journal at path for appending, locks
// it against other processes until Close, and returns what it already
// holds. A last line cut short by a crash is
// dropped: its append never returned, so no card got that identity.
func OpenJournal(path string, now func() time.Time) (*Journal, []Record, error) {
	if now == nil {
		now = time.Now
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open identity journal: %w", err)
	}
	// Two benches sharing one batch file would hand out the same rows.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("identity journal %s is in use by another provision run (%w): give each bench its own batch file", path, err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read identity journal %s: %w", path, err)
	}
	recs, err := ParseJournal(data)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("identity journal %s: %w (it records which identities were handed out: fix or move it aside only if you know which cards got them)", path, err)
	}
	if n := len(data); n > 0 && data[n-1] != '\n' {
		// Drop the torn line, so the next record starts a line of its own.
		if err := f.Truncate(int64(bytes.LastIndexByte(data, '\n') + 1)); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("identity journal %s: drop a torn last line: %w", path, err)
		}
	}
	return &Journal{f: f, w: csv.NewWriter(f), path: path, now: now}, recs, nil
}

// Path is where the journal is.
func (j *Journal) Path() string { return j.path }

// Append writes one record (its Time is set now) and fsyncs it.
func (j *Journal) Append(event, robotID, target, detail string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return fmt.Errorf("identity journal %s is closed", j.path)
	}
	// One line per record, always: a newline inside a field would let a
	// torn write look like a complete line.
	oneLine := strings.NewReplacer("\r", " ", "\n", " ")
	rec := []string{j.now().UTC().Format(time.RFC3339Nano), event, oneLine.Replace(robotID), oneLine.Replace(target), oneLine.Replace(detail)}
	if err := j.w.Write(rec); err != nil {
		return fmt.Errorf("identity journal %s: %w", j.path, err)
	}
	j.w.Flush()
	if err := j.w.Error(); err != nil {
		return fmt.Errorf("identity journal %s: record %s %s: %w", j.path, event, robotID, err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("identity journal %s: sync after %s %s: %w", j.path, event, robotID, err)
	}
	return nil
}

// Close closes the journal file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}

// ParseJournal reads journal lines. The final line counts only when it
// ends with a newline (see OpenJournal).
func ParseJournal(data []byte) ([]Record, error) {
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		data = data[:i+1]
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = 5
	var out []Record
	for {
		fields, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		t, err := time.Parse(time.RFC3339Nano, fields[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: time %q: %w", line, fields[0], err)
		}
		switch fields[1] {
		case EventIssued, EventOK, EventFailed:
		default:
			return nil, fmt.Errorf("line %d: unknown event %q (want %s, %s or %s)", line, fields[1], EventIssued, EventOK, EventFailed)
		}
		if fields[2] == "" {
			return nil, fmt.Errorf("line %d: no robot id", line)
		}
		out = append(out, Record{Time: t, Event: fields[1], RobotID: fields[2], Target: fields[3], Detail: fields[4]})
	}
}

// LastEvents maps each robot id to its latest event.
func LastEvents(recs []Record) map[string]string {
	m := make(map[string]string, len(recs))
	for _, r := range recs {
		m[r.RobotID] = r.Event
	}
	return m
}
