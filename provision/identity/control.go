package identity

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// RequestTimeout bounds each call to control: twice control's own
// request timeout, so its answer (even an error) arrives first.
const RequestTimeout = 30 * time.Second

// ControlOptions configure a Control source.
type ControlOptions struct {
	URL   string // control's API, https://host:port
	Token string // the engineer's API bearer token (role engineer or admin)
	// RootCAs verifies control's TLS certificate; nil uses the system's.
	RootCAs *x509.CertPool
	// Client replaces the HTTP client built from RootCAs (tests).
	Client *http.Client
	// Prefix starts every robot id: <prefix>-<8 random base32 letters>.
	// Empty: the profile's name.
	Prefix  string
	Profile *profiles.Profile // host names (see Hostname) and default prefix
	// TTL of each enrollment token; 0 uses control's default. A card
	// must boot and enroll within it.
	TTL time.Duration
	// JournalPath, when set, records each robot id handed out and its
	// card's outcome (see Journal).
	JournalPath string
	Rand        io.Reader        // robot id randomness; default crypto/rand
	Now         func() time.Time // journal times; default time.Now
}

// Control asks control for a fresh robot id and single-use enrollment
// token per card; every card also gets the fleet CA control serves.
type Control struct {
	o       ControlOptions
	base    *url.URL
	client  *http.Client
	caPEM   []byte
	who     protocol.Whoami
	mu      sync.Mutex
	issued  map[string]string
	journal *Journal // nil: no journal
}

var _ Source = (*Control)(nil)

