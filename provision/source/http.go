package source

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/image/bmap"
)

const (
	defaultRetries    = 5
	defaultBackoff    = 500 * time.Millisecond
	maxBackoff        = 10 * time.Second
	maxBmapBytes      = 64 << 20
	maxErrorBodyBytes = 512
)

// download is the body of an HTTP GET that survives dropped connections: when
// the body breaks before its end it reconnects with "Range: bytes=N-" (and
// If-Range, so a file replaced on the server is not spliced into the old one)
// and goes on from byte N. Reconnects back off exponentially; the retry budget
// is per stall: it refills whenever bytes arrive, so a long download over a
// flaky link finishes while a dead server fails after Options.Retries tries.
type download struct {
	ctx       context.Context
	client    *http.Client
	url       string
	validator string // strong ETag or Last-Modified, for If-Range
	retries   int
	backoff   time.Duration
	progress  func(done, total int64)

	body    io.ReadCloser
	off     int64 // bytes delivered
	total   int64 // -1 when the server did not say
	lastErr error
}

// startDownload sends the first GET and returns once the response headers are in.
func startDownload(ctx context.Context, url string, opts Options) (*download, error) {
	d := &download{ctx: ctx, client: opts.HTTPClient, url: url, retries: opts.Retries, backoff: opts.RetryBackoff, progress: opts.Progress, total: -1}
	if d.client == nil {
		d.client = http.DefaultClient
	}
	if d.retries <= 0 {
		d.retries = defaultRetries
	}
	if d.backoff <= 0 {
		d.backoff = defaultBackoff
	}
	var lastErr error
	for attempt := 0; attempt <= d.retries; attempt++ {
		if attempt > 0 {
			if err := d.wait(attempt); err != nil {
				return nil, err
			}
		}
		resp, err := d.get(-1)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = err
			continue
		}
		if resp.StatusCode == http.StatusOK {
			d.body = resp.Body
			d.total = resp.ContentLength
			if etag := resp.Header.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
				d.validator = etag
			} else {
				d.validator = resp.Header.Get("Last-Modified")
			}
			return d, nil
		}
		lastErr = statusError(resp, url)
		resp.Body.Close()
		if !retryable(resp.StatusCode) {
			return nil, lastErr
		}
	}
	return nil, fmt.Errorf("download %s: gave up after %d tries: %w", url, d.retries+1, lastErr)
}

func (d *download) get(from int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", d.url, err)
	}
	// The bytes as stored: no transparent gzip, so ranges count file bytes.
	req.Header.Set("Accept-Encoding", "identity")
	if from >= 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
		if d.validator != "" {
			req.Header.Set("If-Range", d.validator)
		}
	}
	return d.client.Do(req)
}

func (d *download) wait(attempt int) error {
	delay := d.backoff << min(attempt-1, 16)
	delay = min(delay, maxBackoff)
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
}

func (d *download) Read(p []byte) (int, error) {
	for {
		if d.body == nil {
			if err := d.resume(); err != nil {
				return 0, err
			}
		}
		n, err := d.body.Read(p)
		d.off += int64(n)
		if n > 0 && d.progress != nil {
			d.progress(d.off, d.total)
		}
		if d.total >= 0 && d.off > d.total {
			return n, fmt.Errorf("download %s: the server sent more than the %d bytes it announced", d.url, d.total)
		}
		if err == nil {
			return n, nil
		}
		if err == io.EOF && (d.total < 0 || d.off == d.total) {
			return n, io.EOF
		}
		if d.ctx.Err() != nil {
			return n, d.ctx.Err()
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		d.body.Close()
		d.body = nil
		d.lastErr = err
		if n > 0 {
			return n, nil
		}
	}
}

// resume reconnects from d.off.
func (d *download) resume() error {
	var lastErr = d.lastErr
	for attempt := 1; attempt <= d.retries; attempt++ {
		if err := d.wait(attempt); err != nil {
			return err
		}
		resp, err := d.get(d.off)
		if err != nil {
			if d.ctx.Err() != nil {
				return d.ctx.Err()
			}
			lastErr = err
			continue
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent:
			start, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
			if err != nil || start != d.off || (d.total >= 0 && total >= 0 && total != d.total) {
				resp.Body.Close()
				return fmt.Errorf("download %s: asked to resume at byte %d, the server answered Content-Range %q: cannot resume", d.url, d.off, resp.Header.Get("Content-Range"))
			}
			d.body = resp.Body
			return nil
		case resp.StatusCode == http.StatusOK:
			resp.Body.Close()
			why := "it ignores Range requests"
			if v := resp.Header.Get("ETag"); d.validator != "" && v != "" && v != d.validator {
				why = "the file changed on the server (its ETag differs)"
			}
			return fmt.Errorf("download %s: the connection dropped at byte %d (%v) and the server answered the resume request with 200 instead of 206 Partial Content: %s, so the download cannot continue; retry, or download the file first", d.url, d.off, d.lastErr, why)
		default:
			lastErr = statusError(resp, d.url)
			resp.Body.Close()
			if !retryable(resp.StatusCode) {
				return lastErr
			}
		}
	}
	return fmt.Errorf("download %s: the connection dropped at byte %d of %d and %d attempts to resume failed: %w", d.url, d.off, d.total, d.retries, lastErr)
}

func (d *download) Close() error {
	if d.body != nil {
		err := d.body.Close()
		d.body = nil
		return err
	}
	return nil
}

func retryable(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
}

func statusError(resp *http.Response, url string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodyBytes))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("download %s: no such file on the server (HTTP 404)", url)
	}
	if msg != "" {
		return fmt.Errorf("download %s: HTTP %s: %s", url, resp.Status, msg)
	}
	return fmt.Errorf("download %s: HTTP %s", url, resp.Status)
}

// parseContentRange parses "bytes first-last/total" (total may be "*", then
// -1).
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("malformed Content-Range %q", s)
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, 0, bad
	}
	total = -1
	if size != "*" {
		t, err := strconv.ParseInt(size, 10, 64)
		if err != nil || t <= last {
			return 0, 0, 0, bad
		}
		total = t
	}
	return first, last, total, nil
}

// rangeReader reads byte ranges of a URL with Range requests: how the size is
// found at the end of a remote .xz or .gz before streaming it.
type rangeReader struct {
	ctx    context.Context
	client *http.Client
	url    string
}

func (r *rangeReader) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1))
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("the server does not serve byte ranges of %s (HTTP %s to a Range request)", r.url, resp.Status)
	}
	if first, _, _, err := parseContentRange(resp.Header.Get("Content-Range")); err != nil || first != off {
		return 0, fmt.Errorf("the server answered a Range request for byte %d of %s with Content-Range %q", off, r.url, resp.Header.Get("Content-Range"))
	}
	n, err := io.ReadFull(resp.Body, p)
	if err != nil {
		return n, fmt.Errorf("read bytes %d–%d of %s: %w", off, off+int64(len(p))-1, r.url, err)
	}
	return n, nil
}

// fetchBmap fetches a block map over HTTP; a 404 means there is none.
func fetchBmap(ctx context.Context, client *http.Client, url string) (*bmap.Map, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("block map %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch block map %s: %w", url, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("fetch block map: %w", statusError(resp, url))
	}
	m, err := bmap.Parse(io.LimitReader(resp.Body, maxBmapBytes))
	if err != nil {
		return nil, fmt.Errorf("block map %s: %w (fix or remove it on the server to flash without a map)", url, err)
	}
	return m, nil
}
