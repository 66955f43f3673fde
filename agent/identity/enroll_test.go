package identity_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/internal/pkitest"
	"github.com/lekiwi/heartbeat/protocol"
)

const robot = "lekiwi-7"

func wss(c *pkitest.Control) string { return "wss" + strings.TrimPrefix(c.URL, "https") }

// dial opens and closes one WebSocket to the control's gateway with the
// identity's mTLS client, as the agent runtime does.
func dial(t *testing.T, id *identity.Identity, base string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, base+"/v1/agent", &websocket.DialOptions{HTTPClient: id.HTTPClient()})
	if err != nil {
		t.Fatalf("mTLS dial: %v", err)
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

func waitConns(t *testing.T, c *pkitest.Control, n int) []pkitest.Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conns := c.Conns()
		if len(conns) >= n {
			return conns
		}
		if time.Now().After(deadline) {
			t.Fatalf("control saw %d connections, want %d", len(conns), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewKeyAndCSR(t *testing.T) {
	key, csrPEM, err := identity.NewKeyAndCSR(robot)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("CSR is not PEM CERTIFICATE REQUEST: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	if csr.Subject.CommonName != robot || len(csr.URIs) != 1 || csr.URIs[0].String() != "lekiwi://robot/"+robot {
		t.Fatalf("CSR names CN %q URIs %v, want %s and lekiwi://robot/%s", csr.Subject.CommonName, csr.URIs, robot, robot)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) || key.Curve.Params().Name != "P-256" {
		t.Fatalf("CSR key %T is not the returned P-256 key", csr.PublicKey)
	}
	if bytes.Contains(csrPEM, []byte("PRIVATE KEY")) {
		t.Fatal("CSR carries the private key")
	}
	if _, _, err := identity.NewKeyAndCSR("Not A Label"); err == nil {
		t.Fatal("NewKeyAndCSR accepted a robot id that is not a DNS label")
	}
}

// TestEnrollEndToEnd: token → CSR → certificate → saved files → mTLS
// connection the server attributes to the robot; a restart loads the same
// identity without a token.
func TestEnrollEndToEnd(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	ctl := pkitest.NewControl(t, ca, pkitest.Options{})
	ctl.AddToken("tok-1", robot, time.Now().Add(time.Hour))
	dir := filepath.Join(t.TempDir(), "state", identity.DirName)

	id, err := identity.Enroll(context.Background(), nil, wss(ctl), "tok-1", robot, ca.PEM, dir)
	if err != nil {
		t.Fatal(err)
	}
	if id.RobotID() != robot || id.Dir() != dir {
		t.Fatalf("identity for %q in %q", id.RobotID(), id.Dir())
	}

	// What went over the wire: the token and a CSR for the saved key, never the key.
	bodies := ctl.EnrollBodies()
	if len(bodies) != 1 {
		t.Fatalf("%d enroll requests", len(bodies))
	}
	if bytes.Contains(bodies[0], []byte("PRIVATE KEY")) {
		t.Fatalf("the enroll request carries a private key:\n%s", bodies[0])
	}
	var req protocol.EnrollRequest
	if err := json.Unmarshal(bodies[0], &req); err != nil || req.Token != "tok-1" {
		t.Fatalf("enroll request %s: %v", bodies[0], err)
	}
	block, _ := pem.Decode([]byte(req.CSR))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, identity.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("key.pem is not PKCS#8 PEM: %q", keyPEM)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !k.(*ecdsa.PrivateKey).Public().(*ecdsa.PublicKey).Equal(csr.PublicKey) {
		t.Fatal("the CSR sent is not for the key saved")
	}

	for name, mode := range map[string]os.FileMode{identity.KeyFile: 0o600, identity.CertFile: 0o600, identity.CAFile: 0o644, ".": 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != mode {
			t.Errorf("%s has mode %o, want %o", name, got, mode)
		}
	}
	if ca, _ := os.ReadFile(filepath.Join(dir, identity.CAFile)); !bytes.Equal(ca, ctl.CA.PEM) {
		t.Error("ca.pem is not the fleet CA")
	}

	dial(t, id, wss(ctl))
	conns := waitConns(t, ctl, 1)
	if conns[0].RobotID != robot || conns[0].Serial.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("control saw robot %q serial %x, want %q serial %x", conns[0].RobotID, conns[0].Serial, robot, id.Certificate().SerialNumber)
	}

	// Restart: the stored identity connects without a token.
	again, err := identity.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.RobotID() != robot || again.Certificate().SerialNumber.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("Load gave robot %q serial %x", again.RobotID(), again.Certificate().SerialNumber)
	}
	dial(t, again, wss(ctl))
	if conns := waitConns(t, ctl, 2); conns[1].Serial.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("after restart control saw serial %x", conns[1].Serial)
	}
	if n := len(ctl.EnrollBodies()); n != 1 {
		t.Fatalf("%d enroll requests after restart, want still 1", n)
	}
}

