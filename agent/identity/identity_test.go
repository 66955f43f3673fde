package identity_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/internal/pkitest"
	"github.com/lekiwi/heartbeat/protocol"
)

// saved makes a robot identity directly from the CA and saves it in a
// fresh directory.
func saved(t *testing.T, ca *pkitest.CA, lifetime time.Duration) (*identity.Identity, string) {
	t.Helper()
	keyPEM, certPEM := ca.Issue(t, robot, time.Now().Add(-time.Minute), lifetime)
	id, err := identity.FromPEM(keyPEM, certPEM, ca.PEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), identity.DirName)
	if err := id.Save(dir); err != nil {
		t.Fatal(err)
	}
	return id, dir
}

func write(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadErrors(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	otherCA := pkitest.NewCA(t, "another fleet")
	keyPEM, certPEM := ca.Issue(t, robot, time.Now(), time.Hour)
	key2PEM, _ := ca.Issue(t, robot, time.Now(), time.Hour)
	key3, csr, err := identity.NewKeyAndCSR(robot)
	if err != nil {
		t.Fatal(err)
	}
	key3DER, _ := x509.MarshalPKCS8PrivateKey(key3)
	key3PEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key3DER})
	foreignCert := sign(t, otherCA, csr, robot, time.Now(), time.Hour)
	tests := []struct {
		name  string
		files map[string][]byte // nil value: file absent
		is    error
		want  string
	}{
		{name: "no directory", files: nil, is: identity.ErrNotFound, want: "has to enroll"},
		{name: "empty directory", files: map[string][]byte{}, is: identity.ErrNotFound, want: "has to enroll"},
		{name: "only the CA", files: map[string][]byte{"ca.pem": ca.PEM}, is: identity.ErrNotFound},
		{name: "half-written key", files: map[string][]byte{"ca.pem": ca.PEM, "key.pem": keyPEM[:40], "cert.pem": certPEM}, is: identity.ErrCorrupt, want: "key"},
		{name: "garbage certificate", files: map[string][]byte{"ca.pem": ca.PEM, "key.pem": keyPEM, "cert.pem": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")}, is: identity.ErrCorrupt},
		{name: "certificate missing", files: map[string][]byte{"ca.pem": ca.PEM, "key.pem": keyPEM}, is: identity.ErrCorrupt, want: "cert.pem is missing"},
		{name: "key missing", files: map[string][]byte{"ca.pem": ca.PEM, "cert.pem": certPEM}, is: identity.ErrCorrupt, want: "key.pem is missing"},
		{name: "CA missing", files: map[string][]byte{"key.pem": keyPEM, "cert.pem": certPEM}, is: identity.ErrCorrupt, want: "ca.pem is missing"},
		{name: "certificate for another key", files: map[string][]byte{"ca.pem": ca.PEM, "key.pem": key2PEM, "cert.pem": certPEM}, is: identity.ErrMismatch, want: "not for this key"},
		{name: "certificate from another CA", files: map[string][]byte{"ca.pem": ca.PEM, "key.pem": key3PEM, "cert.pem": foreignCert}, is: identity.ErrMismatch, want: "fleet CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "identity")
			if tt.files != nil {
				os.Mkdir(dir, 0o700)
				for name, b := range tt.files {
					write(t, dir, name, b)
				}
			}
			_, err := identity.Load(dir)
			if !errors.Is(err, tt.is) {
				t.Fatalf("Load = %v, want %v", err, tt.is)
			}
			for _, other := range []error{identity.ErrNotFound, identity.ErrCorrupt, identity.ErrMismatch} {
				if other != tt.is && errors.Is(err, other) {
					t.Fatalf("Load = %v: also %v", err, other)
				}
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Load = %v, want it to name %s and say %q", err, dir, tt.want)
			}
			if tt.is != identity.ErrNotFound && !strings.Contains(err.Error(), "enroll again") {
				t.Fatalf("Load = %v: does not say what to do", err)
			}
		})
	}
}

