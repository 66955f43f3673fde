// Package registry is the OCI registry embedded in control, so one control
// node serves disk images (image/ociart artifacts) out of the box.
//
// It is go-containerregistry's registry with everything made durable:
// blobs are uploaded to temporary files on disk (never into memory: ggcr's
// own upload sessions buffer whole blobs in RAM), checked against their
// digest, fsynced and renamed to <dir>/blobs/sha256/<hex>; manifests, which
// ggcr keeps in memory, are stored under <dir>/manifests/sha256/<hex> and
// every accepted manifest PUT or DELETE is appended to <dir>/manifests.journal
// (fsynced before the client gets its answer) and replayed into ggcr at
// start. A restart loses nothing that was acknowledged.
//
// Authentication and authorization are not here: control's API layer wraps
// this handler (see api.Server.Protect).
package registry

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
)

// Options tune the registry.
type Options struct {
	// Logger receives storage errors; nil discards them.
	Logger *slog.Logger
	// MaxManifestBytes bounds a manifest PUT; 0 means 4 MiB.
	MaxManifestBytes int64
}

type server struct {
	dir       string
	log       *slog.Logger
	maxMf     int64
	inner     http.Handler // ggcr's registry: blob reads, manifests, tags, catalog
	journalMu sync.Mutex
	journal   *os.File
	uploadsMu sync.Mutex
	uploads   map[string]*upload
	uploadSeq uint64
}

// New opens (creating it if needed) the registry stored in dir and returns
// the handler serving /v2/.
func New(dir string, opts Options) (http.Handler, error) {
	s := &server{dir: dir, log: opts.Logger, maxMf: opts.MaxManifestBytes, uploads: map[string]*upload{}}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.maxMf == 0 {
		s.maxMf = 4 << 20
	}
	for _, d := range []string{"blobs/sha256", "manifests/sha256", "uploads"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, fmt.Errorf("registry storage %s: %w (check registry_dir in the control config)", dir, err)
		}
	}
	// Upload sessions do not survive a restart; their files are garbage.
	if ents, err := os.ReadDir(filepath.Join(dir, "uploads")); err == nil {
		for _, e := range ents {
			os.Remove(filepath.Join(dir, "uploads", e.Name()))
		}
	}
	s.inner = ggcr.New(ggcr.WithBlobHandler(&blobs{dir: filepath.Join(dir, "blobs")}), ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithReferrersSupport(true))
	if err := s.replay(); err != nil {
		return nil, err
	}
	j, err := os.OpenFile(s.journalPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open manifest journal: %w", err)
	}
	s.journal = j
	return s, nil
}

func (s *server) journalPath() string { return filepath.Join(s.dir, "manifests.journal") }

// route splits /v2/<repo>/<kind>/<rest> where kind is blobs or manifests.
func route(p string) (repo, kind, rest string, ok bool) {
	p, found := strings.CutPrefix(p, "/v2/")
	if !found {
		return "", "", "", false
	}
	for _, k := range []string{"/blobs/uploads", "/manifests/"} {
		if i := strings.LastIndex(p, k); i > 0 {
			return p[:i], strings.Trim(k, "/"), strings.TrimPrefix(p[i+len(k):], "/"), true
		}
	}
	return "", "", "", false
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	repo, kind, rest, ok := route(r.URL.Path)
	switch {
	case ok && kind == "blobs/uploads":
		s.serveUpload(w, r, repo, rest)
	case ok && kind == "manifests" && (r.Method == http.MethodPut || r.Method == http.MethodDelete):
		s.serveManifestWrite(w, r, repo, rest)
	default:
		s.inner.ServeHTTP(w, r)
	}
}

// regError writes an OCI distribution error body.
func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// journalEntry is one line of manifests.journal.
type journalEntry struct {
	Op          string `json:"op"` // "put" or "delete"
	Repo        string `json:"repo"`
	Ref         string `json:"ref"` // tag or digest as the client sent it
	ContentType string `json:"contentType,omitempty"`
	Digest      string `json:"digest,omitempty"`
}

