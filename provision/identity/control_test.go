//go:build libsqlite3

// This test starts a real control API (dqlite store), so it needs cgo and
// the libsqlite3 tag, as `make test` gives it; package identity itself
// stays free of control and of cgo.
package identity_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/provision/identity"
)

type control struct {
	url    string
	trust  *x509.CertPool // for control's TLS certificate
	ca     *pki.CA        // the fleet CA
	st     *store.Store
	tokens map[auth.Role]string
}

func startControl(t *testing.T) *control {
	t.Helper()
	st := storetest.Open(t)
	ca, err := pki.Create(pki.CreateOptions{Name: "fleet CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := api.New(st, api.Options{Logger: storetest.Logger(), Registerer: reg, Gatherer: reg, Auth: &auth.Authenticator{Tokens: st}, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a.Register(mux)
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	c := &control{url: srv.URL, trust: x509.NewCertPool(), ca: ca, st: st, tokens: map[auth.Role]string{}}
	c.trust.AddCert(srv.Certificate())
	for _, role := range auth.Roles() {
		id, secret, full := auth.NewToken()
		if err := st.CreateToken(context.Background(), store.TokenData{ID: id, Name: string(role) + "-user", Role: role, Hash: auth.HashSecret(secret)}, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		c.tokens[role] = full
	}
	return c
}

// enroll does what the robot does on first boot with the token on its
// card, and returns the robot id its certificate names.
func (c *control) enroll(t *testing.T, token string) (string, error) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "robot"}}, key)
	body, _ := json.Marshal(protocol.EnrollRequest{Token: token, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.trust}}}
	resp, err := client.Post(c.url+protocol.EnrollPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(string(b))
	}
	var er protocol.EnrollResponse
	if err := json.Unmarshal(b, &er); err != nil {
		t.Fatal(err)
	}
	cert, err := pki.ParseCertPEM([]byte(er.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	return pki.RobotIDFromCert(cert)
}

func TestControlSourceMintsEnrollableIdentities(t *testing.T) {
	c := startControl(t)
	ctx := context.Background()
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	journal := filepath.Join(t.TempDir(), "identities.log")
	// A robot control already knows takes the id the first random draw
	// gives (5 zero bytes: lekiwi-aaaaaaaa); the source must skip it.
	data, _ := json.Marshal(store.ConnectedData{Session: "s", Type: protocol.RobotLeKiwi})
	if _, err := c.st.Append(ctx, []store.Event{{RobotID: "lekiwi-aaaaaaaa", Type: store.TypeRobotConnected, Time: time.Now(), Data: data}}); err != nil {
		t.Fatal(err)
	}
	src, err := identity.NewControl(ctx, identity.ControlOptions{URL: c.url, Token: c.tokens[auth.RoleEngineer], RootCAs: c.trust, Profile: p, TTL: time.Hour,
		JournalPath: journal, Rand: io.MultiReader(bytes.NewReader(make([]byte, 5)), rand.Reader)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.CAPEM(), c.ca.CertPEM) {
		t.Fatal("the source's CA is not the fleet CA control serves")
	}
	if w := src.Who(); w.Role != "engineer" || w.Name != "engineer-user" {
		t.Fatalf("who = %+v", w)
	}
	var robots []string
	for _, target := range []string{"/dev/sdb", "/dev/sdc"} {
		r, err := src.Next(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.RobotID, "lekiwi-") || r.RobotID == "lekiwi-aaaaaaaa" || protocol.ValidRobotID(r.RobotID) != nil {
			t.Fatalf("robot id %q", r.RobotID)
		}
		if r.Hostname != r.RobotID || !bytes.Equal(r.CAPEM, c.ca.CertPEM) || !strings.HasPrefix(r.EnrollToken, api.EnrollmentTokenPrefix) || r.CertPEM != nil {
			t.Fatalf("identity %+v", r)
		}
		// The token is good for that robot, and for it only.
		got, err := c.enroll(t, r.EnrollToken)
		if err != nil || got != r.RobotID {
			t.Fatalf("enrolling with %s's token: robot %q, %v", r.RobotID, got, err)
		}
		robots = append(robots, r.RobotID)
	}
	if robots[0] == robots[1] {
		t.Fatalf("two cards got robot %s", robots[0])
	}
	if err := src.Finish(robots[0], "/dev/sdb", nil); err != nil {
		t.Fatal(err)
	}
	if err := src.Finish(robots[1], "/dev/sdc", errors.New("card removed")); err != nil {
		t.Fatal(err)
	}
	if err := src.Finish(robots[1], "/dev/sdc", nil); err == nil {
		t.Error("finished a card twice")
	}
	src.Close()
	b, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := identity.ParseJournal(b)
	if err != nil {
		t.Fatal(err)
	}
	last := identity.LastEvents(recs)
	if len(recs) != 4 || last[robots[0]] != identity.EventOK || last[robots[1]] != identity.EventFailed {
		t.Fatalf("journal %+v", recs)
	}
}

func TestControlSourceRefusesEarly(t *testing.T) {
	c := startControl(t)
	ctx := context.Background()
	p, _ := profiles.Load("xle")
	for _, tc := range []struct {
		name string
		o    identity.ControlOptions
		err  string
	}{
		{"operator token", identity.ControlOptions{URL: c.url, Token: c.tokens[auth.RoleOperator], RootCAs: c.trust, Profile: p}, `role "operator"`},
		{"unknown token", identity.ControlOptions{URL: c.url, Token: "lkw_nope", RootCAs: c.trust, Profile: p}, "401"},
		{"untrusted control", identity.ControlOptions{URL: c.url, Token: c.tokens[auth.RoleEngineer], Profile: p}, "--ca"},
		{"plain http", identity.ControlOptions{URL: strings.Replace(c.url, "https", "http", 1), Token: c.tokens[auth.RoleEngineer], Profile: p}, "use https"},
		{"no token", identity.ControlOptions{URL: c.url, RootCAs: c.trust, Profile: p}, "no API token"},
		{"bad prefix", identity.ControlOptions{URL: c.url, Token: c.tokens[auth.RoleEngineer], RootCAs: c.trust, Prefix: "XLE"}, `prefix "XLE"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewControl(ctx, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
	// An admin token works too, and the prefix defaults to the profile.
	src, err := identity.NewControl(ctx, identity.ControlOptions{URL: c.url, Token: c.tokens[auth.RoleAdmin], RootCAs: c.trust, Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r, err := src.Next(ctx, "card.img")
	if err != nil || !strings.HasPrefix(r.RobotID, "xle-") {
		t.Fatalf("admin: %+v %v", r, err)
	}
}
