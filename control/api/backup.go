package api

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// Database administration: backup of the event log and storage use.

// backup streams a consistent snapshot of the event log as JSON lines
// (store.Backup). The snapshot is paged inside one read transaction, so
// memory stays small whatever the log's size.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) error {
	// A backup of a large log outlives the 30 s request limit, and the
	// request context is canceled when that limit's read deadline fires.
	// The stream is bounded instead by the client: a failed write ends it,
	// a client that stops reading releases the snapshot after the stall
	// timeout.
	ctx := context.WithoutCancel(r.Context())
	now := s.o.Now().UTC()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="heartbeat-%s.ndjson"`, now.Format("20060102T150405Z")))
	sum, err := s.store.Backup(ctx, w, store.BackupOptions{Now: now})
	if err != nil {
		if sum.Bytes == 0 {
			// Nothing sent yet: an ordinary JSON error can still go.
			w.Header().Del("Content-Disposition")
			return err
		}
		// The status line is gone; the stream ends with an error line
		// (or was cut), which restore refuses.
		s.log.Error("backup failed while streaming", "bytes", sum.Bytes, "actor", principal(r).Actor(), "err", err)
		return nil
	}
	s.log.Info("backup streamed", "events", sum.Header.Events, "last_seq", sum.Header.LastSeq, "bytes", sum.Bytes,
		"sha256", sum.SHA256, "actor", principal(r).Actor())
	return nil
}

// StorageReport is the body of GET /v1/admin/storage.
type StorageReport struct {
	// DatabaseBytes is the database's size (page count × page size): what
	// dqlite 1.11 holds in memory on every node. FreeBytes of it are free
	// pages (left by retention) that new events reuse.
	DatabaseBytes int64 `json:"database_bytes"`
	FreeBytes     int64 `json:"free_bytes"`
	// Since is the start of the window measured.
	Since time.Time `json:"since"`
	// DataBytes sums the JSON data of every robot's events in the window.
	DataBytes int64 `json:"data_bytes"`
	// Robots are the largest users first, at most limit of them.
	Robots []store.RobotStorage `json:"robots"`
	// More is set when robots were left out by the limit.
	More bool `json:"more"`
}

// storage reports per-robot storage use over a window (default 30 days,
// the telemetry budget's), largest first.
func (s *Server) storage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit, err := parseLimit(q.Get("limit"))
	if err != nil {
		return err
	}
	window := 30 * 24 * time.Hour
	if v := q.Get("window"); v != "" {
		if window, err = time.ParseDuration(v); err != nil || window <= 0 {
			return badRequest("window must be a positive duration like 720h, got %q", v)
		}
	}
	rep := StorageReport{Since: s.o.Now().UTC().Add(-window), Robots: []store.RobotStorage{}}
	if rep.DatabaseBytes, rep.FreeBytes, err = s.store.DatabaseSize(r.Context()); err != nil {
		return err
	}
	use, err := s.store.StorageUse(r.Context(), rep.Since)
	if err != nil {
		return err
	}
	for _, u := range use {
		rep.DataBytes += u.DataBytes
	}
	slices.SortStableFunc(use, func(a, b store.RobotStorage) int { return cmp.Compare(b.DataBytes, a.DataBytes) })
	if len(use) > limit {
		use, rep.More = use[:limit], true
	}
	rep.Robots = append(rep.Robots, use...)
	writeJSON(w, http.StatusOK, rep)
	return nil
}
