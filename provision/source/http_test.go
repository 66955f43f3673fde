package source

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fileServer serves files with ETag and byte ranges like a static web server,
// and can cut responses short to simulate dropped connections.
type fileServer struct {
	mu          sync.Mutex
	files       map[string][]byte
	etag        string
	drops       int  // image responses still to cut
	cut         int  // bytes sent before cutting
	ignoreRange bool // answer every request with 200 and the whole file
	unavailable bool // answer 503 to requests with a Range after the first drop
	log         []string
}

func (s *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	data, ok := s.files[r.URL.Path]
	s.log = append(s.log, fmt.Sprintf("%s range=%q if-range=%q", r.URL.Path, r.Header.Get("Range"), r.Header.Get("If-Range")))
	rng := r.Header.Get("Range")
	unavailable := s.unavailable && rng != "" && s.drops == 0
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if unavailable {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return
	}
	start, end := 0, len(data)-1
	status := http.StatusOK
	if ir := r.Header.Get("If-Range"); ir != "" && ir != s.etag {
		rng = ""
	}
	if rng != "" && !s.ignoreRange {
		spec, _ := strings.CutPrefix(rng, "bytes=")
		a, b, _ := strings.Cut(spec, "-")
		if a == "" {
			n, _ := strconv.Atoi(b)
			start = len(data) - n
		} else {
			start, _ = strconv.Atoi(a)
			if b != "" {
				end, _ = strconv.Atoi(b)
			}
		}
		end = min(end, len(data)-1)
		if start < 0 || start > end {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(data)))
	}
	body := data[start : end+1]
	w.Header().Set("ETag", s.etag)
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	s.mu.Lock()
	drop := s.drops > 0 && len(body) > s.cut && !strings.HasSuffix(r.URL.Path, ".bmap")
	if drop {
		s.drops--
	}
	s.mu.Unlock()
	if drop {
		w.Write(body[:s.cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // closes the connection mid-body
	}
	w.Write(body)
}

func (s *fileServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

func fastRetry() Options { return Options{RetryBackoff: time.Millisecond} }

// A download that drops three times resumes with Range and If-Range each time
// and delivers exactly the file.
func TestHTTPResumesAfterDrops(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 7*mib, 11)
	files := map[string][]byte{"/robot.img": img}
	for _, tool := range []string{"xz", "zstd", "gzip"} {
		p := compressFile(t, raw, tool, "-1")
		b, _ := os.ReadFile(p)
		files["/robot.img"+filepath.Ext(p)] = b
	}
	for _, name := range []string{"/robot.img", "/robot.img.xz", "/robot.img.zst", "/robot.img.gz"} {
		t.Run(name, func(t *testing.T) {
			body := files[name]
			cut := len(body)/5 + 7
			fs := &fileServer{files: files, etag: `"v1"`, drops: 3, cut: cut}
			srv := httptest.NewServer(fs)
			defer srv.Close()
			var last, total int64
			opts := fastRetry()
			opts.Progress = func(done, tot int64) { last, total = done, tot }
			src, err := Open(context.Background(), srv.URL+name, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if src.Size() != int64(len(img)) {
				t.Fatalf("size %d, want %d", src.Size(), len(img))
			}
			if !bytes.Equal(readAll(t, src, 4*mib), img) {
				t.Fatal("downloaded image differs")
			}
			if last != int64(len(body)) || total != int64(len(body)) {
				t.Errorf("progress %d of %d, want %d of %d", last, total, len(body), len(body))
			}
			var resumes []string
			for _, r := range fs.requests() {
				if strings.HasPrefix(r, name+" ") && strings.Contains(r, `range="bytes=`) && strings.HasSuffix(r, `-" if-range="\"v1\""`) {
					resumes = append(resumes, r)
				}
			}
			// Every resume starts where the previous response was cut: after
			// k cuts of `cut` bytes.
			for k := range 3 {
				want := fmt.Sprintf(`%s range="bytes=%d-" if-range="\"v1\""`, name, (k+1)*cut)
				if k >= len(resumes) || resumes[k] != want {
					t.Fatalf("resume %d: got requests %q, want %q", k+1, fs.requests(), want)
				}
			}
			if len(resumes) != 3 {
				t.Errorf("%d resumes, want 3: %q", len(resumes), fs.requests())
			}
		})
	}
}

func TestHTTPServerIgnoringRangeFailsClearly(t *testing.T) {
	dir := t.TempDir()
	_, img := makeImage(t, dir, 3*mib, 12)
	fs := &fileServer{files: map[string][]byte{"/robot.img": img}, etag: `"v1"`, drops: 1, cut: mib, ignoreRange: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	src, err := Open(context.Background(), srv.URL+"/robot.img", fastRetry())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, err = src.ReadAt(make([]byte, 3*mib), 0)
	if err == nil || !strings.Contains(err.Error(), "200 instead of 206") || !strings.Contains(err.Error(), "ignores Range") || !strings.Contains(err.Error(), fmt.Sprintf("byte %d", mib)) {
		t.Fatalf("error %v, want one saying the server ignored Range at byte %d", err, mib)
	}
}

func TestHTTPFileChangedDuringDownload(t *testing.T) {
	dir := t.TempDir()
	_, img := makeImage(t, dir, 3*mib, 13)
	fs := &fileServer{files: map[string][]byte{"/robot.img": img}, etag: `"v1"`, drops: 1, cut: mib}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	src, err := Open(context.Background(), srv.URL+"/robot.img", fastRetry())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	fs.mu.Lock()
	fs.etag = `"v2"`
	fs.mu.Unlock()
	_, err = src.ReadAt(make([]byte, 3*mib), 0)
	if err == nil || !strings.Contains(err.Error(), "the file changed on the server") {
		t.Fatalf("error %v, want 'the file changed on the server'", err)
	}
}

func TestHTTPGivesUpAfterRetries(t *testing.T) {
	dir := t.TempDir()
	_, img := makeImage(t, dir, 3*mib, 14)
	fs := &fileServer{files: map[string][]byte{"/robot.img": img}, etag: `"v1"`, drops: 1, cut: mib, unavailable: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	opts := fastRetry()
	opts.Retries = 3
	src, err := Open(context.Background(), srv.URL+"/robot.img", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, err = src.ReadAt(make([]byte, 3*mib), 0)
	if err == nil || !strings.Contains(err.Error(), "3 attempts to resume failed") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("error %v", err)
	}
	if n := len(fs.requests()); n != 1+1+3 { // bmap, the first GET, 3 resumes
		t.Errorf("%d requests, want 5: %q", n, fs.requests())
	}
}

func TestHTTPBlockMap(t *testing.T) {
	dir := t.TempDir()
	raw, img := makeImage(t, dir, 5*mib, 15)
	writeBmap(t, raw, raw+".bmap")
	mapBytes, _ := os.ReadFile(raw + ".bmap")
	pipe := filepath.Join(dir, "pipe.zst")
	compress(t, pipe, raw, "zstd", "-q", "-1") // no content size: the map gives it
	zst, _ := os.ReadFile(pipe)
	fs := &fileServer{files: map[string][]byte{
		"/robot.img": img, "/robot.img.zst": zst, "/robot.img.bmap": mapBytes,
		"/nomap.img": img, "/nomap.img.zst": zst, "/other.img": img[:4*mib], "/other.img.bmap": mapBytes,
	}, etag: `"v1"`}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	for _, c := range []struct {
		name    string
		wantMap bool
		wantErr string
	}{
		{"/robot.img", true, ""},
		{"/robot.img.zst", true, ""},
		{"/nomap.img", false, ""},
		{"/nomap.img.zst", false, "give the size explicitly"},
		{"/other.img", false, "describes a 5242880-byte image but the server has 4194304"},
		{"/missing.img", false, "no such file on the server (HTTP 404)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, err := Open(context.Background(), srv.URL+c.name, fastRetry())
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if got := src.BlockMap() != nil; got != c.wantMap {
				t.Fatalf("block map %v, want %v", got, c.wantMap)
			}
			if c.wantMap && src.BlockMap().ImageSize != int64(len(img)) {
				t.Fatalf("map for %d bytes", src.BlockMap().ImageSize)
			}
			if !bytes.Equal(readAll(t, src, mib), img) {
				t.Fatal("image differs")
			}
		})
	}
}

// stallingServer serves a 2 MiB image (and no block map) that sends its
// first 4 KiB and then nothing until the request or the test ends.
func stallingServer(t *testing.T) *httptest.Server {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".bmap") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(2*mib))
		w.WriteHeader(http.StatusOK)
		w.Write(make([]byte, 4096))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	return srv
}

// Cancelling the context stops a download that waits for a slow server.
func TestHTTPContextCancel(t *testing.T) {
	srv := stallingServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	src, err := Open(ctx, srv.URL+"/slow.img", fastRetry())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	time.AfterFunc(100*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { _, err := src.ReadAt(make([]byte, 2*mib), 0); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("error %v, want context canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not stop after cancel")
	}
}

// Close ends a read that waits for a slow server, and releases the
// connection.
func TestHTTPCloseDuringRead(t *testing.T) {
	srv := stallingServer(t)
	src, err := Open(context.Background(), srv.URL+"/slow.img", fastRetry())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := src.ReadAt(make([]byte, 2*mib), 0); done <- err }()
	time.Sleep(100 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- src.Close() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read of a closed source succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not stop after Close")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}
