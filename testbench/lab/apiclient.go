package lab

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/lekiwi/heartbeat/control/admin"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/node"
)

// APIClient calls a control node's REST API like an operator would: over
// HTTPS trusting the fleet CA, with a bearer token.
type APIClient struct {
	Base  string
	Token string
	HTTP  *http.Client
}

// NewAPIClient mints a token with role through n's admin socket and returns
// a client using it.
func NewAPIClient(ctx context.Context, n *node.Node, role string) (*APIClient, error) {
	var created api.TokenCreated
	if err := admin.New(n.AdminSocket()).Do(ctx, "POST", "/v1/tokens", api.TokenRequest{Name: "lab-" + role, Role: role}, &created); err != nil {
		return nil, err
	}
	tr := &http.Transport{}
	if ca := n.CA(); ca != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}
	}
	return &APIClient{Base: n.URL(), Token: created.Token, HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// Get fetches path and decodes the JSON answer; non-2xx is an error. Rate
// limited answers (429) are retried after a pause, as a polite client does.
func (c *APIClient) Get(ctx context.Context, path string, into any) error {
	var (
		resp *http.Response
		body []byte
	)
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, "GET", c.Base+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err = c.HTTP.Do(req)
		if err != nil {
			return err
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || attempt == 50 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, into)
}
