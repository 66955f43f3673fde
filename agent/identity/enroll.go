package identity

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
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// DefaultEnrollTimeout bounds one enrollment request when Enroll builds its
// own HTTP client.
const DefaultEnrollTimeout = 30 * time.Second

// maxEnrollResponse bounds what is read of control's answer.
const maxEnrollResponse = 1 << 20

// EnrollError is control's answer to an enrollment when it is not 200 OK.
type EnrollError struct {
	StatusCode int
	Code       string // control's error code, like protocol.EnrollTokenUsed; "" if the body had none
	Message    string // control's message, or the start of a non-JSON body
	RobotID    string // the robot that tried to enroll
}

// Temporary reports whether trying again later may succeed (control
// overloaded or failing: 5xx, 408, 429). A refused token never is.
func (e *EnrollError) Temporary() bool {
	return e.StatusCode >= 500 || e.StatusCode == http.StatusTooManyRequests || e.StatusCode == http.StatusRequestTimeout
}

func (e *EnrollError) Error() string {
	what := fmt.Sprintf("HTTP %d", e.StatusCode)
	if e.Code != "" {
		what += ", " + e.Code
	}
	if e.Message != "" {
		what += ": " + e.Message
	}
	newToken := fmt.Sprintf("create a new one on a control node with `control enroll create --robot-id %s` and give it to the agent (enrollment_token_file, LEKIWI_AGENT_ENROLLMENT_TOKEN_FILE or --enrollment-token-file)",
		e.RobotID)
	if e.Temporary() {
		return fmt.Sprintf("control could not enroll robot %s right now (%s); try again later", e.RobotID, what)
	}
	var why string
	switch e.Code {
	case protocol.EnrollTokenUsed:
		why = "this enrollment token was already used (a token enrolls one robot, once)"
	case protocol.EnrollTokenExpired:
		why = "this enrollment token has expired"
	case protocol.EnrollTokenInvalid:
		why = "control does not know this enrollment token (mistyped, or made by another fleet's control)"
	default:
		return fmt.Sprintf("control refused to enroll robot %s (%s): retrying will not help; check that agent and control versions match and servers points at control, and if the token is the problem %s", e.RobotID, what, newToken)
	}
	return fmt.Sprintf("control refused to enroll robot %s (%s): %s; %s", e.RobotID, what, why, newToken)
}

