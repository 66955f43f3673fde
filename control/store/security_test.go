package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
)

func TestTokensLifecycle(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	if err := s.CreateToken(ctx, TokenData{ID: "t1", Name: "alice", Role: auth.RoleEngineer, Hash: "h1", ExpiresAt: t0.Add(time.Hour)}, "local:admin", t0); err != nil {
		t.Fatal(err)
	}
	r, err := s.LookupToken(ctx, "t1")
	if err != nil || r.Name != "alice" || r.Role != auth.RoleEngineer || r.Hash != "h1" || !r.ExpiresAt.Equal(t0.Add(time.Hour)) || !r.RevokedAt.IsZero() {
		t.Fatalf("lookup %+v, %v", r, err)
	}
	if _, err := s.LookupToken(ctx, "nope"); !errors.Is(err, auth.ErrInvalid) {
		t.Fatalf("unknown token: %v", err)
	}
	if err := s.RevokeToken(ctx, "t1", "local:admin", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, "nope", "local:admin", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	list, err := s.Tokens(ctx)
	if err != nil || len(list) != 1 || list[0].RevokedAt.IsZero() || list[0].Hash != "" {
		t.Fatalf("tokens %+v, %v", list, err)
	}
	evs, _ := s.Events(ctx, 0, 10, "")
	if len(evs) != 2 || evs[0].Actor != "local:admin" || evs[1].Type != TypeTokenRevoked {
		t.Fatalf("audit trail %+v", evs)
	}
}

func signer(serial string) SignFunc {
	return func(robotID string) (CertInfo, error) {
		return CertInfo{Serial: serial, Fingerprint: "fp-" + serial, NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)}, nil
	}
}

func TestEnrollmentTokenIsSingleUseEvenUnderRace(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	if err := s.CreateEnrollment(ctx, "kiwi-7", "hash-a", t0.Add(time.Hour), "local:admin", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateEnrollment(ctx, "kiwi-8", "hash-old", t0.Add(time.Minute), "local:admin", t0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, results[i] = s.ConsumeEnrollment(ctx, "hash-a", t0.Add(time.Minute), signer(fmt.Sprint("s", i)))
		}()
	}
	wg.Wait()
	ok, used := 0, 0
	for _, err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrTokenUsed):
			used++
		default:
			t.Fatalf("unexpected %v", err)
		}
	}
	if ok != 1 || used != 7 {
		t.Fatalf("%d enrollments succeeded and %d were refused as used, want 1 and 7", ok, used)
	}
	if _, _, err := s.ConsumeEnrollment(ctx, "hash-old", t0.Add(2*time.Minute), signer("x")); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired token: %v", err)
	}
	if _, _, err := s.ConsumeEnrollment(ctx, "hash-none", t0, signer("y")); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("unknown token: %v", err)
	}
	r, err := s.Robot(ctx, "kiwi-7")
	if err != nil || r.Certificate == nil || r.Revoked {
		t.Fatalf("enrolled robot %+v, %v", r, err)
	}
	if _, err := s.Robot(ctx, "kiwi-8"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a robot that never enrolled must not appear: %v", err)
	}
}

func TestRevokeRobotAndRebuildSecurityTables(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	s.CreateEnrollment(ctx, "kiwi-1", "h1", t0.Add(time.Hour), "a", t0)
	if _, _, err := s.ConsumeEnrollment(ctx, "h1", t0, signer("aa")); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCertificate(ctx, "kiwi-1", CertInfo{Serial: "bb", NotBefore: t0, NotAfter: t0.Add(time.Hour)}, t0); err != nil {
		t.Fatal(err)
	}
	serials, err := s.RevokeRobot(ctx, "kiwi-1", "stolen", "token:alice", t0.Add(time.Minute))
	if err != nil || fmt.Sprint(serials) != "[aa bb]" {
		t.Fatalf("revoked %v, %v", serials, err)
	}
	if _, err := s.RevokeRobot(ctx, "ghost", "", "a", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown robot: %v", err)
	}
	revoked, err := s.RevokedSerials(ctx, t0.Add(2*time.Minute))
	if err != nil || fmt.Sprint(revoked) != "[aa bb]" {
		t.Fatalf("revoked serials %v, %v", revoked, err)
	}
	// After bb expires only aa is still worth checking.
	if revoked, _ = s.RevokedSerials(ctx, t0.Add(2*time.Hour)); fmt.Sprint(revoked) != "[aa]" {
		t.Fatalf("revoked serials after expiry %v", revoked)
	}
	r, _ := s.Robot(ctx, "kiwi-1")
	if !r.Revoked || r.Certificate.Serial != "bb" {
		t.Fatalf("robot %+v", r)
	}
	if _, err := s.RebuildInPlace(ctx); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.RevokedSerials(ctx, t0.Add(2*time.Minute)); fmt.Sprint(again) != "[aa bb]" {
		t.Fatalf("after rebuild revoked serials %v", again)
	}
	if _, _, err := s.ConsumeEnrollment(ctx, "h1", t0, signer("cc")); !errors.Is(err, ErrTokenUsed) {
		t.Fatalf("rebuild forgot the token was used: %v", err)
	}
}
