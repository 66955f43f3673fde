package station

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/netboot/tftp"
	"github.com/lekiwi/heartbeat/protocol"
)

// Steps of a board's factory run (protocol.FactoryStep.Step).
const (
	StepSeen     = "seen"
	StepBoot     = "boot"
	StepProbe    = "probe"
	StepMatch    = "match"
	StepIdentity = "identity"
	StepInstall  = "install"
	StepVerify   = "verify"
	StepReboot   = "reboot"
	StepOnline   = "online"
)

// Statuses of a step (protocol.FactoryStep.Status).
const (
	StatusStarted = "started"
	StatusWaiting = "waiting"
	StatusDone    = "done"
	StatusHeld    = "held"
	StatusFailed  = "failed"
)

// Board is everything the station knows about one board. It is stored as
// JSON in <state dir>/boards/<serial>.json.
type Board struct {
	Serial    string    `json:"serial"` // 8 lowercase hex digits
	MAC       string    `json:"mac,omitempty"`
	Model     string    `json:"model,omitempty"`    // decoded from the revision: "Raspberry Pi 5 8GB"
	Revision  string    `json:"revision,omitempty"` // hex
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`

	// Token authenticates the board's calls to the HTTP API. A new one is
	// made whenever the board starts a new factory run (fetches config.txt
	// after its previous run ended), so a token leaked from an earlier run
	// is worthless.
	Token string `json:"token,omitempty"`

	Step   string `json:"step"`
	Status string `json:"status"`
	// Reason says why the board is held or failed, or what it waits for.
	Reason string `json:"reason,omitempty"`
	// ControlUnreachableSince is set while the board waits for control.
	ControlUnreachableSince time.Time `json:"control_unreachable_since,omitzero"`
	LastControlError        string    `json:"last_control_error,omitempty"`

	Profile  string    `json:"profile,omitempty"`
	RobotID  string    `json:"robot_id,omitempty"`
	Hostname string    `json:"hostname,omitempty"`
	Storage  string    `json:"storage,omitempty"` // device the image goes onto
	Identity *Identity `json:"identity,omitempty"`
	// Installed is set when the board reported its identity written (the
	// last step before its reboot).
	Installed bool `json:"installed,omitempty"`

	// Done and Total are the last byte counts the board reported.
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`

	Report    *protocol.HardwareReport `json:"report,omitempty"`
	UpdatedAt time.Time                `json:"updated_at"`
}

// Identity is what control gave the board: kept until the board reported
// the identity is written (a board that fails halfway retries with the same one).
type Identity struct {
	Profile     string    `json:"profile"`
	RobotID     string    `json:"robot_id"`
	EnrollToken string    `json:"enroll_token"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	CAPEM       string    `json:"ca_pem"`
}

// finished reports whether the board's run ended, so that its next boot
// starts a new one.
func (b *Board) finished() bool {
	return b.Installed || b.Status == StatusHeld || b.Status == StatusFailed
}

// boardStore keeps one file per board.
type boardStore struct{ dir string }

func openBoardStore(stateDir string) (*boardStore, error) {
	dir := filepath.Join(stateDir, "boards")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("station: creating the board state directory: %w", err)
	}
	return &boardStore{dir: dir}, nil
}

// load reads every board; a damaged file is an error naming it (a person
// must look: silently dropping a board would lose its identity).
func (s *boardStore) load() (map[string]*Board, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("station: reading board states: %w", err)
	}
	boards := map[string]*Board{}
	for _, e := range entries {
		name := e.Name()
		serial, ok := strings.CutSuffix(name, ".json")
		if !ok || !tftp.IsSerial(serial) {
			continue // temp files of an interrupted write, strangers
		}
		raw, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			return nil, fmt.Errorf("station: reading board state: %w", err)
		}
		var b Board
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, fmt.Errorf("station: board state %s is damaged (%v): fix or remove it, the board then starts over", filepath.Join(s.dir, name), err)
		}
		if b.Serial != serial {
			return nil, fmt.Errorf("station: board state %s names serial %q: fix or remove it", filepath.Join(s.dir, name), b.Serial)
		}
		boards[serial] = &b
	}
	return boards, nil
}

func (s *boardStore) save(b *Board) error {
	raw, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fmt.Errorf("station: encoding board %s: %w", b.Serial, err)
	}
	return writeAtomic(filepath.Join(s.dir, b.Serial+".json"), append(raw, '\n'))
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync dir.
func writeAtomic(path string, data []byte) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("station: saving %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriter(f)
	_, _ = w.Write(data)
	if err := errors.Join(w.Flush(), f.Sync()); err != nil {
		f.Close()
		return fmt.Errorf("station: writing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("station: writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("station: saving %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("station: syncing %s: %w", filepath.Dir(path), err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, fs.ErrInvalid) {
		return fmt.Errorf("station: syncing %s: %w", filepath.Dir(path), err)
	}
	return nil
}
