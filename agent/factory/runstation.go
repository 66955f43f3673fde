package factory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/image/bmap"
	"github.com/lekiwi/heartbeat/protocol"
)

// Bounds on what the station may send back.
const (
	maxPlanBytes = 1 << 20
	maxBmapBytes = 64 << 20
)

// station talks to the netboot station's factory API.
type station struct {
	base    string // checked, no trailing slash
	client  *http.Client
	timeout time.Duration // per API call; the image stream has none
}

// bearer adds the board token to requests for the station's host only, so
// that a redirect elsewhere never carries it.
type bearer struct {
	host  string
	token string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host == b.host {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(req)
}

// httpError is an answer other than the one expected. 4xx answers (other than
// timeouts and rate limits) will not change by asking again.
type httpError struct {
	method, url string
	status      int
	body        string
}

func (e *httpError) Error() string {
	msg := fmt.Sprintf("%s %s: %s", e.method, e.url, http.StatusText(e.status))
	if e.status == 0 || http.StatusText(e.status) == "" {
		msg = fmt.Sprintf("%s %s: HTTP %d", e.method, e.url, e.status)
	}
	if e.body != "" {
		msg += ": " + e.body
	}
	if e.status == http.StatusUnauthorized || e.status == http.StatusForbidden {
		msg += " (the station no longer accepts this board's token: power-cycle the board so it netboots again and gets a new one)"
	}
	return msg
}

func (e *httpError) permanent() bool {
	return e.status >= 400 && e.status < 500 && e.status != http.StatusRequestTimeout && e.status != http.StatusTooManyRequests
}

// do sends one API request with a JSON body (nil for none) and decodes a JSON
// answer into out (nil: expect no body).
func (s *station) do(ctx context.Context, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	url := s.base + path
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is the station running and reachable?)", method, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &httpError{method: method, url: url, status: resp.StatusCode, body: strings.TrimSpace(string(msg))}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxPlanBytes))
		return nil
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxPlanBytes))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, url, err)
	}
	return nil
}

func (s *station) report(ctx context.Context, r *protocol.HardwareReport) (protocol.StationPlan, error) {
	var p protocol.StationPlan
	err := s.do(ctx, http.MethodPost, protocol.StationReportPath, r, &p)
	return p, err
}

func (s *station) plan(ctx context.Context) (protocol.StationPlan, error) {
	var p protocol.StationPlan
	err := s.do(ctx, http.MethodGet, protocol.StationPlanPath, nil, &p)
	return p, err
}

func (s *station) progress(ctx context.Context, p protocol.StationProgress) error {
	return s.do(ctx, http.MethodPost, protocol.StationProgressPath, p, nil)
}

func (s *station) imageURL() string { return s.base + protocol.StationImagePath }

// blockMap fetches the image's block map; nil when the station has none.
func (s *station) blockMap(ctx context.Context) (*bmap.Map, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	url := s.imageURL() + ".bmap"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w (is the station running and reachable?)", url, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &httpError{method: http.MethodGet, url: url, status: resp.StatusCode, body: strings.TrimSpace(string(msg))}
	}
	m, err := bmap.Parse(io.LimitReader(resp.Body, maxBmapBytes))
	if err != nil {
		return nil, fmt.Errorf("block map %s: %w (the station serves a broken .bmap: regenerate it there)", url, err)
	}
	return m, nil
}

// isPermanent reports whether err will not go away by trying again.
func isPermanent(err error) bool {
	var he *httpError
	if errors.As(err, &he) {
		return he.permanent()
	}
	var pe *permanentError
	return errors.As(err, &pe)
}

// permanentError marks a failure that retrying cannot fix (a plan the board
// cannot carry out, a disk too small).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(format string, args ...any) error {
	return &permanentError{fmt.Errorf(format, args...)}
}
