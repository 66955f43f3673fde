package pki

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	for _, kt := range KeyTypes() {
		for _, pass := range []string{"", "correct horse battery staple"} {
			t.Run(string(kt)+"/passphrase="+pass, func(t *testing.T) {
				ca := newTestCA(t, kt, t0)
				dir := filepath.Join(t.TempDir(), "ca")
				if err := ca.Save(dir, []byte(pass)); err != nil {
					t.Fatal(err)
				}
				assertMode(t, filepath.Join(dir, CertFile), 0o644)
				assertMode(t, filepath.Join(dir, KeyFile), 0o600)
				assertMode(t, dir, 0o700|fs.ModeDir)

				keyPEM, _ := os.ReadFile(filepath.Join(dir, KeyFile))
				wantType := "-----BEGIN PRIVATE KEY-----"
				if pass != "" {
					wantType = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
				}
				if !bytes.HasPrefix(keyPEM, []byte(wantType)) {
					t.Errorf("key file starts %q, want %q", firstLine(keyPEM), wantType)
				}

				got, err := Load(dir, []byte(pass))
				if err != nil {
					t.Fatal(err)
				}
				if !got.Cert.Equal(ca.Cert) || !bytes.Equal(got.CertPEM, ca.CertPEM) {
					t.Error("loaded certificate differs from the saved one")
				}
				if !publicKeysEqual(got.Key.Public(), ca.Key.Public()) {
					t.Error("loaded key differs from the saved one")
				}
				// The loaded CA must be able to sign.
				if _, _, err := got.SignRobot(newCSR(t, newKey(t, "p256"), nil), "lekiwi-0001", 0, t0); err != nil {
					t.Errorf("loaded CA cannot sign: %v", err)
				}
				cert, err := LoadCert(dir)
				if err != nil || !cert.Equal(ca.Cert) {
					t.Errorf("LoadCert = %v, %v", cert, err)
				}
			})
		}
	}
}

func TestSaveRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	first := newTestCA(t, KeyECDSAP256, t0)
	if err := first.Save(dir, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	second := newTestCA(t, KeyECDSAP256, t0)
	err := second.Save(dir, nil)
	if !errors.Is(err, ErrCAExists) {
		t.Fatalf("second Save error = %v, want ErrCAExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if !bytes.Equal(before, after) {
		t.Fatal("the first CA's key was overwritten")
	}
	// A lone leftover key (say, a half-cleaned directory) also stops it.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, KeyFile), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := second.Save(dir2, nil); !errors.Is(err, ErrCAExists) {
		t.Fatalf("Save over a stray ca.key error = %v, want ErrCAExists", err)
	}
}

