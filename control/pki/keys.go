package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/youmark/pkcs8"
)

// KeyType names the kind of private key the CA generates.
type KeyType string

// Key types the CA can generate. ECDSA P-256 is the default because every TLS
// stack speaks it; Ed25519 is smaller and faster on a Pi but older clients
// (and some HSMs) lack it.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyEd25519   KeyType = "ed25519"
)

// KeyTypes lists the accepted key types, for help texts and errors.
func KeyTypes() []KeyType { return []KeyType{KeyECDSAP256, KeyEd25519} }

// ParseKeyType accepts a key type name as typed on a command line.
func ParseKeyType(s string) (KeyType, error) {
	for _, kt := range KeyTypes() {
		if string(kt) == s {
			return kt, nil
		}
	}
	return "", fmt.Errorf("key type %q is not supported: use %s or %s", s, KeyECDSAP256, KeyEd25519)
}

// generateKey makes a fresh private key; an empty type means ECDSA P-256.
func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case KeyECDSAP256, "":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
		}
		return k, nil
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate Ed25519 key: %w", err)
		}
		return k, nil
	default:
		_, err := ParseKeyType(string(kt))
		return nil, err
	}
}

// DescribePublicKey names a public key for humans and logs, e.g.
// "ecdsa-p256", "ed25519", "rsa-2048".
func DescribePublicKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return string(KeyECDSAP256)
		case elliptic.P384():
			return "ecdsa-p384"
		case elliptic.P521():
			return "ecdsa-p521"
		}
		return "ecdsa-unknown-curve"
	case ed25519.PublicKey:
		return string(KeyEd25519)
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	default:
		return fmt.Sprintf("unknown (%T)", pub)
	}
}

// PEM block types for private keys, as OpenSSL writes them, so `openssl
// pkey` can read what we write.
const (
	pemPrivateKey          = "PRIVATE KEY"
	pemEncryptedPrivateKey = "ENCRYPTED PRIVATE KEY"
	pemCertificate         = "CERTIFICATE"
)

// keyEncryption is how a passphrase protects the CA key: PBES2 with scrypt
// and AES-256-CBC. The scrypt cost (N=2^14, r=8, p=1: 16 MiB per guess) is
// OpenSSL's own `pkcs8 -scrypt` default; N=2^15 would be stronger but
// exceeds OpenSSL's 32 MiB scrypt memory limit, and an operator must be able
// to open the key with openssl in an emergency.
func keyEncryption() *pkcs8.Opts {
	return &pkcs8.Opts{
		Cipher: pkcs8.AES256CBC,
		KDFOpts: pkcs8.ScryptOpts{
			SaltSize:                 16,
			CostParameter:            1 << 14,
			BlockSize:                8,
			ParallelizationParameter: 1,
		},
	}
}

// encodeKeyPEM marshals a private key as PKCS#8 PEM, encrypted when a
// passphrase is given.
func encodeKeyPEM(key crypto.Signer, passphrase []byte) ([]byte, error) {
	if len(passphrase) == 0 {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode %s private key as PKCS#8: %w", DescribePublicKey(key.Public()), err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
	}
	der, err := pkcs8.MarshalPrivateKey(key, passphrase, keyEncryption())
	if err != nil {
		return nil, fmt.Errorf("encrypt %s private key as PKCS#8: %w", DescribePublicKey(key.Public()), err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemEncryptedPrivateKey, Bytes: der}), nil
}

// Errors Load returns about the CA key; test them with errors.Is.
var (
	// ErrPassphraseRequired: the key is encrypted and no passphrase was given.
	ErrPassphraseRequired = errors.New("the CA key is encrypted: a passphrase is required")
	// ErrWrongPassphrase: the passphrase did not decrypt the key (or the
	// encrypted key is corrupt; the two cannot be told apart).
	ErrWrongPassphrase = errors.New("wrong passphrase for the CA key (or the key file is corrupt)")
)

// decodeKeyPEM parses one PEM private key, decrypting it with passphrase
// when it is an ENCRYPTED PRIVATE KEY. A passphrase given for a plain key is
// ignored: the key is usable either way.
func decodeKeyPEM(pemBytes, passphrase []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found: expected a PKCS#8 \"PRIVATE KEY\" or \"ENCRYPTED PRIVATE KEY\"")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case pemPrivateKey:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
		}
	case pemEncryptedPrivateKey:
		if len(passphrase) == 0 {
			return nil, ErrPassphraseRequired
		}
		key, err = decryptPKCS8(block.Bytes, passphrase)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("PEM block is %q: expected a PKCS#8 \"PRIVATE KEY\" or \"ENCRYPTED PRIVATE KEY\" (convert with `openssl pkcs8 -topk8`)", block.Type)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

// decryptPKCS8 wraps the pkcs8 library, whose CBC decryption panics on a
// ciphertext that is not a whole number of blocks: a truncated key file must
// be an error, not a crash.
func decryptPKCS8(der, passphrase []byte) (key any, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, err = nil, fmt.Errorf("%w: decrypting failed (%v)", ErrWrongPassphrase, r)
		}
	}()
	key, _, err = pkcs8.ParsePrivateKey(der, passphrase)
	switch {
	case err == nil:
		return key, nil
	case strings.Contains(err.Error(), "incorrect password"):
		// The library has no sentinel error; this is its only message for
		// "decrypted, but the result is not a key".
		return nil, ErrWrongPassphrase
	default:
		return nil, fmt.Errorf("decrypt PKCS#8 private key (only PBES2 with PBKDF2 or scrypt and AES is supported): %w", err)
	}
}
