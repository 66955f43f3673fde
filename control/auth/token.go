package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// TokenPrefix starts every API token so leaked tokens are easy to grep for
// (and for secret scanners to recognise).
const TokenPrefix = "lkw_"

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewToken makes a token: an id (public, names the token in lists and
// events) and a secret (shown once, stored only as a hash).
func NewToken() (id, secret, full string) {
	var idb [5]byte
	var sb [20]byte
	_, _ = rand.Read(idb[:])
	_, _ = rand.Read(sb[:])
	id = strings.ToLower(b32.EncodeToString(idb[:]))
	secret = strings.ToLower(b32.EncodeToString(sb[:]))
	return id, secret, TokenPrefix + id + "_" + secret
}

// ParseToken splits lkw_<id>_<secret>.
func ParseToken(s string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		return "", "", errors.New("not a lekiwi API token (they start with lkw_)")
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || id == "" || secret == "" || len(s) > 128 {
		return "", "", errors.New("malformed lekiwi API token")
	}
	return id, secret, nil
}

// HashSecret is how token secrets are stored. Secrets are 160 random bits,
// so a fast hash is enough: there is nothing to brute-force.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// SecretMatches compares a presented secret with a stored hash in
// constant time.
func SecretMatches(secret, storedHash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(storedHash)) == 1
}

// ParseAuthorization splits an Authorization header into scheme and
// credentials; only Bearer is accepted.
func ParseAuthorization(header string) (string, error) {
	if header == "" {
		return "", ErrNoCredentials
	}
	if len(header) > 8192 {
		return "", fmt.Errorf("%w: Authorization header longer than 8 KiB", ErrInvalid)
	}
	scheme, cred, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: Authorization must be \"Bearer <token>\"", ErrInvalid)
	}
	cred = strings.TrimSpace(cred)
	if cred == "" || strings.ContainsAny(cred, " \t\r\n") {
		return "", fmt.Errorf("%w: empty or malformed bearer token", ErrInvalid)
	}
	return cred, nil
}
