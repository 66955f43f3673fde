package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func (ta *testAPI) call(t *testing.T, method, path, token string, body []byte) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, ta.srv.URL+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// TestRBACMatrix walks the route table: every route, every role (and no
// credentials), expected allow or deny from the route's declared
// permission. A new route is covered the moment it is added.
func TestRBACMatrix(t *testing.T) {
	ta := newTestAPI(t, Options{})
	param := regexp.MustCompile(`\{[a-z]+\}`)
	for _, rt := range ta.api.Routes() {
		if rt.Perm == "" {
			t.Errorf("%s %s declares no permission", rt.Method, rt.Pattern)
			continue
		}
		path := param.ReplaceAllString(rt.Pattern, "kiwi-1")
		callers := map[string]string{"anonymous": ""}
		for role, tok := range ta.tokens {
			callers[string(role)] = tok
		}
		for who, tok := range callers {
			// An empty JSON object: enough to get past authorization; the
			// handler may then refuse it as a bad request, which is fine.
			code, body, _ := ta.call(t, rt.Method, path, tok, []byte(`{}`))
			var want []int
			switch {
			case rt.Perm == auth.PermPublic:
				want = nil // anything but 401/403 from authorization
			case who == "anonymous":
				want = []int{http.StatusUnauthorized}
			case !auth.Role(who).Allows(rt.Perm):
				want = []int{http.StatusForbidden}
			}
			denied := code == http.StatusUnauthorized || code == http.StatusForbidden
			if want == nil && denied && !strings.Contains(string(body), "token_") {
				t.Errorf("%s %s as %s: %d %s, want allowed", rt.Method, rt.Pattern, who, code, body)
			}
			if want != nil && code != want[0] {
				t.Errorf("%s %s as %s: %d, want %d", rt.Method, rt.Pattern, who, code, want[0])
			}
		}
	}
}

