package testbench

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/control/admin"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// robotTLS is a TLS client presenting a certificate for robotID signed by
// ca at time at (lifetime l), trusting trust.
func robotTLS(t *testing.T, ca *pki.CA, trust *x509.CertPool, robotID string, at time.Time, l time.Duration) *tls.Config {
	t.Helper()
	key, csr, err := identity.NewKeyAndCSR(robotID)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignRobot(csr, robotID, l, at)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: trust, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
}

func dialAgent(ctx context.Context, n *node.Node, cfg *tls.Config) (*websocket.Conn, *http.Response, error) {
	url := "wss" + strings.TrimPrefix(n.URL(), "https") + "/v1/agent"
	return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}})
}

// waitDenied waits for an AccessDenied audit record with reason.
func waitDenied(t *testing.T, n *node.Node, reason string) store.DeniedData {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := n.Store().EventsOfTypes(context.Background(), 0, 1000, store.TypeAccessDenied)
		if err == nil {
			for _, e := range evs {
				var d store.DeniedData
				if json.Unmarshal(e.Data, &d) == nil && d.Reason == reason {
					return d
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no AccessDenied audit record with reason %q", reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hello(robotID string) []byte {
	env, _ := protocol.New(protocol.TypeHello, robotID, 1, time.Now(), protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "test", Stream: "s", RobotType: protocol.RobotLeKiwi})
	b, _ := protocol.Encode(env)
	return b
}

// Each refusal with the right status or close code
// and an audit record.
func TestRobotLinkRefusals(t *testing.T) {
	dir := t.TempDir()
	ctl := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control")})
	ca, trust := ctl.CA(), ctl.CA().Pool()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("no client certificate: 401", func(t *testing.T) {
		_, resp, err := dialAgent(ctx, ctl, &tls.Config{RootCAs: trust, MinVersion: tls.VersionTLS13})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("dial without certificate: %v %+v", err, resp)
		}
		waitDenied(t, ctl, "no_client_certificate")
	})
	t.Run("TLS 1.2: handshake refused", func(t *testing.T) {
		cfg := robotTLS(t, ca, trust, "kiwi-12", time.Now(), time.Hour)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if _, _, err := dialAgent(ctx, ctl, cfg); err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("TLS 1.2 client: %v", err)
		}
	})
	t.Run("certificate from another CA: handshake refused", func(t *testing.T) {
		other, _ := pki.Create(pki.CreateOptions{Name: "Lekiwi Fleet CA", KeyType: pki.KeyECDSAP256}) // same name, other key
		_, _, err := dialAgent(ctx, ctl, robotTLS(t, other, trust, "kiwi-x", time.Now(), 0))
		if err == nil {
			t.Fatal("connected with a foreign CA's certificate")
		}
		d := waitDenied(t, ctl, string(pki.ReasonUnknownAuthority))
		if d.Fingerprint == "" {
			t.Fatalf("audit record lacks the certificate fingerprint: %+v", d)
		}
	})
	t.Run("expired certificate: handshake refused", func(t *testing.T) {
		_, _, err := dialAgent(ctx, ctl, robotTLS(t, ca, trust, "kiwi-old", time.Now().Add(-48*time.Hour), 24*time.Hour))
		if err == nil {
			t.Fatal("connected with an expired certificate")
		}
		waitDenied(t, ctl, string(pki.ReasonExpired))
	})
	t.Run("robot A's certificate claiming robot B: 1008", func(t *testing.T) {
		conn, _, err := dialAgent(ctx, ctl, robotTLS(t, ca, trust, "kiwi-a", time.Now(), time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
		if err := conn.Write(ctx, websocket.MessageText, hello("kiwi-b")); err != nil {
			t.Fatal(err)
		}
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		env, _ := protocol.Decode(data)
		perr, _ := protocol.DecodePayload[protocol.Error](env)
		if perr.Code != protocol.CodeRobotMismatch {
			t.Fatalf("answer %s %+v, want robot_mismatch", env.Type, perr)
		}
		if _, _, err := conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("connection ended with %v, want 1008", err)
		}
		d := waitDenied(t, ctl, "robot_mismatch")
		if d.Claimed != "kiwi-b" {
			t.Fatalf("audit %+v", d)
		}
		if _, err := ctl.Store().Robot(ctx, "kiwi-b"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the impersonated robot was registered: %v", err)
		}
	})
}

// A revoked robot is refused on every node: a robot connected to node 2 is
// revoked through node 1; node 2 cuts it within a second and refuses its
// certificate afterwards, even with a resumed TLS session.
func TestRevocationCutsLiveSessionOnEveryNode(t *testing.T) {
	dir := t.TempDir()
	n1 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c1")})
	n2 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c2"), Join: []string{n1.Config().DBAddress}})
	startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c3"), Join: []string{n1.Config().DBAddress, n2.Config().DBAddress}})
	fleet := startFleet(t, robotsim.FleetOptions{Robots: 2, Servers: []string{n2.URL()}, Dir: filepath.Join(dir, "fleet"), CA: n2.CA()})
	waitConnectedInControl(t, client(t, n1), 10*time.Second, robotIDs(fleet.Robots())...)
	victim, bystander := fleet.Robots()[0], fleet.Robots()[1]
	ctx := context.Background()
	var out map[string]any
	start := time.Now()
	if err := admin.New(n1.AdminSocket()).Do(ctx, "POST", "/v1/robots/"+victim.ID+"/revoke", api.RevokeRequest{Reason: "test"}, &out); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "node 2 to cut the revoked robot's session", func() bool { return !sessionHere(n2, victim.ID) })
	t.Logf("session cut %s after the revocation", time.Since(start).Round(time.Millisecond))
	// It keeps trying and keeps being refused, with an audit record.
	waitDenied(t, n2, "revoked")
	time.Sleep(time.Second)
	if sessionHere(n2, victim.ID) {
		t.Fatal("revoked robot is connected again")
	}
	if !sessionHere(n2, bystander.ID) {
		t.Fatal("the other robot was disconnected too")
	}
}

