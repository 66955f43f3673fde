package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Errors of authentication. Callers map them to 401.
var (
	ErrNoCredentials = errors.New("no credentials: send Authorization: Bearer <token>")
	ErrInvalid       = errors.New("invalid credentials")
	ErrExpired       = errors.New("credentials expired")
	ErrRevoked       = errors.New("token revoked")
)

// Principal is an authenticated caller.
type Principal struct {
	Name    string `json:"name"`
	Role    Role   `json:"role"`
	TokenID string `json:"token_id,omitempty"`
	Source  string `json:"source"` // token, oidc, local
}

// Actor is how the principal appears in events.
func (p Principal) Actor() string { return p.Source + ":" + p.Name }

// LocalAdmin is the principal of calls over the local admin socket: whoever
// can open it is root on the control host.
func LocalAdmin() Principal { return Principal{Name: "admin", Role: RoleAdmin, Source: "local"} }

// TokenRecord is a stored API token.
type TokenRecord struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Hash      string    `json:"-"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// TokenLookup finds a stored token by id (ErrInvalid when unknown).
type TokenLookup interface {
	LookupToken(ctx context.Context, id string) (TokenRecord, error)
}

// JWTVerifier turns a JWT into a principal (OIDC).
type JWTVerifier interface {
	Verify(ctx context.Context, raw string) (Principal, error)
}

// NodeVerifier checks a client certificate chain (leaf first) as a node
// certificate of the fleet CA and returns the node's name.
type NodeVerifier func(chain []*x509.Certificate, now time.Time) (name string, err error)

// Authenticator checks credentials on requests.
type Authenticator struct {
	Tokens TokenLookup
	OIDC   JWTVerifier // nil: JWTs are refused
	// Nodes, when set, admits callers without an Authorization header that
	// presented a node certificate over mTLS (netboot stations) as RoleNode.
	Nodes NodeVerifier
	Now   func() time.Time
}

// Authenticate returns the request's principal.
func (a *Authenticator) Authenticate(ctx context.Context, r *http.Request) (Principal, error) {
	if r.Header.Get("Authorization") == "" && a.Nodes != nil && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		name, err := a.Nodes(r.TLS.PeerCertificates, a.now())
		if err != nil {
			return Principal{}, fmt.Errorf("%w: client certificate is not a node certificate of this fleet: %v", ErrInvalid, err)
		}
		return Principal{Name: name, Role: RoleNode, Source: "node"}, nil
	}
	cred, err := ParseAuthorization(r.Header.Get("Authorization"))
	if err != nil {
		return Principal{}, err
	}
	if strings.HasPrefix(cred, TokenPrefix) {
		return a.token(ctx, cred)
	}
	if strings.Count(cred, ".") == 2 {
		if a.OIDC == nil {
			return Principal{}, fmt.Errorf("%w: a JWT was sent but this control node has no OIDC issuer configured", ErrInvalid)
		}
		return a.OIDC.Verify(ctx, cred)
	}
	return Principal{}, fmt.Errorf("%w: bearer credential is neither an lkw_ token nor a JWT", ErrInvalid)
}

func (a *Authenticator) token(ctx context.Context, cred string) (Principal, error) {
	id, secret, err := ParseToken(cred)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	rec, err := a.Tokens.LookupToken(ctx, id)
	if err != nil {
		return Principal{}, err
	}
	if !SecretMatches(secret, rec.Hash) {
		return Principal{}, fmt.Errorf("%w: token %s", ErrInvalid, id)
	}
	now := a.now()
	if !rec.RevokedAt.IsZero() {
		return Principal{}, fmt.Errorf("%w: token %s (%s) was revoked", ErrRevoked, id, rec.Name)
	}
	if !rec.ExpiresAt.IsZero() && !now.Before(rec.ExpiresAt) {
		return Principal{}, fmt.Errorf("%w: token %s (%s) expired at %s", ErrExpired, id, rec.Name, rec.ExpiresAt.Format(time.RFC3339))
	}
	return Principal{Name: rec.Name, Role: rec.Role, TokenID: rec.ID, Source: "token"}, nil
}

func (a *Authenticator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}
