package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func newHandler(t testing.TB) *Handler {
	t.Helper()
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func get(t *testing.T, h http.Handler, method, target string, header http.Header) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	rd := r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			t.Fatalf("gzip body: %v", err)
		}
		rd = zr
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assetURLs are the versioned asset URLs the index references.
var assetURL = regexp.MustCompile(`(?:src|href)="(/assets/[^"?]+)\?v=([0-9a-f]{12})"`)

func TestPagesAndHeaders(t *testing.T) {
	h := newHandler(t)
	tests := []struct {
		method, path string
		status       int
		contentType  string
		cache        string
		contains     string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", "no-cache", `<main id="main">`},
		{"GET", "/login", 200, "text/html; charset=utf-8", "no-cache", `<main id="main">`},
		{"GET", "/events", 200, "text/html; charset=utf-8", "no-cache", `<main id="main">`},
		{"GET", "/deployments", 200, "text/html; charset=utf-8", "no-cache", `<main id="main">`},
		{"GET", "/robots/lekiwi-7", 200, "text/html; charset=utf-8", "no-cache", `<main id="main">`},
		{"HEAD", "/robots/lekiwi-7", 200, "text/html; charset=utf-8", "no-cache", ""},
		{"GET", "/robots/", 404, "text/plain; charset=utf-8", "no-store", "dashboard is at /"},
		{"GET", "/robots/a/b", 404, "text/plain; charset=utf-8", "no-store", "no page"},
		{"GET", "/nope", 404, "text/plain; charset=utf-8", "no-store", "no page"},
		{"GET", "/assets/", 404, "text/plain; charset=utf-8", "no-store", "no page"},
		{"GET", "/assets/app.js", 200, "text/javascript; charset=utf-8", "no-cache", "connectStream"},
		{"GET", "/assets/app.css", 200, "text/css; charset=utf-8", "no-cache", "--accent"},
		{"GET", "/assets/favicon.svg", 200, "image/svg+xml", "no-cache", "<svg"},
		{"GET", "/assets/app.js?v=000000000000", 200, "text/javascript; charset=utf-8", "no-cache", "connectStream"},
		{"POST", "/", 405, "text/plain; charset=utf-8", "", "GET and HEAD"},
		{"DELETE", "/assets/app.js", 405, "text/plain; charset=utf-8", "", "GET and HEAD"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := get(t, h, tc.method, tc.path, nil)
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", r.StatusCode, tc.status)
			}
			if got := r.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if got := r.Header.Get("Cache-Control"); got != tc.cache {
				t.Errorf("Cache-Control %q, want %q", got, tc.cache)
			}
			if got := r.Header.Get("Content-Security-Policy"); got != ContentSecurityPolicy {
				t.Errorf("Content-Security-Policy %q", got)
			}
			for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
				if got := r.Header.Get(k); got != v {
					t.Errorf("%s %q, want %q", k, got, v)
				}
			}
			if b := body(t, r); !strings.Contains(b, tc.contains) {
				t.Errorf("body does not contain %q:\n%.300s", tc.contains, b)
			}
		})
	}
}

func TestCSPForbidsInlineCode(t *testing.T) {
	for _, directive := range []string{"script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
		if !strings.Contains(ContentSecurityPolicy, directive) {
			t.Errorf("CSP lacks %q", directive)
		}
	}
	if strings.Contains(ContentSecurityPolicy, "unsafe") {
		t.Errorf("CSP allows something unsafe: %s", ContentSecurityPolicy)
	}
	h := newHandler(t)
	index := body(t, get(t, h, "GET", "/", nil))
	// Every script is external and every asset is versioned; no inline
	// script, handler attribute or style attribute (the CSP would block
	// them, breaking the page silently).
	for _, bad := range []*regexp.Regexp{regexp.MustCompile(`<script(?:\s+[^>]*)?>\s*[^<\s]`), regexp.MustCompile(`\son[a-z]+=`), regexp.MustCompile(`\sstyle=`), regexp.MustCompile(`<style`)} {
		if loc := bad.FindStringIndex(index); loc != nil {
			t.Errorf("index has inline code %q", index[loc[0]:min(loc[1]+40, len(index))])
		}
	}
	refs := assetURL.FindAllStringSubmatch(index, -1)
	if len(refs) != 3 {
		t.Fatalf("index references %d versioned assets, want 3 (script, stylesheet, icon): %v", len(refs), refs)
	}
	for _, ref := range refs {
		r := get(t, h, "GET", ref[1]+"?v="+ref[2], nil)
		if r.StatusCode != 200 || r.Header.Get("Cache-Control") != "public, max-age=31536000, immutable" {
			t.Errorf("%s?v=%s: status %d, Cache-Control %q; want 200 and a year, immutable", ref[1], ref[2], r.StatusCode, r.Header.Get("Cache-Control"))
		}
		if h.assets[ref[1]].version != ref[2] {
			t.Errorf("%s: index names version %s, asset is %s", ref[1], ref[2], h.assets[ref[1]].version)
		}
	}
}

