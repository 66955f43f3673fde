package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl"
)

// StateFile is the updater's record in Options.StateDir (on the persistent
// partition): the update in flight, if any, and what each slot holds.
const StateFile = "update-state.json"

// maxStateBytes bounds the state file so a corrupt one cannot exhaust
// memory.
const maxStateBytes = 64 << 10

// Phases of a pending update, in order. The phase tells the next start
// what an interruption means.
const (
	phaseInstalling = "installing" // downloading or writing the inactive slot
	phaseArmed      = "armed"      // the slot is verified, a trial reboot is armed or under way
)

// Pending is the update in flight: written before the first byte of the
// inactive slot, rewritten before the trial is armed, removed when the
// update ends (committed, rolled back or failed).
type Pending struct {
	DeploymentID string `json:"deployment_id"`
	Release      string `json:"release"`
	Version      string `json:"version"`
	// Slot is the slot being written or tried; From is the slot that was
	// running when the update started (the one to fall back to).
	Slot  bootctl.Slot `json:"slot"`
	From  bootctl.Slot `json:"from"`
	Phase string       `json:"phase"`
	// Rollback marks a trial of the previous slot asked for by a rollback
	// command rather than a new release.
	Rollback             bool      `json:"rollback,omitempty"`
	HealthTimeoutSeconds int       `json:"health_timeout_seconds,omitempty"`
	HealthRetries        int       `json:"health_retries,omitempty"`
	Started              time.Time `json:"started"`
	// BootID is the kernel's boot id (/proc/sys/kernel/random/boot_id)
	// when the trial reboot was asked for. An agent that starts again
	// under the same id knows no reboot happened: its request failed or
	// it was killed making it — not a trial that never came up.
	BootID string `json:"boot_id,omitempty"`
	// SecurityVersion is the release's (release.Config.SecurityVersion):
	// its commit raises State.SecurityFloor to it.
	SecurityVersion int64 `json:"security_version,omitempty"`
	// AllowDowngrade is the command's: an install resumed after a restart
	// is allowed what the interrupted one was.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// SlotRecord is what the updater knows a slot holds.
type SlotRecord struct {
	Version string `json:"version,omitempty"`
	// Complete is true once the slot's content was verified (or it was the
	// running, healthy slot when an update started), and false from the
	// moment an update starts overwriting it.
	Complete bool `json:"complete"`
	// SHA256 of each partition as written and verified, by GPT name; empty
	// for a slot the updater did not write. (A slot that has booted since
	// no longer matches: its filesystems were mounted read-write.)
	SHA256 map[string]string `json:"sha256,omitempty"`
}

// State is the content of StateFile.
type State struct {
	Pending *Pending                     `json:"pending,omitempty"`
	Slots   map[bootctl.Slot]*SlotRecord `json:"slots,omitempty"`
	// SecurityFloor is the highest security version this robot committed,
	// or the build time of an image it ran when an update or rollback
	// started, whichever is higher; it never goes down (see
	// Updater.floor). Zero on a robot that never updated.
	SecurityFloor int64 `json:"security_floor,omitempty"`
}

// ParseState reads a state file's bytes, refusing anything that does not
// name valid slots and phases.
func ParseState(b []byte) (*State, error) {
	if len(b) > maxStateBytes {
		return nil, fmt.Errorf("update state of %d bytes, at most %d", len(b), maxStateBytes)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("update state: %w", err)
	}
	if p := s.Pending; p != nil {
		if !p.Slot.Valid() || !p.From.Valid() || p.Slot == p.From {
			return nil, fmt.Errorf("update state: pending update of slot %q from slot %q", p.Slot, p.From)
		}
		if p.Phase != phaseInstalling && p.Phase != phaseArmed {
			return nil, fmt.Errorf("update state: unknown phase %q", p.Phase)
		}
		if p.HealthTimeoutSeconds < 0 || p.HealthRetries < 0 {
			return nil, fmt.Errorf("update state: negative health timeout %d or retries %d", p.HealthTimeoutSeconds, p.HealthRetries)
		}
		if p.SecurityVersion < 0 {
			return nil, fmt.Errorf("update state: pending release's security version %d is negative", p.SecurityVersion)
		}
	}
	if s.SecurityFloor < 0 {
		return nil, fmt.Errorf("update state: security floor %d is negative", s.SecurityFloor)
	}
	for slot := range s.Slots {
		if !slot.Valid() {
			return nil, fmt.Errorf("update state: record of slot %q", slot)
		}
		if s.Slots[slot] == nil {
			delete(s.Slots, slot)
		}
	}
	return &s, nil
}

// Store keeps the state file's bytes.
type Store interface {
	// Load returns the saved bytes, or nil and no error when there are none.
	Load() ([]byte, error)
	// Save replaces them; when it returns, a power cut keeps the new bytes,
	// and one during it keeps the old or the new, never a mix.
	Save(b []byte) error
}

// FileStore is the state file at Path: written to a temporary file,
// fsynced, renamed over Path, and the directory fsynced.
type FileStore struct{ Path string }

// Load implements Store.
func (f FileStore) Load() ([]byte, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read update state: %w", err)
	}
	return b, nil
}

// loadState reads the state; none saved is an empty state.
func loadState(st Store) (*State, error) {
	b, err := st.Load()
	if err != nil {
		return nil, err
	}
	if b == nil {
		return &State{}, nil
	}
	s, err := ParseState(b)
	if err != nil {
		return nil, fmt.Errorf("%w (remove the update state file to forget the update in flight)", err)
	}
	return s, nil
}

func saveState(st Store, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return st.Save(b)
}

// slot returns the record of slot, creating it.
func (s *State) slot(slot bootctl.Slot) *SlotRecord {
	if s.Slots == nil {
		s.Slots = map[bootctl.Slot]*SlotRecord{}
	}
	r := s.Slots[slot]
	if r == nil {
		r = &SlotRecord{}
		s.Slots[slot] = r
	}
	return r
}

// Save implements Store.
func (s FileStore) Save(b []byte) error {
	dir := filepath.Dir(s.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("update state directory: %w", err)
	}
	path := s.Path
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write update state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write update state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write update state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write update state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write update state: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write update state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write update state: sync %s: %w", dir, err)
	}
	return nil
}
