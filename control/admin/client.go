// Package admin is the client of a control node's local admin socket, used
// by `control token|enroll|robot …` on the control host. Calls over the
// socket act as admin: the socket is mode 0600, so only root (or the
// service user) can open it.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Client talks to one node's admin socket.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the socket at path.
func New(path string) *Client {
	return &Client{socket: path, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (if not nil). API errors come back with their code and message.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://control"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the control node's admin socket %s: %w (is `control run` up on this host, with this --data-dir or --admin-socket?)", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var eb protocol.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
			return fmt.Errorf("%s %s: %s (%s)", method, path, eb.Error.Message, eb.Error.Code)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
		}
	}
	return nil
}

// Stream copies the answer to a GET of path into w, unparsed: profiles
// from /debug/pprof/ (binary, and as long as the request asks for, so only
// ctx bounds the call, not the client's usual 30 s).
func (c *Client) Stream(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://control"+path, nil)
	if err != nil {
		return err
	}
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the control node's admin socket %s: %w (is `control run` up on this host?)", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}
