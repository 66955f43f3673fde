package auth

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
)

// FuzzAuthorization throws arbitrary Authorization headers at the
// authenticator: it must never panic and must refuse everything that is
// not the one valid token.
func FuzzAuthorization(f *testing.F) {
	id, secret, full := NewToken()
	tokens := tokenMap{id: {ID: id, Name: "fuzz", Role: RoleOperator, Hash: HashSecret(secret)}}
	a := &Authenticator{Tokens: tokens}
	for _, s := range []string{"Bearer " + full, "Bearer lkw_" + id + "_", "Bearer a.b.c", "Basic x", "Bearer \x00", "bearer lkw__", "Bearer " + full + "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header["Authorization"] = []string{header}
		p, err := a.Authenticate(context.Background(), r)
		if err == nil {
			cred, _ := ParseAuthorization(header)
			if cred != full || p.Name != "fuzz" {
				t.Fatalf("header %q authenticated as %+v", header, p)
			}
			return
		}
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("header %q: unclassified error %v", header, err)
		}
	})
}
