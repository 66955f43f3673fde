package node

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/control/store"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Members of a cluster talk mutual TLS with node certificates; a member
// with a certificate from another CA cannot join.
func TestPeerTLSClusterAndForeignNode(t *testing.T) {
	ca, _ := pki.Create(pki.CreateOptions{Name: "fleet", KeyType: pki.KeyECDSAP256})
	other, _ := pki.Create(pki.CreateOptions{Name: "fleet", KeyType: pki.KeyECDSAP256})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	open := func(ca *pki.CA, dir, addr string, join []string, timeout time.Duration) (*store.Store, error) {
		l, d, err := peerTLS(ca, addr, addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return store.Open(ctx, store.Options{Dir: dir, Address: addr, Join: join, ListenTLS: l, DialTLS: d, Logger: log, RolesAdjustment: 200 * time.Millisecond})
	}
	base := t.TempDir()
	a1, a2, a3 := freeAddr(t), freeAddr(t), freeAddr(t)
	n1, err := open(ca, filepath.Join(base, "1"), a1, nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer n1.Close()
	n2, err := open(ca, filepath.Join(base, "2"), a2, []string{a1}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if _, err := open(other, filepath.Join(base, "3"), a3, []string{a1}, 3*time.Second); err == nil {
		t.Fatal("a node with a foreign CA joined the cluster")
	}
}

// The first node of every cluster has the same dqlite id; with peer TLS
// go-dqlite names its local socket after that id, so two clusters in one
// network namespace used to collide. Two first nodes, same process.
func TestTwoTLSClustersShareANetworkNamespace(t *testing.T) {
	ca, _ := pki.Create(pki.CreateOptions{Name: "fleet", KeyType: pki.KeyECDSAP256})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	for i := range 2 {
		addr := freeAddr(t)
		l, d, err := peerTLS(ca, addr, addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := store.Open(ctx, store.Options{Dir: filepath.Join(t.TempDir(), "n"), Address: addr, ListenTLS: l, DialTLS: d, Logger: log})
		cancel()
		if err != nil {
			t.Fatalf("first node of cluster %d: %v", i+1, err)
		}
		defer s.Close()
		if err := s.Ping(context.Background()); err != nil {
			t.Fatalf("cluster %d: %v", i+1, err)
		}
	}
	if v, ok := os.LookupEnv("SNAP_INSTANCE_NAME"); ok {
		t.Fatalf("SNAP_INSTANCE_NAME left set to %q", v)
	}
}