// TestLoadAfterPowerCut: whatever moment of a save a power cut hits, Load
// returns a key and certificate that belong together — the new pair if it
// was completely staged, else the old one — and tidies up.
func TestLoadAfterPowerCut(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	newKey, newCert := ca.Issue(t, robot, time.Now(), time.Hour)
	tests := []struct {
		name    string
		crash   func(t *testing.T, dir string)
		wantNew bool
	}{
		{name: "leftover temporary files", crash: func(t *testing.T, dir string) {
			write(t, dir, ".key.pem.tmp-1234", newKey[:30])
			write(t, dir, ".cert.pem.tmp-99", nil)
		}},
		{name: "key staged, certificate not yet", crash: func(t *testing.T, dir string) {
			write(t, dir, "key.pem.new", newKey)
			write(t, dir, ".cert.pem.new.tmp-5", newCert[:100])
		}},
		{name: "both staged, switch not started", wantNew: true, crash: func(t *testing.T, dir string) {
			write(t, dir, "key.pem.new", newKey)
			write(t, dir, "cert.pem.new", newCert)
		}},
		{name: "key switched, certificate staged", wantNew: true, crash: func(t *testing.T, dir string) {
			write(t, dir, "key.pem", newKey)
			write(t, dir, "cert.pem.new", newCert)
		}},
		{name: "garbage staged files are ignored", crash: func(t *testing.T, dir string) {
			write(t, dir, "key.pem.new", []byte("junk"))
			write(t, dir, "cert.pem.new", newCert)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, dir := saved(t, ca, time.Hour)
			tt.crash(t, dir)
			id, err := identity.Load(dir)
			if err != nil {
				t.Fatalf("Load after the crash: %v", err)
			}
			want := old.Certificate()
			if tt.wantNew {
				want, _ = x509.ParseCertificate(mustPEM(t, newCert))
			}
			if id.Certificate().SerialNumber.Cmp(want.SerialNumber) != 0 {
				t.Fatalf("Load chose serial %x, want %x", id.Certificate().SerialNumber, want.SerialNumber)
			}
			entries, _ := os.ReadDir(dir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if strings.Join(names, " ") != "ca.pem cert.pem key.pem" {
				t.Fatalf("after Load the directory holds %v, want only ca.pem cert.pem key.pem", names)
			}
			// And it stays loadable the same way.
			if again, err := identity.Load(dir); err != nil || again.Certificate().SerialNumber.Cmp(want.SerialNumber) != 0 {
				t.Fatalf("second Load: %v", err)
			}
		})
	}
}

func mustPEM(t *testing.T, b []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("no PEM")
	}
	return block.Bytes
}

func TestNeedsRenewal(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	keyPEM, certPEM := ca.Issue(t, robot, nb, 90*24*time.Hour)
	id, err := identity.FromPEM(keyPEM, certPEM, ca.PEM)
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	for _, tt := range []struct {
		at   time.Duration
		want bool
	}{
		{0, false}, {30 * day, false}, {60*day - time.Second, false}, {60 * day, true}, {89 * day, true}, {100 * day, true},
	} {
		if got := id.NeedsRenewal(nb.Add(tt.at)); got != tt.want {
			t.Errorf("NeedsRenewal(NotBefore+%v) = %v, want %v", tt.at, got, tt.want)
		}
	}
}

func TestTLSConfig(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	id, _ := saved(t, ca, time.Hour)
	c := id.TLSConfig()
	if c.MinVersion != tls.VersionTLS13 || c.ClientSessionCache == nil || c.GetClientCertificate == nil || !c.RootCAs.Equal(ca.Pool) || c.InsecureSkipVerify {
		t.Fatalf("TLSConfig = %+v", c)
	}
	cert, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || cert.Leaf.SerialNumber.Cmp(id.Certificate().SerialNumber) != 0 {
		t.Fatalf("GetClientCertificate = %v, %v", cert, err)
	}
}

// TestRenewalOverMTLS: a reconnect resumes the TLS session; after Install
// the next connection is a full handshake presenting the new certificate
// for the new key, which is also what a restart loads.
func TestRenewalOverMTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	ctl := pkitest.NewControl(t, ca, pkitest.Options{RequireClientCert: true})
	id, dir := saved(t, ca, time.Hour)
	oldSerial := id.Certificate().SerialNumber
	oldKey := read(t, dir, identity.KeyFile)

	dial(t, id, wss(ctl))
	dial(t, id, wss(ctl))
	conns := waitConns(t, ctl, 2)
	if conns[0].Resumed || !conns[1].Resumed {
		t.Fatalf("connections %+v: want a full handshake, then a resumed one", conns)
	}

	csr1, err := id.RenewalCSR()
	if err != nil {
		t.Fatal(err)
	}
	csr2, _ := id.RenewalCSR()
	if !bytes.Equal(csrKey(t, csr1), csrKey(t, csr2)) {
		t.Fatal("a second RenewalCSR before Install changed the pending key")
	}
	certPEM, cert, err := ca.SignCSR(csr1, robot, time.Now().Add(-time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Handshakes keep reading the certificate while it is swapped.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				if c, _ := id.TLSConfig().GetClientCertificate(nil); c == nil || c.Leaf == nil {
					t.Error("no client certificate during the swap")
					return
				}
			}
		}
	}()
	err = id.Install(protocol.Certificate{Certificate: string(certPEM), CACertificate: string(ca.PEM), NotAfter: cert.NotAfter})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if id.Certificate().SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Fatal("Install did not make the new certificate current")
	}
	if bytes.Equal(read(t, dir, identity.KeyFile), oldKey) || !bytes.Equal(read(t, dir, identity.CertFile), certPEM) {
		t.Fatal("Install did not save the new key and certificate")
	}

	dial(t, id, wss(ctl))
	conns = waitConns(t, ctl, 3)
	if conns[2].Resumed || conns[2].Serial.Cmp(cert.SerialNumber) != 0 || conns[2].Serial.Cmp(oldSerial) == 0 {
		t.Fatalf("after Install control saw serial %x (resumed %v), want the new %x in a full handshake", conns[2].Serial, conns[2].Resumed, cert.SerialNumber)
	}
	loaded, err := identity.Load(dir)
	if err != nil || loaded.Certificate().SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Fatalf("Load after Install: %v", err)
	}
	if _, err := id.RenewalCSR(); err != nil {
		t.Fatal(err)
	}
	if err := id.Install(protocol.Certificate{Certificate: string(certPEM)}); !errors.Is(err, identity.ErrMismatch) {
		t.Fatalf("installing the same certificate for a newer pending key = %v, want ErrMismatch", err)
	}
}

