package node

import (
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

func TestTicketKeysAreSharedPerCAAndRotate(t *testing.T) {
	ca1, err := pki.Create(pki.CreateOptions{Name: "a", KeyType: pki.KeyECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pki.Create(pki.CreateOptions{Name: "b", KeyType: pki.KeyEd25519})
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	k1, err := ticketKeys(ca1, day)
	if err != nil || len(k1) != 2 {
		t.Fatalf("keys %d, %v", len(k1), err)
	}
	// Two nodes with the same CA derive the same keys (same period).
	again, _ := ticketKeys(ca1, day.Add(time.Hour))
	if again[0] != k1[0] || again[1] != k1[1] {
		t.Fatal("same CA, same period, different keys")
	}
	// Another fleet's CA shares nothing.
	other, _ := ticketKeys(ca2, day)
	if other[0] == k1[0] {
		t.Fatal("different CAs derived the same ticket key")
	}
	// Next period: a new current key; the old one still decrypts.
	next, _ := ticketKeys(ca1, day.Add(ticketPeriod))
	if next[0] == k1[0] || next[1] != k1[0] {
		t.Fatal("rotation does not keep the previous key for decryption")
	}
}