// EnrollURL is the enrollment endpoint under a control base URL as the
// agent's configuration gives it: wss:// becomes https://, a copied
// .../v1/agent path is dropped, and plain ws:// or http:// are refused —
// the token must not travel in the clear.
func EnrollURL(serverBase string) (string, error) {
	serverBase = strings.TrimSpace(serverBase)
	u, err := url.Parse(serverBase)
	if err != nil || !strings.Contains(serverBase, "://") {
		return "", fmt.Errorf("server URL %q does not parse: write it like wss://control.lan:8443", serverBase)
	}
	switch u.Scheme {
	case "wss", "https":
		u.Scheme = "https"
	case "ws", "http":
		return "", fmt.Errorf("server URL %q is not encrypted: enrollment sends the token and the robot's request over TLS only; use wss:// or https://", serverBase)
	default:
		return "", fmt.Errorf("server URL %q has scheme %q: use wss:// or https://", serverBase, u.Scheme)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("server URL %q: give only scheme, host, port and an optional path prefix, like wss://control.lan:8443", serverBase)
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/v1/agent")
	u.Path = p + protocol.EnrollPath
	u.RawPath = ""
	return u.String(), nil
}

// Enroll trades a single-use enrollment token for the robot's first
// certificate. It generates the key here, POSTs a protocol.EnrollRequest
// (token and CSR — never the key) to <serverBase>/v1/enroll, trusting only
// the fleet CA caPEM, and expects 200 with a protocol.EnrollResponse. The
// certificate must be for the key, name robotID and chain to the CA. The
// identity is then saved in dir (unless dir is "").
//
// hc may be nil (a client with DefaultEnrollTimeout is built). If hc's
// Transport is nil or an *http.Transport, a copy is used whose TLS trusts
// only caPEM; any other RoundTripper is used as given. Redirects are
// refused.
//
// Errors: *EnrollError when control answered but refused (Temporary says
// whether to try again; token_used, token_expired and token_invalid never
// are); ErrMismatch or ErrCorrupt when control's certificate is unusable;
// anything else (network, TLS) may be retried.
func Enroll(ctx context.Context, hc *http.Client, serverBase, token, robotID string, caPEM []byte, dir string) (*Identity, error) {
	if err := protocol.ValidRobotID(robotID); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("enroll: the enrollment token is empty")
	}
	roots, err := parseCA(caPEM)
	if err != nil {
		return nil, fmt.Errorf("enroll: fleet CA: %w: %w", ErrCorrupt, err)
	}
	endpoint, err := EnrollURL(serverBase)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	key, csr, err := NewKeyAndCSR(robotID)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	body, err := json.Marshal(protocol.EnrollRequest{Token: token, CSR: string(csr)})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")

	client, closeIdle := enrollClient(hc, roots)
	defer closeIdle()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("enroll at %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxEnrollResponse))
	if err != nil {
		return nil, fmt.Errorf("enroll at %s: read answer: %w", endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, enrollError(resp.StatusCode, raw, robotID)
	}
	var ans protocol.EnrollResponse
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, fmt.Errorf("enroll at %s: answer is not an enrollment response: %w: %w", endpoint, ErrCorrupt, err)
	}
	if err := ans.Validate(); err != nil {
		return nil, fmt.Errorf("enroll at %s: %w: %w", endpoint, ErrCorrupt, err)
	}
	leaf, err := parseLeaf([]byte(ans.Certificate))
	if err != nil {
		return nil, fmt.Errorf("enroll at %s: certificate: %w: %w", endpoint, ErrCorrupt, err)
	}
	if _, err := check(leaf, key, roots, robotID, time.Now()); err != nil {
		return nil, fmt.Errorf("enroll at %s: control's certificate is unusable (was the token created for another robot id, or is ca_file another fleet's CA?): %w", endpoint, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	i := &Identity{robotID: robotID, caPEM: clone(caPEM), roots: roots, sessions: newSessionCache()}
	i.set(key, keyPEM, []byte(ans.Certificate), leaf)
	if dir != "" {
		if err := i.Save(dir); err != nil {
			return nil, fmt.Errorf("enrolled, but %w (the token is now used: fix the directory, then create a new token)", err)
		}
	}
	return i, nil
}

func enrollError(status int, raw []byte, robotID string) *EnrollError {
	e := &EnrollError{StatusCode: status, RobotID: robotID}
	var body protocol.ErrorBody
	if json.Unmarshal(raw, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		return e
	}
	msg := strings.TrimSpace(string(raw))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	e.Message = msg
	return e
}

// enrollClient returns the client Enroll uses and a function releasing its
// idle connections.
func enrollClient(hc *http.Client, roots *x509.CertPool) (*http.Client, func()) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots}
	noRedirect := func(*http.Request, []*http.Request) error {
		return errors.New("control answered enrollment with a redirect; give the final URL in servers")
	}
	if hc == nil {
		hc = &http.Client{Timeout: DefaultEnrollTimeout}
	}
	c := *hc
	c.CheckRedirect = noRedirect
	var tr *http.Transport
	switch t := hc.Transport.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsConf
	case *http.Transport:
		tr = t.Clone()
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = tlsConf
		} else {
			tr.TLSClientConfig = tr.TLSClientConfig.Clone()
			tr.TLSClientConfig.RootCAs = roots
			tr.TLSClientConfig.MinVersion = max(tr.TLSClientConfig.MinVersion, tls.VersionTLS13)
		}
	default:
		return &c, func() {}
	}
	c.Transport = tr
	return &c, tr.CloseIdleConnections
}
