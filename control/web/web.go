package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// ContentSecurityPolicy is sent with every dashboard response: everything
// from this origin only, no inline scripts or styles, no framing. 'self' in
// connect-src covers the same-origin ws:/wss: of /v1/stream.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// pages are the client-side routes answered with the index page, and
// pagePrefixes those followed by one path segment (/robots/<id>).
var (
	pages        = []string{"/", "/login", "/events", "/deployments"}
	pagePrefixes = []string{"/robots/"}
)

// asset is one embedded file, prepared once.
type asset struct {
	name        string
	contentType string
	body        []byte
	gzipped     []byte // nil when compression does not pay
	etag        string
	version     string // short content hash used in ?v=
}

// Handler serves the dashboard. Mount it at "/" (any method; it answers 405
// to anything but GET and HEAD), after the API's more specific routes.
type Handler struct {
	index  *asset
	assets map[string]*asset // by URL path, /assets/<name>
}

// New prepares the embedded files: hashes, gzip, and the index page with
// versioned asset URLs.
func New() (*Handler, error) {
	h := &Handler{assets: map[string]*asset{}}
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("embedded dashboard files: %w", err)
	}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "index.html" {
			return err
		}
		b, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		h.assets["/assets/"+p] = newAsset(p, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded dashboard files: %w", err)
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		return nil, fmt.Errorf("embedded dashboard index: %w", err)
	}
	// Point the index at this build's assets so browsers never mix an old
	// script with a new page.
	for urlPath, a := range h.assets {
		index = bytes.ReplaceAll(index, []byte(`"`+urlPath+`"`), []byte(`"`+urlPath+"?v="+a.version+`"`))
	}
	h.index = newAsset("index.html", index)
	return h, nil
}

func newAsset(name string, body []byte) *asset {
	sum := sha256.Sum256(body)
	a := &asset{name: name, body: body, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, version: hex.EncodeToString(sum[:6])}
	a.contentType = mime.TypeByExtension(path.Ext(name))
	if a.contentType == "" {
		a.contentType = "application/octet-stream"
	}
	if strings.HasPrefix(a.contentType, "text/") || strings.Contains(a.contentType, "javascript") || strings.Contains(a.contentType, "svg") || strings.Contains(a.contentType, "json") {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(body)
		_ = zw.Close()
		if buf.Len() < len(body)*9/10 {
			a.gzipped = buf.Bytes()
		}
	}
	return a
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", ContentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hd.Set("Allow", "GET, HEAD")
		http.Error(w, "the dashboard only answers GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	if a, ok := h.assets[r.URL.Path]; ok {
		if v := r.URL.Query().Get("v"); v == a.version {
			hd.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			// Unversioned or stale URL: usable, but revalidate.
			hd.Set("Cache-Control", "no-cache")
		}
		serve(w, r, a)
		return
	}
	if isRoute(r.URL.Path) {
		// The index names the current assets: revalidate it every time.
		hd.Set("Cache-Control", "no-cache")
		serve(w, r, h.index)
		return
	}
	hd.Set("Cache-Control", "no-store")
	http.Error(w, fmt.Sprintf("no page %s; the dashboard is at /", truncate(r.URL.Path, 80)), http.StatusNotFound)
}

// isRoute reports whether p is a page the application routes itself.
func isRoute(p string) bool {
	if slices.Contains(pages, p) {
		return true
	}
	for _, prefix := range pagePrefixes {
		if rest, ok := strings.CutPrefix(p, prefix); ok && rest != "" && !strings.Contains(rest, "/") {
			return true
		}
	}
	return false
}

// serve answers with a's body, gzipped when the client accepts it, and
// handles conditional requests by ETag.
func serve(w http.ResponseWriter, r *http.Request, a *asset) {
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("ETag", a.etag)
	body := a.body
	if a.gzipped != nil {
		hd.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			hd.Set("Content-Encoding", "gzip")
			// A different representation needs a different tag.
			hd.Set("ETag", strings.TrimSuffix(a.etag, `"`)+`-gzip"`)
			body = a.gzipped
		}
	}
	// ServeContent answers If-None-Match with 304 and handles HEAD and
	// ranges; the zero modtime keeps Last-Modified out.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reads an Accept-Encoding header ("gzip, deflate, br",
// "gzip;q=0" refuses).
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
