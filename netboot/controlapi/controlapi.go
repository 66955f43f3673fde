// Package controlapi is the netboot station's client of control's factory
// routes. The station authenticates with its node certificate (mTLS) and
// trusts control through the fleet CA; it never holds a user token.
//
// Errors tell the station what to do next: Unreachable means wait and
// retry (control is away, fenced or overloaded), anything else is an
// answer that retrying will not change (a refusal to act on, or to show).
package controlapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Unreachable wraps failures that retrying later can fix: no connection,
// a timeout, 5xx, 429.
type Unreachable struct{ Err error }

func (u *Unreachable) Error() string { return "control unreachable: " + u.Err.Error() }
func (u *Unreachable) Unwrap() error { return u.Err }

// IsUnreachable reports whether err is worth retrying later.
func IsUnreachable(err error) bool {
	var u *Unreachable
	return errors.As(err, &u)
}

// Refused is control's answer that the request cannot succeed as sent.
type Refused struct {
	Status  int
	Code    string
	Message string
}

func (r *Refused) Error() string {
	return fmt.Sprintf("control refused (%d %s): %s", r.Status, r.Code, r.Message)
}

// Client talks to one control endpoint (a load balancer or any node).
type Client struct {
	base *url.URL
	http *http.Client
}

// Config is where control is and the station's credentials.
type Config struct {
	URL      string // https://control:8443
	CertFile string // the station's node certificate
	KeyFile  string
	CAFile   string // the fleet CA, to trust control
	Timeout  time.Duration
}

// New makes a client from files.
func New(cfg Config) (*Client, error) {
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load the station's node certificate (%s, %s): %w; issue one with `provision ca issue-node --name station-1`", cfg.CertFile, cfg.KeyFile, err)
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read the fleet CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("fleet CA %s holds no PEM certificate", cfg.CAFile)
	}
	return NewWithTLS(cfg.URL, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, cfg.Timeout)
}

// NewWithTLS makes a client with a ready TLS configuration.
func NewWithTLS(rawURL string, tc *tls.Config, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("control URL %q: want https://host:port", rawURL)
	}
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &Client{base: u, http: &http.Client{Transport: tr, Timeout: timeout}}, nil
}

// SendEvents posts a batch of factory events; nil means control has them
// all (stored now or before).
func (c *Client) SendEvents(ctx context.Context, batch protocol.FactoryEvents) error {
	var out protocol.FactoryEventsAccepted
	return c.post(ctx, protocol.FactoryEventsPath, batch, &out)
}

// RequestRobot asks control for the identity of the board with serial,
// matched to profile.
func (c *Client) RequestRobot(ctx context.Context, serial, profile string) (protocol.FactoryRobot, error) {
	var out protocol.FactoryRobot
	err := c.post(ctx, protocol.FactoryRobotsPath, protocol.FactoryRobotRequest{Serial: serial, Profile: profile}, &out)
	return out, err
}

// RobotOnline reports whether control sees the robot online (connected,
// or recently seen). A robot control does not know yet is not online.
func (c *Client) RobotOnline(ctx context.Context, robotID string) (bool, error) {
	var out struct {
		Status protocol.RobotStatus `json:"status"`
	}
	err := c.do(ctx, http.MethodGet, protocol.RobotPath(robotID), nil, &out)
	var ref *Refused
	if errors.As(err, &ref) && ref.Status == http.StatusNotFound {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return out.Status.State == protocol.RobotOnline, nil
}

func (c *Client) post(ctx context.Context, path string, body, out any) error {
	return c.do(ctx, http.MethodPost, path, body, out)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.JoinPath(path).String(), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &Unreachable{Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &Unreachable{Err: fmt.Errorf("read answer to %s %s: %w", method, path, err)}
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("control's answer to %s %s is not the expected JSON: %w", method, path, err)
		}
		return nil
	}
	var e protocol.ErrorBody
	_ = json.Unmarshal(raw, &e)
	msg := e.Error.Message
	if msg == "" {
		msg = strings.TrimSpace(string(raw))
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		return &Unreachable{Err: fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)}
	}
	return &Refused{Status: resp.StatusCode, Code: e.Error.Code, Message: msg}
}
