package stream

import (
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestTokenFromSubprotocols(t *testing.T) {
	enc := func(s string) string { return TokenSubprotocolPrefix + base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		header []string
		token  string
		rest   []string
		ok     bool
	}{
		{"none", nil, "", nil, false},
		{"only the stream protocol", []string{Subprotocol}, "", nil, false},
		{"browser offer", []string{Subprotocol + ", " + enc("lkw_abc_def")}, "lkw_abc_def", []string{Subprotocol}, true},
		{"token first, separate header lines", []string{enc("lkw_abc_def"), Subprotocol}, "lkw_abc_def", []string{Subprotocol}, true},
		{"JWT with dots", []string{enc("eyJ.eyJ.sig-_")}, "eyJ.eyJ.sig-_", nil, true},
		{"padding is refused", []string{TokenSubprotocolPrefix + "bGt3Xw=="}, "", nil, false},
		{"not base64url", []string{TokenSubprotocolPrefix + "!!"}, "", nil, false},
		{"empty token", []string{TokenSubprotocolPrefix}, "", nil, false},
		{"token with a space", []string{enc("lkw a")}, "", nil, false},
		{"two tokens", []string{enc("a") + "," + enc("b")}, "", nil, false},
		{"oversized header", []string{Subprotocol + "," + strings.Repeat("x", maxSubprotocolHeader)}, "", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.header {
				h.Add("Sec-WebSocket-Protocol", v)
			}
			token, rest, ok := TokenFromSubprotocols(h)
			if token != tc.token || ok != tc.ok || !slices.Equal(rest, tc.rest) {
				t.Fatalf("got (%q, %q, %v), want (%q, %q, %v)", token, rest, ok, tc.token, tc.rest, tc.ok)
			}
		})
	}
}

// FuzzTokenFromSubprotocols: any header yields either no token or a
// non-empty token without whitespace, and never panics.
func FuzzTokenFromSubprotocols(f *testing.F) {
	f.Add(Subprotocol + ", " + TokenSubprotocolPrefix + "bGt3X2FiY19kZWY")
	f.Add(TokenSubprotocolPrefix + "," + TokenSubprotocolPrefix)
	f.Add(",,, ")
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{"Sec-Websocket-Protocol": {v}}
		token, rest, ok := TokenFromSubprotocols(h)
		if ok != (token != "") || strings.ContainsAny(token, " \t\r\n") {
			t.Fatalf("TokenFromSubprotocols(%q) = %q, %v", v, token, ok)
		}
		for _, p := range rest {
			if strings.HasPrefix(p, TokenSubprotocolPrefix) {
				t.Fatalf("token subprotocol %q left in rest", p)
			}
		}
	})
}