func TestEnrollRefused(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	ctl := pkitest.NewControl(t, ca, pkitest.Options{})
	ctl.AddToken("used", robot, time.Now().Add(time.Hour))
	if _, err := identity.Enroll(context.Background(), nil, ctl.URL, "used", robot, ca.PEM, ""); err != nil {
		t.Fatal(err)
	}
	ctl.AddToken("expired", robot, time.Now().Add(-time.Minute))
	ctl.AddToken("other-robot", "xle-9", time.Now().Add(time.Hour))
	otherCA := pkitest.NewCA(t, "another fleet")
	down := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream database unavailable", http.StatusServiceUnavailable)
	}))
	down.TLS = ca.ServerTLS(t)
	down.StartTLS()
	t.Cleanup(down.Close)

	tests := []struct {
		name      string
		base      string
		token     string
		caPEM     []byte
		code      string // EnrollError code; "" when not an EnrollError
		temporary bool
		is        error
		want      []string
	}{
		{name: "reused token", token: "used", code: protocol.EnrollTokenUsed, want: []string{"token_used", "already used", "control enroll create --robot-id " + robot}},
		{name: "expired token", token: "expired", code: protocol.EnrollTokenExpired, want: []string{"token_expired", "expired", "control enroll create --robot-id " + robot}},
		{name: "unknown token", token: "nope", code: protocol.EnrollTokenInvalid, want: []string{"token_invalid", "does not know", "control enroll create"}},
		{name: "token made for another robot", token: "other-robot", is: identity.ErrMismatch, want: []string{`names robot "xle-9"`, "another robot id"}},
		{name: "server not signed by the fleet CA", token: "nope", caPEM: otherCA.PEM, want: []string{"certificate"}},
		{name: "control failing is temporary", base: down.URL, token: "x", temporary: true, want: []string{"HTTP 503", "upstream database unavailable", "try again later"}},
		{name: "plain ws refused before sending the token", base: "ws" + strings.TrimPrefix(ctl.URL, "https"), token: "used", want: []string{"not encrypted", "wss://"}},
		{name: "empty token", token: " ", want: []string{"token is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, caPEM := tt.base, tt.caPEM
			if base == "" {
				base = wss(ctl)
			}
			if caPEM == nil {
				caPEM = ca.PEM
			}
			dir := filepath.Join(t.TempDir(), identity.DirName)
			before := len(ctl.EnrollBodies())
			_, err := identity.Enroll(context.Background(), nil, base, tt.token, robot, caPEM, dir)
			if err == nil {
				t.Fatal("Enroll succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var ee *identity.EnrollError
			isEE := errors.As(err, &ee)
			switch {
			case tt.code != "":
				if !isEE || ee.Code != tt.code || ee.Temporary() || ee.StatusCode != http.StatusUnauthorized {
					t.Fatalf("error %#v, want a permanent EnrollError with code %s", err, tt.code)
				}
			case tt.temporary:
				if !isEE || !ee.Temporary() {
					t.Fatalf("error %#v, want a temporary EnrollError", err)
				}
			case isEE:
				t.Fatalf("error %v is an EnrollError", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("error %v does not wrap %v", err, tt.is)
			}
			if _, err := identity.Load(dir); !errors.Is(err, identity.ErrNotFound) {
				t.Fatalf("after a failed enrollment Load = %v, want ErrNotFound", err)
			}
			if strings.HasPrefix(tt.name, "plain ws") && len(ctl.EnrollBodies()) != before {
				t.Fatal("the token was sent over a plain connection")
			}
		})
	}
}

func TestEnrollURL(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "wss://control.lan:8443", want: "https://control.lan:8443/v1/enroll"},
		{in: "https://control.lan:8443/", want: "https://control.lan:8443/v1/enroll"},
		{in: "wss://control.lan/fleet/v1/agent", want: "https://control.lan/fleet/v1/enroll"},
		{in: " wss://10.0.0.5:8443 ", want: "https://10.0.0.5:8443/v1/enroll"},
		{in: "ws://control.lan:8080", err: "not encrypted"},
		{in: "http://control.lan:8080", err: "not encrypted"},
		{in: "ftp://control.lan", err: `scheme "ftp"`},
		{in: "control.lan:8443", err: "does not parse"},
		{in: "wss://user:pw@control.lan", err: "only scheme, host"},
	}
	for _, tt := range tests {
		got, err := identity.EnrollURL(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("EnrollURL(%q) = %q, %v; want error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("EnrollURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
