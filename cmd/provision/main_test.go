package main

import (
	"bytes"
	"crypto/x509"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// execute runs the cobra root in-process with an injected environment.
func execute(env map[string]string, args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errb.String(), err
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	out, _, err := execute(nil, "version")
	if err != nil || !strings.HasPrefix(out, "provision ") {
		t.Fatalf("version = %q, %v", out, err)
	}
}

func TestHelpTeaches(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{args: []string{"--help"}, want: []string{"Examples:", "provision ca init", "ca.key"}},
		{args: []string{"ca", "--help"}, want: []string{"ca.crt", "0600", "init", "show", "issue-node"}},
		{args: []string{"ca", "init", "--help"}, want: []string{"Examples:", "--passphrase-file", "--passphrase-env", "--key-type", "--lifetime", "--name", "never overwritten"}},
		{args: []string{"ca", "show", "--help"}, want: []string{"Examples:", "no passphrase", "openssl x509"}},
		{args: []string{"ca", "issue-node", "--help"}, want: []string{"Examples:", "--dns control-a.lan", "--ip 10.0.0.5", "--out-cert", "--out-key", "0600"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, _, err := execute(nil, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q", w)
				}
			}
		})
	}
}

// TestCAWorkflow is a technician's session: init with a passphrase, show,
// issue a node certificate, and check the files with the library.
func TestCAWorkflow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet-ca")
	passFile := writeFile(t, "correct horse battery\n")

	out, errOut, err := execute(nil, "ca", "init", "--dir", dir, "--passphrase-file", passFile, "--name", "Test Fleet CA", "--key-type", "ed25519", "--lifetime", "8760h")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(dir, []byte("correct horse battery")) // trailing newline not part of it
	if err != nil {
		t.Fatal(err)
	}
	fp := pki.Fingerprint(ca.Cert)
	for _, want := range []string{`Created CA "Test Fleet CA"`, "ed25519", fp, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "encrypted", "364 days left"} {
		if !strings.Contains(out, want) {
			t.Errorf("init output lacks %q:\n%s", want, out)
		}
	}
	if errOut != "" {
		t.Errorf("init with a passphrase warned: %s", errOut)
	}

	out, _, err = execute(nil, "ca", "show", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CN=Test Fleet CA", "ed25519", fp, pki.SerialHex(ca.Cert), ca.Cert.NotAfter.UTC().Format(time.RFC3339)} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}

	outDir := t.TempDir()
	certPath, keyPath := filepath.Join(outDir, "control-a.crt"), filepath.Join(outDir, "control-a.key")
	out, _, err = execute(map[string]string{"CA_PASS": "correct horse battery"}, "ca", "issue-node", "--dir", dir, "--passphrase-env", "CA_PASS",
		"--name", "control-a", "--dns", "control-a.lan,control.lan", "--ip", "10.0.0.5", "--ip", "fd00::5", "--lifetime", "720h",
		"--out-cert", certPath, "--out-key", keyPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"control-a"`, "control-a.lan, control.lan, 10.0.0.5, fd00::5", certPath, keyPath, "29 days left"} {
		if !strings.Contains(out, want) {
			t.Errorf("issue-node output lacks %q:\n%s", want, out)
		}
	}
	assertMode(t, certPath, 0o644)
	assertMode(t, keyPath, 0o600)
	certPEM, _ := os.ReadFile(certPath)
	cert, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if name, err := ca.VerifyNode([]*x509.Certificate{cert}, time.Now()); err != nil || name != "control-a" {
		t.Fatalf("issued certificate does not verify as node control-a: %q, %v", name, err)
	}
	if len(cert.IPAddresses) != 2 || len(cert.DNSNames) != 2 {
		t.Errorf("SANs = %v %v", cert.DNSNames, cert.IPAddresses)
	}

	// Issuing again onto the same files is refused and leaves them alone.
	_, _, err = execute(map[string]string{"CA_PASS": "correct horse battery"}, "ca", "issue-node", "--dir", dir, "--passphrase-env", "CA_PASS",
		"--name", "control-b", "--out-cert", certPath, "--out-key", keyPath)
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second issue-node error = %v, want a refusal to overwrite", err)
	}
	if again, _ := os.ReadFile(certPath); !bytes.Equal(again, certPEM) {
		t.Fatal("existing node certificate was overwritten")
	}
}

func TestCAInitUnencryptedWarns(t *testing.T) {
	dir := t.TempDir()
	_, errOut, err := execute(nil, "ca", "init", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "not encrypted") {
		t.Errorf("no warning about an unencrypted key: %q", errOut)
	}
	if _, err := pki.Load(dir, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCAErrors(t *testing.T) {
	existing := t.TempDir()
	if _, _, err := execute(nil, "ca", "init", "--dir", existing, "--passphrase-env", "P"); err == nil {
		t.Fatal("init with an unset passphrase variable succeeded")
	}
	if _, _, err := execute(map[string]string{"P": "long enough pass"}, "ca", "init", "--dir", existing, "--passphrase-env", "P"); err != nil {
		t.Fatal(err)
	}
	plain := t.TempDir()
	if _, _, err := execute(nil, "ca", "init", "--dir", plain); err != nil {
		t.Fatal(err)
	}
	insecure := t.TempDir()
	if _, _, err := execute(nil, "ca", "init", "--dir", insecure); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(insecure, "ca.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := func(name string) []string {
		d := t.TempDir()
		return []string{"--out-cert", filepath.Join(d, name+".crt"), "--out-key", filepath.Join(d, name+".key")}
	}
	env := map[string]string{"P": "long enough pass", "EMPTY": ""}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "init over an existing CA", args: []string{"ca", "init", "--dir", existing}, wantErr: "already exists"},
		{name: "init without --dir", args: []string{"ca", "init"}, wantErr: `required flag(s) "dir"`},
		{name: "init short passphrase", args: []string{"ca", "init", "--dir", t.TempDir(), "--passphrase-file", writeFile(t, "short\n")}, wantErr: "at least 8"},
		{name: "init empty passphrase file", args: []string{"ca", "init", "--dir", t.TempDir(), "--passphrase-file", writeFile(t, "\n")}, wantErr: "is empty"},
		{name: "init empty passphrase variable", args: []string{"ca", "init", "--dir", t.TempDir(), "--passphrase-env", "EMPTY"}, wantErr: "EMPTY is empty"},
		{name: "init both passphrase sources", args: []string{"ca", "init", "--dir", t.TempDir(), "--passphrase-env", "P", "--passphrase-file", "x"}, wantErr: "none of the others can be"},
		{name: "init bad key type", args: []string{"ca", "init", "--dir", t.TempDir(), "--key-type", "rsa"}, wantErr: `--key-type: key type "rsa"`},
		{name: "init bad lifetime", args: []string{"ca", "init", "--dir", t.TempDir(), "--lifetime", "-1h"}, wantErr: "must be positive"},
		{name: "show missing CA", args: []string{"ca", "show", "--dir", t.TempDir()}, wantErr: "provision ca init"},
		{name: "issue without passphrase for encrypted CA", args: append([]string{"ca", "issue-node", "--dir", existing, "--name", "n"}, out("a")...), wantErr: "--passphrase-file FILE or --passphrase-env VAR"},
		{name: "issue wrong passphrase", args: append([]string{"ca", "issue-node", "--dir", existing, "--name", "n", "--passphrase-file", writeFile(t, "wrong passphrase")}, out("b")...), wantErr: "wrong passphrase"},
		{name: "issue with insecure key", args: append([]string{"ca", "issue-node", "--dir", insecure, "--name", "n"}, out("c")...), wantErr: "chmod 600"},
		{name: "issue bad IP", args: append([]string{"ca", "issue-node", "--dir", plain, "--name", "n", "--ip", "10.0.0.300"}, out("d")...), wantErr: `--ip "10.0.0.300"`},
		{name: "issue bad DNS", args: append([]string{"ca", "issue-node", "--dir", plain, "--name", "n", "--dns", "a b"}, out("e")...), wantErr: `DNS name "a b"`},
		{name: "issue same output twice", args: []string{"ca", "issue-node", "--dir", plain, "--name", "n", "--out-cert", "x.pem", "--out-key", "./x.pem"}, wantErr: "two different files"},
		{name: "issue missing flags", args: []string{"ca", "issue-node", "--dir", plain}, wantErr: "required flag(s)"},
		{name: "stray argument", args: []string{"ca", "show", "--dir", plain, "extra"}, wantErr: "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := execute(env, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
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
	if got := info.Mode().Perm(); got != want {
		t.Errorf("%s mode = %v, want %v", path, got, want)
	}
}