// TestNoExternalResources: the dashboard must work without internet access
// (no CDN): no asset names another origin.
func TestNoExternalResources(t *testing.T) {
	h := newHandler(t)
	ext := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	files := map[string]string{"index.html": string(h.index.body)}
	for p, a := range h.assets {
		files[p] = string(a.body)
	}
	for name, content := range files {
		for _, m := range ext.FindAllString(content, -1) {
			if m == "http://www.w3.org" { // SVG namespace name, never fetched
				continue
			}
			t.Errorf("%s references %s", name, m)
		}
	}
}

func TestGzipAndConditional(t *testing.T) {
	h := newHandler(t)
	plain := get(t, h, "GET", "/assets/app.js", nil)
	plainBody := body(t, plain)
	zipped := get(t, h, "GET", "/assets/app.js", http.Header{"Accept-Encoding": {"br, gzip;q=0.8"}})
	if zipped.Header.Get("Content-Encoding") != "gzip" || zipped.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("Accept-Encoding gzip: Content-Encoding %q, Vary %q", zipped.Header.Get("Content-Encoding"), zipped.Header.Get("Vary"))
	}
	raw, err := io.ReadAll(zipped.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) == 0 || len(raw) >= len(plainBody)/2 {
		t.Errorf("gzipped %d bytes, plain %d: want less than half", len(raw), len(plainBody))
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(unzipped); got != plainBody {
		t.Errorf("gzipped body differs from the plain one")
	}
	if zipped.Header.Get("ETag") == plain.Header.Get("ETag") {
		t.Errorf("gzip and identity share ETag %s", plain.Header.Get("ETag"))
	}
	if r := get(t, h, "GET", "/assets/app.js", http.Header{"Accept-Encoding": {"gzip;q=0"}}); r.Header.Get("Content-Encoding") != "" {
		t.Errorf("gzip;q=0 still got %q", r.Header.Get("Content-Encoding"))
	}
	for _, r := range []*http.Response{plain, zipped} {
		hdr := http.Header{"If-None-Match": {r.Header.Get("ETag")}}
		if r.Header.Get("Content-Encoding") == "gzip" {
			hdr.Set("Accept-Encoding", "gzip")
		}
		if again := get(t, h, "GET", "/assets/app.js", hdr); again.StatusCode != http.StatusNotModified {
			t.Errorf("If-None-Match %s: status %d, want 304", r.Header.Get("ETag"), again.StatusCode)
		}
	}
	if r := get(t, h, "GET", "/assets/app.js", http.Header{"If-None-Match": {`"stale"`}}); r.StatusCode != 200 {
		t.Errorf("stale ETag: status %d, want 200", r.StatusCode)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"":                 false,
		"gzip":             true,
		"GZIP":             true,
		"deflate, gzip":    true,
		"gzip;q=0":         false,
		"gzip; q=0.000":    false,
		"gzip;q=0.5, br":   true,
		"br, identity":     false,
		"x-gzip":           false,
		"*":                false, // conservative: only an explicit gzip
		" gzip ;q=1 , br":  true,
		"gzipper, deflate": false,
	} {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", header, got, want)
		}
	}
}

// FuzzServeHTTP: any path and Accept-Encoding get a page, an asset, 404 or
// 405, always with the CSP, and never a panic.
func FuzzServeHTTP(f *testing.F) {
	h := newHandler(f)
	f.Add("GET", "/robots/lekiwi-1", "gzip")
	f.Add("GET", "/assets/app.js?v=1", "gzip;q=0, br")
	f.Add("HEAD", "/robots/%2F..%2F", "")
	f.Add("POST", "/events", "*")
	f.Fuzz(func(t *testing.T, method, target, acceptEncoding string) {
		if method != "GET" && method != "HEAD" {
			method = "POST"
		}
		req, err := http.NewRequest(method, "http://control.local/", nil)
		if err != nil {
			t.Skip()
		}
		u, err := req.URL.Parse(target)
		if err != nil || u.Path == "" {
			t.Skip()
		}
		req.URL = u
		req.Header.Set("Accept-Encoding", acceptEncoding)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			if method == "POST" {
				t.Fatalf("POST %s answered 200", target)
			}
		case 404, 405:
		default:
			t.Fatalf("%s %s: status %d", method, target, rec.Code)
		}
		if rec.Header().Get("Content-Security-Policy") != ContentSecurityPolicy {
			t.Fatalf("%s %s: no CSP", method, target)
		}
		if rec.Code == 200 && rec.Header().Get("Content-Encoding") == "gzip" && !acceptsGzip(acceptEncoding) {
			t.Fatalf("gzip sent to Accept-Encoding %q", acceptEncoding)
		}
	})
}
