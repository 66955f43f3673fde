package api

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/protocol"
)

func TestCACertificateForImages(t *testing.T) {
	ca, err := pki.Create(pki.CreateOptions{Name: "test CA", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	ta := newTestAPI(t, Options{CA: ca})
	code, body, _ := ta.call(t, "GET", "/v1/ca", ta.tokens[auth.RoleEngineer], nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/ca: %d %s", code, body)
	}
	var got protocol.CACertificate
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Certificate != string(ca.CertPEM) {
		t.Fatalf("GET /v1/ca served %q, want the node's CA certificate", got.Certificate)
	}
	// Without a CA (--insecure) there is nothing to serve, and it says so.
	bare := newTestAPI(t, Options{})
	if code, body, _ := bare.call(t, "GET", "/v1/ca", bare.tokens[auth.RoleOperator], nil); code != http.StatusConflict {
		t.Fatalf("GET /v1/ca without a CA: %d %s, want 409", code, body)
	}
}
