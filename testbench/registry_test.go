package testbench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/testbench/lab"
)

// status is the HTTP status of a registry error, 0 if err is not one.
func status(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}

// TestControlRegistry pushes and pulls a disk image through a real control
// node's embedded registry, over HTTPS with the fleet CA, with tokens.
func TestControlRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := t.TempDir()
	n, err := lab.StartControl(ctx, lab.ControlOptions{Dir: filepath.Join(base, "node")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	token := func(role auth.Role) string {
		id, secret, full := auth.NewToken()
		if err := n.Store().CreateToken(ctx, store.TokenData{ID: id, Name: string(role), Role: role, Hash: auth.HashSecret(secret)}, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		return full
	}
	pool := x509.NewCertPool()
	pool.AddCert(n.CA().Cert)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	host := strings.TrimPrefix(n.URL(), "https://")
	ref := host + "/lekiwi/image:1.0.0"

	img := filepath.Join(base, "robot.img")
	d, err := diskfs.Create(img, 8<<20, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Partition(&gpt.Table{LogicalSectorSize: 512, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 14335, Type: gpt.LinuxFilesystem, Name: "system_a"}}}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte("robot"), 50000), 2<<20)
	f.Close()

	opts := func(tok string) ociart.Options {
		o := ociart.Options{Transport: tr, Auth: authn.Anonymous}
		if tok != "" {
			o.Auth = authn.FromConfig(authn.AuthConfig{RegistryToken: tok})
		}
		return o
	}
	meta := ociart.Meta{Profile: "lekiwi", Version: "1.0.0"}
	if _, err := ociart.Push(ctx, img, ref, meta, opts("")); status(err) != http.StatusUnauthorized {
		t.Errorf("push without a token: %v, want 401", err)
	}
	if _, err := ociart.Push(ctx, img, ref, meta, opts(token(auth.RoleOperator))); status(err) != http.StatusForbidden {
		t.Errorf("push with an operator token: %v, want 403", err)
	}
	if _, err := ociart.Push(ctx, img, ref, meta, opts(token(auth.RoleEngineer))); err != nil {
		t.Fatalf("push with an engineer token: %v", err)
	}
	out := filepath.Join(base, "pulled.img")
	if _, err := ociart.Pull(ctx, ref, out, opts(token(auth.RoleOperator))); err != nil {
		t.Fatalf("pull with an operator token: %v", err)
	}
	a, _ := os.ReadFile(img)
	b, _ := os.ReadFile(out)
	if !bytes.Equal(a, b) {
		t.Fatal("image pulled through control differs")
	}
	if _, err := ociart.Pull(ctx, ref, out+"2", opts("")); status(err) != http.StatusUnauthorized {
		t.Errorf("pull without credentials: %v, want 401", err)
	}
}
