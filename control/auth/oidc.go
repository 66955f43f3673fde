package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/coreos/go-oidc/v3/oidc"
)

// OIDCConfig configures validation of bearer JWTs from an identity provider.
type OIDCConfig struct {
	Issuer    string `yaml:"issuer"`     // discovery URL base, e.g. https://id.example.com/realms/fleet
	Audience  string `yaml:"audience"`   // expected aud (the client id)
	RoleClaim string `yaml:"role_claim"` // claim holding the role name (string or list); default "lekiwi_role"
	NameClaim string `yaml:"name_claim"` // claim naming the user; default "email", then "sub"
}

// OIDC verifies JWTs against an issuer's published keys (JWKS), which
// go-oidc fetches and caches (and refetches on an unknown key id).
type OIDC struct {
	verifier *oidc.IDTokenVerifier
	cfg      OIDCConfig
}

// NewOIDC discovers the issuer. ctx bounds discovery and carries the HTTP
// client (oidc.ClientContext) used for it and for key fetches.
func NewOIDC(ctx context.Context, cfg OIDCConfig) (*OIDC, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("oidc: issuer and audience are both required")
	}
	if cfg.RoleClaim == "" {
		cfg.RoleClaim = "lekiwi_role"
	}
	if cfg.NameClaim == "" {
		cfg.NameClaim = "email"
	}
	p, err := oidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc: discover issuer %s: %w", cfg.Issuer, err)
	}
	return &OIDC{verifier: p.Verifier(&oidc.Config{ClientID: cfg.Audience}), cfg: cfg}, nil
}

// Verify implements JWTVerifier: signature, issuer, audience and expiry,
// then the role from the configured claim (the strongest known one when it
// is a list).
func (o *OIDC) Verify(ctx context.Context, raw string) (Principal, error) {
	tok, err := o.verifier.Verify(ctx, raw)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: OIDC token: %v", ErrInvalid, err)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return Principal{}, fmt.Errorf("%w: OIDC claims: %v", ErrInvalid, err)
	}
	role, ok := roleFromClaim(claims[o.cfg.RoleClaim])
	if !ok {
		return Principal{}, fmt.Errorf("%w: OIDC token has no known role in claim %q", ErrInvalid, o.cfg.RoleClaim)
	}
	name, _ := claims[o.cfg.NameClaim].(string)
	if name == "" {
		name = tok.Subject
	}
	return Principal{Name: name, Role: role, Source: "oidc"}, nil
}

func roleFromClaim(v any) (Role, bool) {
	var names []string
	switch c := v.(type) {
	case string:
		names = []string{c}
	case []any:
		for _, x := range c {
			if s, ok := x.(string); ok {
				names = append(names, s)
			}
		}
	}
	best, found := Role(""), false
	for _, n := range names {
		r, err := ParseRole(n)
		if err != nil {
			continue
		}
		if !found || r.rank() > best.rank() {
			best, found = r, true
		}
	}
	return best, found
}