func sessionHere(n *node.Node, robotID string) bool { return n.Gateway().HasSession(robotID) }

// Enrollment end to end with the real agent identity code,
// refusal of a reused token, renewal with the clock moved forward, and a
// restart on the stored identity.
func TestEnrollConnectRenewRestart(t *testing.T) {
	dir := t.TempDir()
	ctl := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control")})
	ctx := context.Background()
	var en protocol.EnrollmentCreated
	if err := admin.New(ctl.AdminSocket()).Do(ctx, "POST", protocol.EnrollmentsPath, protocol.EnrollmentRequest{RobotID: "lekiwi-00000", TTL: "10m"}, &en); err != nil {
		t.Fatal(err)
	}
	idDir := filepath.Join(dir, "fleet", "lekiwi-00000", "identity")
	id, err := identity.Enroll(ctx, nil, ctl.URL(), en.Token, "lekiwi-00000", ctl.CA().CertPEM, idDir)
	if err != nil {
		t.Fatal(err)
	}
	first := id.Certificate()
	// The token is spent.
	var enrollErr *identity.EnrollError
	if _, err := identity.Enroll(ctx, nil, ctl.URL(), en.Token, "lekiwi-00000", ctl.CA().CertPEM, ""); !errors.As(err, &enrollErr) || !strings.Contains(err.Error(), "token_used") {
		t.Fatalf("second enrollment with the same token: %v", err)
	}
	waitDenied(t, ctl, "token_used")

	// The fleet simulator loads the stored identity (as a restarted agent
	// does) and connects with mTLS; its clock runs 70 days ahead, past two
	// thirds of the 90-day certificate, so it renews over the connection.
	clock := func() time.Time { return time.Now().Add(70 * 24 * time.Hour) }
	fleet := startFleet(t, robotsim.FleetOptions{Robots: 1, Servers: []string{ctl.URL()}, Dir: filepath.Join(dir, "fleet"), CA: ctl.CA(), Now: clock})
	r := fleet.Robots()[0]
	if got := r.Identity().Certificate().SerialNumber; got.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("simulator did not reuse the enrolled identity")
	}
	waitFor(t, 15*time.Second, "certificate renewed over the connection", func() bool {
		return r.Identity().Certificate().SerialNumber.Cmp(first.SerialNumber) != 0
	})
	renewed := r.Identity().Certificate()
	if renewed.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
		t.Fatal("renewal kept the old key")
	}
	evs, _ := ctl.Store().EventsOfTypes(ctx, 0, 10, store.TypeRobotEnrolled, store.TypeCertificateIssued)
	if len(evs) != 2 || evs[1].Type != store.TypeCertificateIssued {
		t.Fatalf("certificate events %+v", evs)
	}
	// Restart: the robot comes back on the renewed identity from disk.
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	reloaded, err := identity.Load(idDir)
	if err != nil || reloaded.Certificate().SerialNumber.Cmp(renewed.SerialNumber) != 0 {
		t.Fatalf("stored identity after renewal: %v", err)
	}
	restarted := startFleet(t, robotsim.FleetOptions{Robots: 1, Servers: []string{ctl.URL()}, Dir: filepath.Join(dir, "fleet"), CA: ctl.CA()})
	waitFor(t, 10*time.Second, "restarted robot connected on its stored identity", func() bool { return sessionHere(ctl, "lekiwi-00000") })
	if restarted.Robots()[0].Identity().Certificate().SerialNumber.Cmp(renewed.SerialNumber) != 0 {
		t.Fatal("restarted robot did not use the renewed identity")
	}
}

// A client dribbling its request headers (slowloris) is cut off after the
// header timeout instead of holding a connection forever.
func TestSlowHeadersAreCutOff(t *testing.T) {
	dir := t.TempDir()
	ctl := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "control"), ReadHeaderTimeout: 300 * time.Millisecond})
	conn, err := tls.Dial("tcp", strings.TrimPrefix(ctl.URL(), "https://"), &tls.Config{RootCAs: ctl.CA().Pool(), MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	var closedAfter time.Duration
	for i := 0; i < 40; i++ { // one header line every 100 ms, never finishing
		time.Sleep(100 * time.Millisecond)
		if _, err := conn.Write([]byte("X-Slow: 1\r\n")); err != nil {
			closedAfter = time.Since(start)
			break
		}
		conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			closedAfter = time.Since(start)
			break
		}
	}
	if closedAfter == 0 || closedAfter > 2*time.Second {
		t.Fatalf("slow client still connected after %s (closed after %s)", time.Since(start), closedAfter)
	}
}