// NewControl checks the token with control (it must be allowed to create
// enrollments) and fetches the fleet CA, so a wrong URL, CA or token
// stops the bench before any card is written.
func NewControl(ctx context.Context, o ControlOptions) (*Control, error) {
	base, err := url.Parse(strings.TrimRight(o.URL, "/"))
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("control URL %q: want https://host:port", o.URL)
	}
	if base.Scheme != "https" {
		return nil, fmt.Errorf("control URL %q: use https — the engineer's token and the robots' enrollment tokens must not cross the network in clear", o.URL)
	}
	if o.Token == "" {
		return nil, errors.New("control: no API token; create one with `control token create --role engineer`")
	}
	if o.Prefix == "" && o.Profile != nil {
		o.Prefix = o.Profile.Name
	}
	if o.Prefix == "" {
		return nil, errors.New("control: no robot id prefix and no profile to take it from")
	}
	if err := protocol.ValidRobotID(o.Prefix + "-abcdefgh"); err != nil {
		return nil, fmt.Errorf("robot id prefix %q: %w", o.Prefix, err)
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Control{o: o, base: base, client: o.Client, issued: map[string]string{}}
	if c.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
		c.client = &http.Client{Transport: tr}
	}
	if err := c.call(ctx, "GET", protocol.WhoamiPath, nil, &c.who); err != nil {
		return nil, err
	}
	if c.who.Role != "engineer" && c.who.Role != "admin" {
		return nil, fmt.Errorf("control at %s: the token of %s has role %q, which cannot create enrollment tokens; use an engineer's token", o.URL, c.who.Name, c.who.Role)
	}
	var ca protocol.CACertificate
	if err := c.call(ctx, "GET", protocol.CAPath, nil, &ca); err != nil {
		return nil, err
	}
	if _, err := CertPool([]byte(ca.Certificate)); err != nil {
		return nil, fmt.Errorf("control at %s served a bad CA certificate: %w", o.URL, err)
	}
	c.caPEM = []byte(ca.Certificate)
	if o.JournalPath != "" {
		if c.journal, _, err = OpenJournal(o.JournalPath, o.Now); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// CAPEM is the fleet CA certificate control served.
func (c *Control) CAPEM() []byte { return append([]byte(nil), c.caPEM...) }

// Who is the token's owner, as control sees it.
func (c *Control) Who() protocol.Whoami { return c.who }

// Next picks a robot id control does not know and has control mint its
// enrollment token.
func (c *Control) Next(ctx context.Context, target string) (customize.Robot, error) {
	var id string
	for attempt := 0; ; attempt++ {
		var err error
		if id, err = c.newID(); err != nil {
			return customize.Robot{}, err
		}
		err = c.call(ctx, "GET", protocol.RobotPath(id), nil, nil)
		if errors.Is(err, errNotFound) {
			break
		}
		if err != nil {
			return customize.Robot{}, fmt.Errorf("identity for %s: %w", target, err)
		}
		if attempt == 2 { // 40 random bits: never, unless Rand is broken
			return customize.Robot{}, fmt.Errorf("identity for %s: three random robot ids in a row already exist in control; is the random source broken?", target)
		}
	}
	req := protocol.EnrollmentRequest{RobotID: id}
	if c.o.TTL > 0 {
		req.TTL = c.o.TTL.String()
	}
	var out protocol.EnrollmentCreated
	if err := c.call(ctx, "POST", protocol.EnrollmentsPath, req, &out); err != nil {
		return customize.Robot{}, fmt.Errorf("identity for %s: %w", target, err)
	}
	if out.RobotID != id || out.Token == "" {
		return customize.Robot{}, fmt.Errorf("identity for %s: control answered the enrollment for %s with robot %q and an empty or missing token", target, id, out.RobotID)
	}
	if c.journal != nil {
		if err := c.journal.Append(EventIssued, id, target, "enrollment token expires "+out.ExpiresAt.UTC().Format(time.RFC3339)); err != nil {
			return customize.Robot{}, fmt.Errorf("identity for %s: %w", target, err)
		}
	}
	c.mu.Lock()
	c.issued[id] = target
	c.mu.Unlock()
	return customize.Robot{RobotID: id, Hostname: Hostname(c.o.Profile, id), CAPEM: c.CAPEM(), EnrollToken: out.Token}, nil
}

// newID is <prefix>-<8 lowercase base32 characters>: 40 random bits.
func (c *Control) newID() (string, error) {
	var b [5]byte
	if _, err := io.ReadFull(c.o.Rand, b[:]); err != nil {
		return "", fmt.Errorf("random robot id: %w", err)
	}
	return c.o.Prefix + "-" + strings.ToLower(base32.StdEncoding.EncodeToString(b[:])), nil
}

// Finish journals the outcome (when there is a journal). A failed card's
// token is left to expire: it is single-use and was on no good card.
func (c *Control) Finish(robotID, target string, failure error) error {
	return finish(&c.mu, c.issued, c.journal, robotID, target, failure)
}

// Close closes the journal, if any.
func (c *Control) Close() error {
	if c.journal == nil {
		return nil
	}
	return c.journal.Close()
}

var errNotFound = errors.New("not found")

// call does one API request; a 404 wraps errNotFound. A 429 (rate
// limit, refused before the handler ran) is retried a few times.
func (c *Control) call(ctx context.Context, method, path string, body, out any) error {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return err
		}
	}
	for attempt := 1; ; attempt++ {
		retry, err := c.once(ctx, method, path, data, out)
		if retry == 0 || attempt == 4 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
	}
}

// once returns how long to wait before retrying, 0 for no retry.
func (c *Control) once(ctx context.Context, method, path string, data []byte, out any) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.o.Token)
	if data != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("control %s %s: %w (check the URL, and that --ca holds the CA control's certificate is signed by)", method, c.base.Redacted()+path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("control %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		if out == nil {
			return 0, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return 0, fmt.Errorf("control %s %s: answer is not the expected JSON: %w", method, path, err)
		}
		return 0, nil
	}
	var ae protocol.ErrorBody
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &ae) == nil && ae.Error.Message != "" {
		msg = ae.Error.Code + ": " + ae.Error.Message
	}
	err = fmt.Errorf("control %s %s: %s: %s", method, path, resp.Status, msg)
	switch resp.StatusCode {
	case http.StatusNotFound:
		return 0, fmt.Errorf("%w: %w", errNotFound, err)
	case http.StatusTooManyRequests:
		wait := time.Second
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s > 0 && s < 30 {
			wait = time.Duration(s) * time.Second
		}
		return wait, err
	}
	return 0, err
}

// CertPool parses PEM certificates (a --ca file) into a pool.
func CertPool(pemBytes []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}
