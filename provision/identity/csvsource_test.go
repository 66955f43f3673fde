package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/profiles"
)

// robotCert makes a certificate and key naming robotID the way control's
// CA does (CN and one lekiwi://robot/<id> URI), valid until notAfter.
func robotCert(t *testing.T, robotID string, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: robotID},
		NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter,
		URIs:        []*url.URL{{Scheme: "lekiwi", Host: "robot", Path: "/" + robotID}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// batch writes a batch file with two token rows and one certificate row.
func batch(t *testing.T) (path string, cert, key []byte) {
	t.Helper()
	dir := t.TempDir()
	cert, key = robotCert(t, "kiwi-3", time.Now().Add(24*time.Hour))
	write(t, filepath.Join(dir, "certs", "kiwi-3.crt"), cert)
	write(t, filepath.Join(dir, "certs", "kiwi-3.key"), key)
	path = filepath.Join(dir, "batch.csv")
	write(t, path, []byte("robot_id,hostname,enroll_token,cert,key\nkiwi-1,,lke_one,,\nkiwi-2,bench-2,lke_two,,\nkiwi-3,,,certs/kiwi-3.crt,certs/kiwi-3.key\n"))
	return path, cert, key
}

func TestCSVHandsOutEachRowOnceAcrossRuns(t *testing.T) {
	ctx := context.Background()
	path, cert, key := batch(t)
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	src, err := OpenCSV(path, CSVOptions{CAPEM: []byte("CA"), Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	if src.Remaining() != 3 {
		t.Fatalf("remaining %d, want 3", src.Remaining())
	}
	r1, err := src.Next(ctx, "/dev/sdb")
	if err != nil {
		t.Fatal(err)
	}
	// lekiwi-{serial} needs a serial nobody knows yet: the id is the name.
	if r1.RobotID != "kiwi-1" || r1.EnrollToken != "lke_one" || r1.Hostname != "kiwi-1" || string(r1.CAPEM) != "CA" || r1.CertPEM != nil {
		t.Fatalf("first identity %+v", r1)
	}
	r2, err := src.Next(ctx, "/dev/sdc")
	if err != nil {
		t.Fatal(err)
	}
	if r2.RobotID != "kiwi-2" || r2.Hostname != "bench-2" {
		t.Fatalf("second identity %+v", r2)
	}
	if err := src.Finish("kiwi-1", "/dev/sdb", nil); err != nil {
		t.Fatal(err)
	}
	if err := src.Finish("kiwi-2", "/dev/sdc", errors.New("verify failed at offset 4096\nsecond line")); err != nil {
		t.Fatal(err)
	}
	if err := src.Finish("kiwi-2", "/dev/sdc", nil); err == nil {
		t.Error("finished kiwi-2 twice")
	}
	if err := src.Finish("kiwi-3", "/dev/sdd", nil); err == nil {
		t.Error("finished kiwi-3, which was never handed out")
	}
	src.Close()

	// The next run: kiwi-1 is on a good card, kiwi-2 on a failed one —
	// neither comes back; kiwi-2 is reported.
	src, err = OpenCSV(path, CSVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if u := src.Unfinished(); len(u) != 1 || u[0].RobotID != "kiwi-2" || u[0].Event != EventFailed || u[0].Target != "/dev/sdc" || !strings.Contains(u[0].Detail, "offset 4096 second line") {
		t.Fatalf("unfinished %+v", u)
	}
	r3, err := src.Next(ctx, "/dev/sdb")
	if err != nil {
		t.Fatal(err)
	}
	if r3.RobotID != "kiwi-3" || string(r3.CertPEM) != string(cert) || string(r3.KeyPEM) != string(key) || r3.EnrollToken != "" || r3.CAPEM != nil {
		t.Fatalf("third identity %+v", r3)
	}
	if _, err := src.Next(ctx, "/dev/sdc"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("past the end: %v, want ErrExhausted", err)
	}
	// kiwi-3 is journaled as issued though never finished (a crash).
	src.Close()

	// Wiped cards: the failed and the unfinished come back on request.
	src, err = OpenCSV(path, CSVOptions{ReissueFailed: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		r, err := src.Next(ctx, "/dev/sde")
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.RobotID)
	}
	if strings.Join(got, ",") != "kiwi-2,kiwi-3" {
		t.Fatalf("reissued %v, want kiwi-2,kiwi-3", got)
	}
	src.Close()
	recs := readJournal(t, path+JournalSuffix)
	if len(recs) != 7 {
		t.Fatalf("journal has %d records, want 7: %+v", len(recs), recs)
	}
}

func readJournal(t *testing.T, path string) []Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ParseJournal(b)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestCSVChecksFilesBeforeAnyCard(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		err   string
	}{
		{"missing key file", func(t *testing.T, dir string) {
			c, _ := robotCert(t, "kiwi-1", now.Add(time.Hour))
			write(t, filepath.Join(dir, "c.pem"), c)
		}, "line 2: robot kiwi-1: key file"},
		{"key of another certificate", func(t *testing.T, dir string) {
			c, _ := robotCert(t, "kiwi-1", now.Add(time.Hour))
			_, k := robotCert(t, "kiwi-1", now.Add(time.Hour))
			write(t, filepath.Join(dir, "c.pem"), c)
			write(t, filepath.Join(dir, "k.pem"), k)
		}, "line 2: robot kiwi-1: c.pem, k.pem: certificate and key"},
		{"certificate of another robot", func(t *testing.T, dir string) {
			c, k := robotCert(t, "kiwi-9", now.Add(time.Hour))
			write(t, filepath.Join(dir, "c.pem"), c)
			write(t, filepath.Join(dir, "k.pem"), k)
		}, "certificate names robot kiwi-9, not kiwi-1"},
		{"expired certificate", func(t *testing.T, dir string) {
			c, k := robotCert(t, "kiwi-1", now.Add(-time.Hour))
			write(t, filepath.Join(dir, "c.pem"), c)
			write(t, filepath.Join(dir, "k.pem"), k)
		}, "certificate expired on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			path := filepath.Join(dir, "b.csv")
			write(t, path, []byte("robot_id,cert,key\nkiwi-1,c.pem,k.pem\n"))
			_, err := OpenCSV(path, CSVOptions{Now: func() time.Time { return now }})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestCSVConcurrentCardsGetDistinctRows(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("robot_id,enroll_token\n")
	const n = 40
	for i := range n {
		b.WriteString("kiwi-" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ",lke_" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "\n")
	}
	path := filepath.Join(dir, "b.csv")
	write(t, path, []byte(b.String()))
	src, err := OpenCSV(path, CSVOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ids := make(chan string, n+8)
	errs := make(chan error, n+8)
	for i := range n + 8 {
		go func() {
			r, err := src.Next(context.Background(), "/dev/card"+string(rune('a'+i%26)))
			if err != nil {
				errs <- err
				return
			}
			ids <- r.RobotID
		}()
	}
	seen := map[string]bool{}
	exhausted := 0
	for range n + 8 {
		select {
		case id := <-ids:
			if seen[id] {
				t.Fatalf("%s handed out twice", id)
			}
			seen[id] = true
		case err := <-errs:
			if !errors.Is(err, ErrExhausted) {
				t.Fatal(err)
			}
			exhausted++
		case <-time.After(10 * time.Second):
			t.Fatal("Next hangs")
		}
	}
	if len(seen) != n || exhausted != 8 {
		t.Fatalf("%d distinct identities and %d exhausted, want %d and 8", len(seen), exhausted, n)
	}
	if recs := readJournal(t, path+JournalSuffix); len(recs) != n {
		t.Fatalf("journal has %d records, want %d", len(recs), n)
	}
}
