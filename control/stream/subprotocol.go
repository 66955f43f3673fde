package stream

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// Browsers cannot set an Authorization header on a WebSocket, but they can
// offer subprotocols. A browser client offers two: Subprotocol, which
// control selects, and TokenSubprotocolPrefix followed by its bearer token
// in unpadded base64url (so any token is a valid subprotocol name), which
// TokenFromSubprotocols moves into an Authorization header before the
// request is authenticated. The token is never echoed back.
const (
	Subprotocol            = "lekiwi.stream.v1"
	TokenSubprotocolPrefix = "lekiwi.bearer."
	// maxSubprotocolHeader bounds the header TokenFromSubprotocols reads.
	maxSubprotocolHeader = 8 << 10
)

// TokenFromSubprotocols finds a bearer token offered as a subprotocol in
// the request's Sec-WebSocket-Protocol header. It returns the token and
// the header's other subprotocols (to offer to the upgrade in its place).
// ok is false when no subprotocol carries a token or one is malformed.
func TokenFromSubprotocols(h http.Header) (token string, rest []string, ok bool) {
	values := h.Values("Sec-WebSocket-Protocol")
	size := 0
	for _, v := range values {
		size += len(v)
	}
	if size > maxSubprotocolHeader {
		return "", nil, false
	}
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			enc, isToken := strings.CutPrefix(p, TokenSubprotocolPrefix)
			if !isToken {
				rest = append(rest, p)
				continue
			}
			if token != "" {
				return "", nil, false // two tokens: refuse rather than guess
			}
			b, err := base64.RawURLEncoding.DecodeString(enc)
			if err != nil || len(b) == 0 || strings.ContainsAny(string(b), " \t\r\n") {
				return "", nil, false
			}
			token = string(b)
		}
	}
	if token == "" {
		return "", nil, false
	}
	return token, rest, true
}
