package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestRolesGrantTheSeedPermissions(t *testing.T) {
	want := map[Role]map[Permission]bool{
		RoleOperator: {PermRead: true, PermTeleoperate: true},
		RoleEngineer: {PermRead: true, PermDeploy: true, PermConfigure: true},
		RoleAdmin:    {PermRead: true, PermTeleoperate: true, PermDeploy: true, PermConfigure: true, PermFactory: true, PermAdmin: true},
		RoleNode:     {PermRead: true, PermFactory: true},
	}
	for _, r := range append(Roles(), RoleNode) {
		for _, p := range Permissions() {
			if got := r.Allows(p); got != want[r][p] {
				t.Errorf("%s allows %s = %v, want %v", r, p, got, want[r][p])
			}
		}
		if !r.Allows(PermPublic) {
			t.Errorf("%s denied a public route", r)
		}
	}
	for _, bad := range []string{"root", string(RoleNode)} {
		if _, err := ParseRole(bad); err == nil {
			t.Errorf("role %q accepted for a token", bad)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	id, secret, full := NewToken()
	gid, gsecret, err := ParseToken(full)
	if err != nil || gid != id || gsecret != secret || !strings.HasPrefix(full, TokenPrefix) {
		t.Fatalf("ParseToken(%q) = %q, %q, %v", full, gid, gsecret, err)
	}
	if !SecretMatches(secret, HashSecret(secret)) || SecretMatches(secret+"x", HashSecret(secret)) {
		t.Fatal("secret matching is wrong")
	}
	for _, bad := range []string{"", "lkw_", "lkw_abc", "lkw__x", "abc_def", "lkw_a_" + strings.Repeat("x", 200)} {
		if _, _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

func TestParseAuthorization(t *testing.T) {
	tests := []struct {
		header string
		want   string
		err    error
	}{
		{"Bearer abc", "abc", nil},
		{"bearer   abc  ", "abc", nil},
		{"", "", ErrNoCredentials},
		{"Basic dXNlcjpwYXNz", "", ErrInvalid},
		{"Bearer", "", ErrInvalid},
		{"Bearer a b", "", ErrInvalid},
		{"Bearer " + strings.Repeat("a", 9000), "", ErrInvalid},
	}
	for _, tc := range tests {
		got, err := ParseAuthorization(tc.header)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("ParseAuthorization(%.20q) = %q, %v; want %q, %v", tc.header, got, err, tc.want, tc.err)
		}
	}
}

type tokenMap map[string]TokenRecord

func (m tokenMap) LookupToken(_ context.Context, id string) (TokenRecord, error) {
	r, ok := m[id]
	if !ok {
		return TokenRecord{}, fmt.Errorf("%w: unknown token %s", ErrInvalid, id)
	}
	return r, nil
}

func TestAuthenticatorTokens(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	mk := func(name string, role Role, exp, rev time.Time) (string, TokenRecord) {
		id, secret, full := NewToken()
		return full, TokenRecord{ID: id, Name: name, Role: role, Hash: HashSecret(secret), ExpiresAt: exp, RevokedAt: rev}
	}
	good, goodRec := mk("alice", RoleEngineer, time.Time{}, time.Time{})
	expired, expRec := mk("bob", RoleAdmin, now.Add(-time.Minute), time.Time{})
	revoked, revRec := mk("carol", RoleAdmin, time.Time{}, now.Add(-time.Hour))
	tokens := tokenMap{goodRec.ID: goodRec, expRec.ID: expRec, revRec.ID: revRec}
	a := &Authenticator{Tokens: tokens, Now: func() time.Time { return now }}
	gid, _, _ := ParseToken(good)
	tests := []struct {
		header string
		err    error
	}{
		{"Bearer " + good, nil},
		{"Bearer " + expired, ErrExpired},
		{"Bearer " + revoked, ErrRevoked},
		{"Bearer " + TokenPrefix + gid + "_wrongsecret", ErrInvalid},
		{"Bearer " + TokenPrefix + "nobody_secret", ErrInvalid},
		{"Bearer a.b.c", ErrInvalid}, // JWT without OIDC configured
		{"Bearer opaque", ErrInvalid},
		{"", ErrNoCredentials},
	}
	for _, tc := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		p, err := a.Authenticate(context.Background(), r)
		if !errors.Is(err, tc.err) {
			t.Errorf("%.30s: err %v, want %v", tc.header, err, tc.err)
		}
		if tc.err == nil && (p.Name != "alice" || p.Role != RoleEngineer || p.Actor() != "token:alice") {
			t.Errorf("principal %+v", p)
		}
	}
}

// issuer is a local OIDC provider: discovery document and JWKS over HTTP,
// tokens signed with its RSA key.
type issuer struct {
	srv    *httptest.Server
	key    *rsa.PrivateKey
	signer jose.Signer
}

func newIssuer(t *testing.T) *issuer {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key}
	mux := http.NewServeMux()
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/keys", "authorization_endpoint": is.srv.URL + "/auth",
			"token_endpoint": is.srv.URL + "/token", "id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	})
	is.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func (is *issuer) token(t *testing.T, signer jose.Signer, aud string, extra map[string]any) string {
	claims := jwt.Claims{Issuer: is.srv.URL, Subject: "u-1", Audience: jwt.Audience{aud}, Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour)), IssuedAt: jwt.NewNumericDate(time.Now())}
	raw, err := jwt.Signed(signer).Claims(claims).Claims(extra).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestOIDCTokensMapToRoles(t *testing.T) {
	is := newIssuer(t)
	ctx := context.Background()
	v, err := NewOIDC(ctx, OIDCConfig{Issuer: is.srv.URL, Audience: "lekiwi-control", RoleClaim: "lekiwi_role"})
	if err != nil {
		t.Fatal(err)
	}
	a := &Authenticator{Tokens: tokenMap{}, OIDC: v}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forger, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: other}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	tests := []struct {
		name  string
		token string
		role  Role
		who   string
	}{
		{"engineer by string claim", is.token(t, is.signer, "lekiwi-control", map[string]any{"lekiwi_role": "engineer", "email": "eve@example.com"}), RoleEngineer, "eve@example.com"},
		{"strongest of a list", is.token(t, is.signer, "lekiwi-control", map[string]any{"lekiwi_role": []string{"operator", "admin", "intern"}}), RoleAdmin, "u-1"},
		{"wrong audience", is.token(t, is.signer, "someone-else", map[string]any{"lekiwi_role": "admin"}), "", ""},
		{"bad signature", is.token(t, forger, "lekiwi-control", map[string]any{"lekiwi_role": "admin"}), "", ""},
		{"no role", is.token(t, is.signer, "lekiwi-control", map[string]any{"lekiwi_role": "intern"}), "", ""},
		{"tampered payload", tamper(is.token(t, is.signer, "lekiwi-control", map[string]any{"lekiwi_role": "operator"})), "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("Authorization", "Bearer "+tc.token)
			p, err := a.Authenticate(ctx, r)
			if tc.role == "" {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("accepted (%+v, %v), want ErrInvalid", p, err)
				}
				return
			}
			if err != nil || p.Role != tc.role || p.Name != tc.who || p.Source != "oidc" {
				t.Fatalf("principal %+v, %v; want %s %s", p, err, tc.role, tc.who)
			}
		})
	}
}

// tamper swaps the payload for one claiming admin, keeping the signature.
func tamper(raw string) string {
	parts := strings.Split(raw, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"lekiwi_role":"admin"}`))
	return strings.Join(parts, ".")
}