func TestLoadErrors(t *testing.T) {
	const pass = "s3cret"
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // starts from a CA saved with pass
		pass    string
		wantIs  error
		wantMsg string
	}{
		{name: "no such directory", prepare: func(t *testing.T, dir string) { os.RemoveAll(dir) }, pass: pass, wantIs: fs.ErrNotExist, wantMsg: "provision ca init"},
		{name: "missing key", prepare: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, KeyFile)) }, pass: pass, wantIs: fs.ErrNotExist, wantMsg: "holds only the CA certificate"},
		{name: "wrong passphrase", pass: "guess", wantIs: ErrWrongPassphrase},
		{name: "no passphrase for encrypted key", pass: "", wantIs: ErrPassphraseRequired},
		{name: "key readable by others", prepare: chmodKey(0o644), pass: pass, wantIs: ErrKeyPermissions, wantMsg: "chmod 600"},
		{name: "key readable by group", prepare: chmodKey(0o640), pass: pass, wantIs: ErrKeyPermissions, wantMsg: "chmod 600"},
		{name: "key of another CA", prepare: func(t *testing.T, dir string) {
			other := newTestCA(t, KeyECDSAP256, t0)
			replaceFile(t, filepath.Join(dir, KeyFile), mustKeyPEM(t, other, nil), 0o600)
		}, pass: pass, wantMsg: "different CAs"},
		{name: "not a CA certificate", prepare: func(t *testing.T, dir string) {
			ca, err := Load(dir, []byte(pass))
			if err != nil {
				t.Fatal(err)
			}
			certPEM, _, err := ca.IssueNode(NodeRequest{Name: "control-a"}, t0)
			if err != nil {
				t.Fatal(err)
			}
			replaceFile(t, filepath.Join(dir, CertFile), certPEM, 0o644)
		}, pass: pass, wantMsg: "not a CA certificate"},
		{name: "certificate is garbage", prepare: func(t *testing.T, dir string) {
			replaceFile(t, filepath.Join(dir, CertFile), []byte("hello"), 0o644)
		}, pass: pass, wantMsg: "no PEM \"CERTIFICATE\" block"},
		{name: "truncated encrypted key", prepare: func(t *testing.T, dir string) {
			// Cut the ciphertext to a size that is not a whole number of AES
			// blocks: the PKCS#8 library would panic on it.
			ca, _ := Load(dir, []byte(pass))
			keyPEM := mustKeyPEM(t, ca, []byte(pass))
			block, _ := pem.Decode(keyPEM)
			block.Bytes = truncateEncrypted(t, block.Bytes)
			replaceFile(t, filepath.Join(dir, KeyFile), pem.EncodeToMemory(block), 0o600)
		}, pass: pass, wantIs: ErrWrongPassphrase, wantMsg: "corrupt"},
		{name: "key in a foreign format", prepare: func(t *testing.T, dir string) {
			replaceFile(t, filepath.Join(dir, KeyFile), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), 0o600)
		}, pass: pass, wantMsg: "openssl pkcs8 -topk8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if err := newTestCA(t, KeyECDSAP256, t0).Save(dir, []byte(pass)); err != nil {
				t.Fatal(err)
			}
			if tt.prepare != nil {
				tt.prepare(t, dir)
			}
			ca, err := Load(dir, []byte(tt.pass))
			if err == nil {
				t.Fatalf("Load succeeded (%v), want an error", ca.Cert.Subject)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			if !strings.Contains(err.Error(), "load CA") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

// TestLoadPlainKeyIgnoresPassphrase: a passphrase for an unencrypted key is
// harmless (a service may always pass one), the key still loads.
func TestLoadPlainKeyIgnoresPassphrase(t *testing.T) {
	dir := t.TempDir()
	if err := newTestCA(t, KeyEd25519, t0).Save(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, []byte("unused")); err != nil {
		t.Fatal(err)
	}
}

// TestOpenSSLReadsEncryptedKey checks interoperability with a real third
// party: OpenSSL must decrypt the key we write, and its public key must be
// the certificate's.
func TestOpenSSLReadsEncryptedKey(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	for _, kt := range KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			dir := t.TempDir()
			if err := newTestCA(t, kt, t0).Save(dir, []byte("pw for openssl")); err != nil {
				t.Fatal(err)
			}
			keyPub, err := exec.Command(openssl, "pkey", "-in", filepath.Join(dir, KeyFile), "-passin", "pass:pw for openssl", "-pubout").CombinedOutput()
			if err != nil {
				t.Fatalf("openssl pkey: %v\n%s", err, keyPub)
			}
			certPub, err := exec.Command(openssl, "x509", "-in", filepath.Join(dir, CertFile), "-noout", "-pubkey").CombinedOutput()
			if err != nil {
				t.Fatalf("openssl x509: %v\n%s", err, certPub)
			}
			if !bytes.Equal(keyPub, certPub) {
				t.Fatalf("openssl sees key %s but certificate %s", keyPub, certPub)
			}
			out, err := exec.Command(openssl, "pkey", "-in", filepath.Join(dir, KeyFile), "-passin", "pass:wrong", "-noout").CombinedOutput()
			if err == nil {
				t.Fatalf("openssl accepted a wrong passphrase: %s", out)
			}
		})
	}
}

func assertMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode() & (fs.ModePerm | fs.ModeDir); got != want {
		t.Errorf("%s mode = %v, want %v", path, got, want)
	}
}

func chmodKey(mode fs.FileMode) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Chmod(filepath.Join(dir, KeyFile), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func replaceFile(t *testing.T, path string, data []byte, mode fs.FileMode) {
	t.Helper()
	os.Remove(path)
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func mustKeyPEM(t *testing.T, ca *CA, pass []byte) []byte {
	t.Helper()
	b, err := encodeKeyPEM(ca.Key, pass)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}