func (s *server) serveManifestWrite(w http.ResponseWriter, r *http.Request, repo, ref string) {
	var entry journalEntry
	var body []byte
	if r.Method == http.MethodPut {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxMf))
		if err != nil {
			regError(w, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", fmt.Sprintf("manifest larger than %d bytes or unreadable: %v", s.maxMf, err))
			return
		}
		sum := sha256.Sum256(b)
		digest := "sha256:" + hex.EncodeToString(sum[:])
		if strings.HasPrefix(ref, "sha256:") && ref != digest {
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest digest is %s, not %s", digest, ref))
			return
		}
		if err := writeFileSync(filepath.Join(s.dir, "manifests", "sha256", hex.EncodeToString(sum[:])), b); err != nil {
			s.log.Error("registry: store manifest", "repo", repo, "ref", ref, "err", err)
			regError(w, http.StatusInternalServerError, "UNKNOWN", "could not store the manifest on disk")
			return
		}
		body = b
		entry = journalEntry{Op: "put", Repo: repo, Ref: ref, ContentType: r.Header.Get("Content-Type"), Digest: digest}
	} else {
		entry = journalEntry{Op: "delete", Repo: repo, Ref: ref}
	}
	// One writer at a time, so the journal's order is the order ggcr saw.
	s.journalMu.Lock()
	defer s.journalMu.Unlock()
	rec := httptest.NewRecorder()
	req := r.Clone(r.Context())
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	s.inner.ServeHTTP(rec, req)
	if rec.Code == http.StatusCreated || rec.Code == http.StatusAccepted {
		if err := s.appendJournal(entry); err != nil {
			s.log.Error("registry: manifest journal", "repo", repo, "ref", ref, "err", err)
			regError(w, http.StatusInternalServerError, "UNKNOWN", "could not record the manifest durably; retry")
			return
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (s *server) appendJournal(e journalEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := s.journal.Write(append(b, '\n')); err != nil {
		return err
	}
	return s.journal.Sync()
}

// replay feeds the journal back into ggcr's in-memory manifests, in order.
func (s *server) replay() error {
	f, err := os.Open(s.journalPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open manifest journal: %w", err)
	}
	defer f.Close()
	entries, err := parseJournal(f)
	if err != nil {
		return fmt.Errorf("manifest journal %s: %w", s.journalPath(), err)
	}
	for i, e := range entries {
		var body []byte
		if e.Op == "put" {
			hexd := strings.TrimPrefix(e.Digest, "sha256:")
			body, err = os.ReadFile(filepath.Join(s.dir, "manifests", "sha256", hexd))
			if err != nil {
				return fmt.Errorf("manifest journal entry %d (%s:%s): %w", i+1, e.Repo, e.Ref, err)
			}
			if sum := sha256.Sum256(body); hex.EncodeToString(sum[:]) != hexd {
				return fmt.Errorf("manifest %s on disk does not match its digest (disk corruption?); restore %s from a backup", e.Digest, s.dir)
			}
		}
		method := http.MethodPut
		if e.Op == "delete" {
			method = http.MethodDelete
		}
		req := httptest.NewRequest(method, "/v2/"+e.Repo+"/manifests/"+e.Ref, bytes.NewReader(body))
		if e.ContentType != "" {
			req.Header.Set("Content-Type", e.ContentType)
		}
		rec := httptest.NewRecorder()
		s.inner.ServeHTTP(rec, req)
		if rec.Code >= 300 {
			s.log.Warn("registry: journal entry not replayed", "entry", i+1, "repo", e.Repo, "ref", e.Ref, "status", rec.Code)
		}
	}
	return nil
}

// parseJournal reads journal lines. A last line without its newline is a
// write cut short by a crash before it was acknowledged, and is dropped;
// any other bad line is an error.
func parseJournal(r io.Reader) ([]journalEntry, error) {
	var out []journalEntry
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return out, nil // a torn last line (no newline) is ignored
		}
		if err != nil {
			return nil, err
		}
		if len(line) > 1<<16 {
			return nil, fmt.Errorf("line %d is %d bytes long", n, len(line))
		}
		var e journalEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if (e.Op != "put" && e.Op != "delete") || e.Repo == "" || e.Ref == "" || strings.ContainsAny(e.Repo+e.Ref, "?#") || strings.Contains(e.Repo+e.Ref, "..") {
			return nil, fmt.Errorf("line %d: bad entry %+v", n, e)
		}
		if e.Op == "put" {
			if b, err := hex.DecodeString(strings.TrimPrefix(e.Digest, "sha256:")); err != nil || len(b) != sha256.Size || !strings.HasPrefix(e.Digest, "sha256:") {
				return nil, fmt.Errorf("line %d: digest %q", n, e.Digest)
			}
		}
		out = append(out, e)
	}
}

// writeFileSync writes b to path through a temporary file, fsyncs it and
// the directory, so path is either absent or complete.
func writeFileSync(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return commit(f, path)
}

// commit fsyncs and closes f, renames it to path and fsyncs the directory.
func commit(f *os.File, path string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