func csrKey(t *testing.T, csrPEM []byte) []byte {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(mustPEM(t, csrPEM))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := x509.MarshalPKIXPublicKey(csr.PublicKey)
	return b
}

func TestInstallRefuses(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	otherCA := pkitest.NewCA(t, "another fleet")
	tests := []struct {
		name    string
		noCSR   bool
		cert    func(t *testing.T, csr []byte) []byte
		is      error
		wantMsg string
	}{
		{name: "nothing pending", noCSR: true, cert: func(t *testing.T, _ []byte) []byte {
			_, c := ca.Issue(t, robot, time.Now(), time.Hour)
			return c
		}, wantMsg: "no renewal is pending"},
		{name: "another key", cert: func(t *testing.T, _ []byte) []byte {
			_, c := ca.Issue(t, robot, time.Now(), time.Hour)
			return c
		}, is: identity.ErrMismatch, wantMsg: "not for this key"},
		{name: "another robot", cert: func(t *testing.T, csr []byte) []byte { return sign(t, ca, csr, "lekiwi-8", time.Now(), time.Hour) }, is: identity.ErrMismatch, wantMsg: `names robot "lekiwi-8"`},
		{name: "another CA", cert: func(t *testing.T, csr []byte) []byte { return sign(t, otherCA, csr, robot, time.Now(), time.Hour) }, is: identity.ErrMismatch, wantMsg: "fleet CA"},
		{name: "expired", cert: func(t *testing.T, csr []byte) []byte {
			return sign(t, ca, csr, robot, time.Now().Add(-2*time.Hour), time.Hour)
		}, is: identity.ErrMismatch, wantMsg: "expired"},
		{name: "not a certificate", cert: func(*testing.T, []byte) []byte {
			return []byte("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
		}, is: identity.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, dir := saved(t, ca, time.Hour)
			before := id.Certificate()
			keyBefore, certBefore := read(t, dir, identity.KeyFile), read(t, dir, identity.CertFile)
			var csr []byte
			if !tt.noCSR {
				var err error
				if csr, err = id.RenewalCSR(); err != nil {
					t.Fatal(err)
				}
			}
			err := id.Install(protocol.Certificate{Certificate: string(tt.cert(t, csr))})
			if err == nil {
				t.Fatal("Install accepted it")
			}
			if (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Install = %v, want %v saying %q", err, tt.is, tt.wantMsg)
			}
			if id.Certificate() != before {
				t.Fatal("a refused certificate became current")
			}
			if !bytes.Equal(read(t, dir, identity.KeyFile), keyBefore) || !bytes.Equal(read(t, dir, identity.CertFile), certBefore) {
				t.Fatal("a refused certificate changed the files")
			}
		})
	}
}

func sign(t *testing.T, ca *pkitest.CA, csr []byte, robotID string, nb time.Time, life time.Duration) []byte {
	t.Helper()
	c, _, err := ca.SignCSR(csr, robotID, nb, life)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFromPEMAcceptsOnlyRobotCertificates(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet CA")
	keyPEM, certPEM := ca.Issue(t, robot, time.Now(), time.Hour)
	if _, err := identity.FromPEM(keyPEM, certPEM, certPEM); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("FromPEM with a leaf as CA = %v", err)
	}
	// The CA's own certificate has no robot URI SAN.
	caKey, _ := x509.MarshalPKCS8PrivateKey(ca.Key)
	_, err := identity.FromPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey}), ca.PEM, ca.PEM)
	if !errors.Is(err, identity.ErrMismatch) || !strings.Contains(err.Error(), "not a robot certificate") {
		t.Fatalf("FromPEM with the CA certificate = %v", err)
	}
	// An expired identity still loads, so the daemon can say it expired.
	keyPEM, certPEM = ca.Issue(t, robot, time.Now().Add(-48*time.Hour), time.Hour)
	id, err := identity.FromPEM(keyPEM, certPEM, ca.PEM)
	if err != nil || !id.NeedsRenewal(time.Now()) {
		t.Fatalf("expired identity: %v", err)
	}
}