func TestDenialsAreAudited(t *testing.T) {
	ta := newTestAPI(t, Options{})
	ta.call(t, "GET", "/v1/robots", "", nil)
	ta.call(t, "POST", "/v1/tokens", ta.tokens[auth.RoleOperator], []byte(`{"name":"x","role":"admin"}`))
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, _ := ta.st.EventsOfTypes(context.Background(), 0, 10, store.TypeAccessDenied)
		var reasons []string
		for _, e := range evs {
			var d store.DeniedData
			json.Unmarshal(e.Data, &d)
			reasons = append(reasons, d.Reason+" "+d.Path)
		}
		if strings.Join(reasons, ",") == "unauthenticated GET /v1/robots,forbidden POST /v1/tokens" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit records %v", reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTokenLifecycleOverTheAPI(t *testing.T) {
	ta := newTestAPI(t, Options{})
	admin := ta.tokens[auth.RoleAdmin]
	code, body, _ := ta.call(t, "POST", "/v1/tokens", admin, []byte(`{"name":"alice","role":"engineer","expires_in":"1h"}`))
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var created TokenCreated
	json.Unmarshal(body, &created)
	if code, body, _ := ta.call(t, "GET", "/v1/whoami", created.Token, nil); code != 200 || !strings.Contains(string(body), `"alice"`) {
		t.Fatalf("whoami with new token: %d %s", code, body)
	}
	if code, _, _ := ta.call(t, "POST", "/v1/tokens", admin, []byte(`{"name":"bob","role":"root"}`)); code != 400 {
		t.Fatalf("bad role: %d", code)
	}
	if code, _, _ := ta.call(t, "DELETE", "/v1/tokens/"+created.ID, admin, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if code, body, _ := ta.call(t, "GET", "/v1/whoami", created.Token, nil); code != 401 || !strings.Contains(string(body), "revoked") {
		t.Fatalf("revoked token still works: %d %s", code, body)
	}
	evs, _ := ta.st.EventsOfTypes(context.Background(), 0, 10, store.TypeTokenCreated, store.TypeTokenRevoked)
	last := evs[len(evs)-1]
	if last.Type != store.TypeTokenRevoked || last.Actor != "token:admin-user" || strings.Contains(string(evs[len(evs)-2].Data), created.Token) {
		t.Fatalf("audit of token changes: %+v", last)
	}
}

func TestHardening(t *testing.T) {
	ta := newTestAPI(t, Options{RateLimit: 5, RateBurst: 5})
	op := ta.tokens[auth.RoleOperator]
	code, _, hdr := ta.call(t, "GET", "/v1/robots", op, nil)
	if code != 200 || hdr.Get("X-Content-Type-Options") != "nosniff" || hdr.Get("X-Frame-Options") != "DENY" || !strings.Contains(hdr.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("headers %v", hdr)
	}
	limited := 0
	for i := 0; i < 20; i++ {
		if code, _, h := ta.call(t, "GET", "/v1/robots", op, nil); code == http.StatusTooManyRequests && h.Get("Retry-After") != "" {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("20 quick requests at 5/s were never rate limited")
	}
	// Another principal has its own budget.
	if code, _, _ := ta.call(t, "GET", "/v1/robots", ta.tokens[auth.RoleEngineer], nil); code != 200 {
		t.Fatalf("engineer limited by the operator's budget: %d", code)
	}
	big := bytes.Repeat([]byte("x"), MaxBodyBytes+10)
	if code, body, _ := ta.call(t, "POST", "/v1/tokens", ta.tokens[auth.RoleAdmin], append(append([]byte(`{"name":"`), big...), `"}`...)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversize body: %d %s", code, body)
	}
}

func csrPEM(t *testing.T, cn string) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestEnrollmentOverTheAPI(t *testing.T) {
	ca, err := pki.Create(pki.CreateOptions{Name: "test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ta := newTestAPI(t, Options{CA: ca, Now: func() time.Time { return now }})
	eng := ta.tokens[auth.RoleEngineer]
	code, body, _ := ta.call(t, "POST", "/v1/enrollments", eng, []byte(`{"robot_id":"kiwi-5","ttl":"1h"}`))
	if code != http.StatusCreated {
		t.Fatalf("create enrollment: %d %s", code, body)
	}
	var en protocol.EnrollmentCreated
	json.Unmarshal(body, &en)
	req := func(token string, csr []byte) (int, []byte) {
		b, _ := json.Marshal(protocol.EnrollRequest{Token: token, CSR: string(csr)})
		c, body, _ := ta.call(t, "POST", protocol.EnrollPath, "", b)
		return c, body
	}
	if c, body := req(en.Token, []byte("garbage")); c != 400 || !strings.Contains(string(body), "csr_invalid") {
		t.Fatalf("bad CSR: %d %s", c, body)
	}
	// The CSR asks for another name; the certificate names the token's robot.
	c, body := req(en.Token, csrPEM(t, "someone-else"))
	if c != 200 {
		t.Fatalf("enroll: %d %s", c, body)
	}
	var resp protocol.EnrollResponse
	json.Unmarshal(body, &resp)
	block, _ := pem.Decode([]byte(resp.Certificate))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := pki.RobotIDFromCert(cert); err != nil || id != "kiwi-5" {
		t.Fatalf("certificate names %q, %v", id, err)
	}
	if c, body := req(en.Token, csrPEM(t, "kiwi-5")); c != 401 || !strings.Contains(string(body), "token_used") {
		t.Fatalf("reused token: %d %s", c, body)
	}
	now = now.Add(2 * time.Hour)
	_, body, _ = ta.call(t, "POST", "/v1/enrollments", eng, []byte(`{"robot_id":"kiwi-6","ttl":"1h"}`))
	json.Unmarshal(body, &en)
	now = now.Add(61 * time.Minute)
	if c, body := req(en.Token, csrPEM(t, "kiwi-6")); c != 401 || !strings.Contains(string(body), "token_expired") {
		t.Fatalf("expired token: %d %s", c, body)
	}
	if c, body := req("lke_nonsense", csrPEM(t, "kiwi-6")); c != 401 || !strings.Contains(string(body), "token_invalid") {
		t.Fatalf("unknown token: %d %s", c, body)
	}
	r, err := ta.st.Robot(context.Background(), "kiwi-5")
	if err != nil || r.Certificate == nil || r.Certificate.Serial != pki.SerialHex(cert) {
		t.Fatalf("robot projection %+v, %v", r, err)
	}
}
