// Package identity hands every card that `provision flash` writes its own
// robot identity — robot id, host name, CA, and an enrollment token or a
// certificate and key — for image/customize to write onto it.
//
// Two sources exist: a CSV batch file prepared in advance (CSV), and
// control itself, asked with the engineer's API token to mint a
// single-use enrollment token for a fresh robot id (Control).
//
// An identity is handed out at most once. Each one issued is first
// appended, and fsynced, to a journal (for a batch, <csv>.used) before
// the card gets it; Finish then records whether the card came out good.
// A card that failed may hold part of its identity — its key, its token —
// so its identity is never silently handed to the next card: it stays
// "failed" in the journal, where the technician sees it. A later run can
// take failed rows back on purpose (CSVOptions.ReissueFailed) once those
// cards are wiped. A token minted by control for a failed card is simply
// never used and expires.
package identity

import (
	"context"

	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/profiles"
)

// Source hands out one distinct identity per card. Its methods are safe
// for concurrent use: flash writes many cards at once.
type Source interface {
	// Next returns a new identity for the card at target (a device or
	// file path, recorded in the journal). The identity is journaled
	// before Next returns, so it is never handed out again, even after a
	// crash.
	Next(ctx context.Context, target string) (customize.Robot, error)
	// Finish records how the card at target that got robotID ended:
	// failure nil means the identity is on a good card.
	Finish(robotID, target string, failure error) error
	// Close closes the journal.
	Close() error
}

// Hostname is the host name a robot gets when none is given: the
// profile's pattern when it can be expanded from the robot id alone, else
// the robot id itself (patterns such as "lekiwi-{serial}" need the board
// serial, which is unknown while the card is still in the reader).
func Hostname(p *profiles.Profile, robotID string) string {
	if p != nil {
		if h, err := p.Hostname("", robotID); err == nil {
			return h
		}
	}
	return robotID
}
