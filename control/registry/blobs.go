package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobs serves reads of stored blobs to ggcr's registry. Blobs are shared
// by every repository (content addressed), as in most registries.
type blobs struct{ dir string }

func (b *blobs) path(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || !hexDigest.MatchString(h.Hex) {
		return "", ggcr.ErrNotFound
	}
	return filepath.Join(b.dir, "sha256", h.Hex), nil
}

// Stat trusts the file's size: its contents were checked against the digest
// before it got its name (ggcr's disk handler re-hashes on every HEAD).
func (b *blobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	p, err := b.path(h)
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, ggcr.ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (b *blobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	p, err := b.path(h)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ggcr.ErrNotFound
	}
	return f, err
}

func (b *blobs) Delete(_ context.Context, _ string, h v1.Hash) error {
	p, err := b.path(h)
	if err != nil {
		return err
	}
	if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
		return ggcr.ErrNotFound
	} else if err != nil {
		return err
	}
	return nil
}

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// maxUploads bounds upload sessions held at once; the oldest is dropped
// when a new one would exceed it (an abandoned push must not hold the slot
// forever).
const maxUploads = 256

// upload is one blob upload session: its bytes are in dir/uploads/<id>,
// the running sha256 in memory.
type upload struct {
	mu   sync.Mutex
	id   string
	seq  uint64
	h    hash.Hash
	size int64
	done bool
}

func (s *server) uploadPath(id string) string { return filepath.Join(s.dir, "uploads", id) }

func (s *server) newUpload() (*upload, error) {
	u := &upload{id: newID(), h: sha256.New()}
	f, err := os.OpenFile(s.uploadPath(u.id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, err
	}
	f.Close()
	s.uploadsMu.Lock()
	defer s.uploadsMu.Unlock()
	s.uploadSeq++
	u.seq = s.uploadSeq
	if len(s.uploads) >= maxUploads {
		var oldest *upload
		for _, o := range s.uploads {
			if oldest == nil || o.seq < oldest.seq {
				oldest = o
			}
		}
		delete(s.uploads, oldest.id)
		os.Remove(s.uploadPath(oldest.id))
	}
	s.uploads[u.id] = u
	return u, nil
}

func (s *server) getUpload(id string) *upload {
	s.uploadsMu.Lock()
	defer s.uploadsMu.Unlock()
	return s.uploads[id]
}

func (s *server) dropUpload(u *upload) {
	s.uploadsMu.Lock()
	delete(s.uploads, u.id)
	s.uploadsMu.Unlock()
	os.Remove(s.uploadPath(u.id))
}

// appendBody adds r to the session's file and hash. Called with u.mu held.
func (s *server) appendBody(u *upload, r io.Reader) error {
	f, err := os.OpenFile(s.uploadPath(u.id), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.MultiWriter(f, u.h), r)
	u.size += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// finish checks the digest and moves the upload to its blob name.
func (s *server) finish(u *upload, digest string) error {
	want, err := v1.NewHash(digest)
	if err != nil || want.Algorithm != "sha256" {
		return fmt.Errorf("digest %q is not a sha256 digest", digest)
	}
	if got := hex.EncodeToString(u.h.Sum(nil)); got != want.Hex {
		return errDigest{fmt.Sprintf("uploaded %d bytes with digest sha256:%s, not %s", u.size, got, digest)}
	}
	f, err := os.OpenFile(s.uploadPath(u.id), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return commit(f, filepath.Join(s.dir, "blobs", "sha256", want.Hex))
}

type errDigest struct{ msg string }

func (e errDigest) Error() string { return e.msg }

// serveUpload implements the distribution spec's blob upload endpoints
// (POST, PATCH, PUT, GET, DELETE on /v2/<repo>/blobs/uploads/[<id>]),
// streaming every byte to disk.
func (s *server) serveUpload(w http.ResponseWriter, r *http.Request, repo, id string) {
	loc := func(id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }
	blobDone := func(digest string) {
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+digest)
		w.Header().Set("Docker-Content-Digest", digest)
		w.WriteHeader(http.StatusCreated)
	}
	q := r.URL.Query()
	if id == "" {
		if r.Method != http.MethodPost {
			regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "start an upload with POST")
			return
		}
		if m := q.Get("mount"); m != "" {
			if h, err := v1.NewHash(m); err == nil {
				if _, err := (&blobs{dir: filepath.Join(s.dir, "blobs")}).Stat(r.Context(), repo, h); err == nil {
					blobDone(m)
					return
				}
			}
		}
		u, err := s.newUpload()
		if err != nil {
			s.log.Error("registry: start upload", "err", err)
			regError(w, http.StatusInternalServerError, "UNKNOWN", "could not start the upload on disk")
			return
		}
		if d := q.Get("digest"); d != "" { // monolithic upload
			u.mu.Lock()
			defer u.mu.Unlock()
			defer s.dropUpload(u)
			if err := s.appendBody(u, r.Body); err != nil {
				regError(w, http.StatusInternalServerError, "BLOB_UPLOAD_INVALID", err.Error())
				return
			}
			if err := s.finish(u, d); err != nil {
				s.uploadError(w, err)
				return
			}
			blobDone(d)
			return
		}
		w.Header().Set("Location", loc(u.id))
		w.Header().Set("Docker-Upload-UUID", u.id)
		w.Header().Set("Range", "0-0")
		w.WriteHeader(http.StatusAccepted)
		return
	}
	u := s.getUpload(id)
	if u == nil || strings.Contains(id, "/") {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "no such upload (it may have been dropped by a restart); start again")
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "upload already finished")
		return
	}
	rangeHeader := func() {
		w.Header().Set("Location", loc(u.id))
		w.Header().Set("Docker-Upload-UUID", u.id)
		w.Header().Set("Range", fmt.Sprintf("0-%d", max(u.size-1, 0)))
	}
	switch r.Method {
	case http.MethodGet:
		rangeHeader()
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		u.done = true
		s.dropUpload(u)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		if cr := r.Header.Get("Content-Range"); cr != "" {
			var start, end int64
			if _, err := fmt.Sscanf(cr, "%d-%d", &start, &end); err != nil || start != u.size {
				rangeHeader()
				regError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID", fmt.Sprintf("Content-Range %q does not continue at byte %d", cr, u.size))
				return
			}
		}
		if err := s.appendBody(u, r.Body); err != nil {
			regError(w, http.StatusInternalServerError, "BLOB_UPLOAD_INVALID", err.Error())
			return
		}
		rangeHeader()
		w.WriteHeader(http.StatusAccepted)
	case http.MethodPut:
		if err := s.appendBody(u, r.Body); err != nil {
			regError(w, http.StatusInternalServerError, "BLOB_UPLOAD_INVALID", err.Error())
			return
		}
		d := q.Get("digest")
		err := s.finish(u, d)
		u.done = true
		s.dropUpload(u)
		if err != nil {
			s.uploadError(w, err)
			return
		}
		blobDone(d)
	default:
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed on an upload")
	}
}

func (s *server) uploadError(w http.ResponseWriter, err error) {
	var de errDigest
	if errors.As(err, &de) || strings.Contains(err.Error(), "not a sha256 digest") {
		regError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	s.log.Error("registry: store blob", "err", err)
	regError(w, http.StatusInternalServerError, "UNKNOWN", "could not store the blob on disk")
}
