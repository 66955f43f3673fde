package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names of a CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

// Errors about CA directories; test them with errors.Is.
var (
	// ErrCAExists: Save found a CA already in the directory.
	ErrCAExists = errors.New("a CA already exists there")
	// ErrKeyPermissions: the key file is readable or writable by group or others.
	ErrKeyPermissions = errors.New("the CA key file is accessible to group or others")
)

// Save writes dir/ca.crt (0644) and dir/ca.key (0600, PKCS#8, encrypted
// with passphrase when it is not empty), creating dir (0700) if needed. It
// refuses to overwrite either file: replacing a CA orphans every certificate
// in the fleet, so that must be a deliberate `rm`, not an accident.
func (ca *CA) Save(dir string, passphrase []byte) error {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("save CA to %s: %s exists: %w; move the old CA away first if you really mean to replace it", dir, p, ErrCAExists)
		}
	}
	keyPEM, err := encodeKeyPEM(ca.Key, passphrase)
	if err != nil {
		return fmt.Errorf("save CA to %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save CA: create directory %s: %w", dir, err)
	}
	// Key first: if the certificate cannot be written we remove the key, so
	// a half-written CA never looks complete.
	if err := WriteNewFile(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("save CA key: %w", err)
	}
	if err := WriteNewFile(certPath, ca.CertPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return fmt.Errorf("save CA certificate: %w", err)
	}
	return syncDir(dir)
}

// WriteNewFile writes data to a file that must not exist yet, with exactly
// the given permissions whatever the umask, and syncs it. Existing files are
// an error wrapping fs.ErrExist.
func WriteNewFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists: refusing to overwrite it (%w); remove it or choose another path", path, err)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	// The umask may have narrowed perm; Chmod makes it exact (it never
	// widens a key file: perm is what the caller asked for).
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("set permissions %v on %s: %w", perm, path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// syncDir makes the new directory entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// LoadCert reads dir/ca.crt only: enough to show a CA or to trust it,
// with no passphrase and no access to the key.
func LoadCert(dir string) (*x509.Certificate, error) {
	path := filepath.Join(dir, CertFile)
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read CA certificate: %s does not exist (%w): create a CA with `provision ca init --dir %s` or check --dir", path, err, dir)
		}
		return nil, fmt.Errorf("read CA certificate %s: %w", path, err)
	}
	cert, err := ParseCACert(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate %s: %w", path, err)
	}
	return cert, nil
}

// Load reads a CA saved by Save. The key file must not be accessible to
// group or others (the process refuses to use a leaked-looking key rather
// than carry on), must decrypt with passphrase when encrypted, and must
// match the certificate.
func Load(dir string, passphrase []byte) (*CA, error) {
	cert, err := LoadCert(dir)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	keyPath := filepath.Join(dir, KeyFile)
	info, err := os.Stat(keyPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load CA: key %s does not exist (%w): this directory holds only the CA certificate; run on the machine that has ca.key", keyPath, err)
		}
		return nil, fmt.Errorf("load CA: stat key %s: %w", keyPath, err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("load CA: key %s has mode %04o: %w; run `chmod 600 %s`", keyPath, perm, ErrKeyPermissions, keyPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load CA: read key %s: %w", keyPath, err)
	}
	key, err := decodeKeyPEM(keyPEM, passphrase)
	if err != nil {
		return nil, fmt.Errorf("load CA: key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("load CA: key %s does not belong to certificate %s (fingerprint %s): the two files come from different CAs", keyPath, filepath.Join(dir, CertFile), Fingerprint(cert))
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCertPEM(cert.Raw)}, nil
}

// publicKeysEqual compares two public keys of any supported type.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
