package updatecmd

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// CommandsFile records the update commands this robot accepted and how it
// answered them, in Options.StateDir.
const CommandsFile = "update-commands.json"

// maxRecords bounds the file: control redelivers only commands it has not
// seen answered, so only the last few matter.
const maxRecords = 32

// maxRecordsBytes bounds what is parsed from disk.
const maxRecordsBytes = 256 << 10

// statusAccepted marks a command being worked on; ok and error are final.
const statusAccepted = "accepted"

type record struct {
	ID      string              `json:"id"`
	Args    protocol.UpdateArgs `json:"args"`
	Status  string              `json:"status"` // accepted, ok, error
	Message string              `json:"message,omitempty"`
	At      time.Time           `json:"at"`
}

// store is ota.FileStore (atomic replace, fsync'd).
type store interface {
	Load() ([]byte, error)
	Save([]byte) error
}

type records struct {
	st   store
	list []record // oldest first
}

// parseRecords reads CommandsFile's bytes, refusing records without an ID
// or with an unknown status.
func parseRecords(b []byte) ([]record, error) {
	if len(b) > maxRecordsBytes {
		return nil, fmt.Errorf("update commands record of %d bytes, at most %d", len(b), maxRecordsBytes)
	}
	var list []record
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("update commands record: %w", err)
	}
	for i, r := range list {
		if r.ID == "" {
			return nil, fmt.Errorf("update commands record: entry %d has no command id", i)
		}
		switch r.Status {
		case statusAccepted, "ok", "error":
		default:
			return nil, fmt.Errorf("update commands record: command %q has status %q", r.ID, r.Status)
		}
	}
	return list, nil
}

// loadRecords always returns usable records; the error says why the file
// was not used.
func loadRecords(st store) (*records, error) {
	r := &records{st: st}
	b, err := st.Load()
	if err != nil || b == nil {
		return r, err
	}
	list, err := parseRecords(b)
	if err != nil {
		return r, err
	}
	r.list = list
	return r, nil
}

func (r *records) get(id string) (record, bool) {
	for _, x := range r.list {
		if x.ID == id {
			return x, true
		}
	}
	return record{}, false
}

// accepted lists the commands accepted and not answered, oldest first.
func (r *records) accepted() []record {
	var out []record
	for _, x := range r.list {
		if x.Status == statusAccepted {
			out = append(out, x)
		}
	}
	return out
}

// put adds or replaces the record of rec.ID and saves the file.
func (r *records) put(rec record) error {
	list := slices.DeleteFunc(slices.Clone(r.list), func(x record) bool { return x.ID == rec.ID })
	list = append(list, rec)
	if len(list) > maxRecords {
		list = list[len(list)-maxRecords:]
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("update commands record: %w", err)
	}
	if err := r.st.Save(b); err != nil {
		return fmt.Errorf("update commands record: %w", err)
	}
	r.list = list
	return nil
}
