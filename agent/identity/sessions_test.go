package identity

import (
	"crypto/tls"
	"testing"
)

// A session ticket survives failed handshakes (a storm's timeouts) until
// evictAfter of them in a row; a new session resets the count; a flush
// drops everything.
func TestSessionCacheKeepsTicketsThroughFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		puts []bool // true: a new session, false: an eviction by crypto/tls
		kept bool
	}{
		{"one failure", []bool{true, false}, true},
		{"failures below the limit", []bool{true, false, false}, true},
		{"failures at the limit", []bool{true, false, false, false}, false},
		{"a success resets the count", []bool{true, false, false, true, false, false}, true},
		{"failures then a new ticket", []bool{true, false, false, false, true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newSessionCache()
			for _, fresh := range tc.puts {
				if fresh {
					c.Put("k", &tls.ClientSessionState{})
				} else {
					c.Put("k", nil)
				}
			}
			if _, ok := c.Get("k"); ok != tc.kept {
				t.Fatalf("ticket kept = %v, want %v after %v", ok, tc.kept, tc.puts)
			}
		})
	}
	c := newSessionCache()
	c.Put("k", &tls.ClientSessionState{})
	c.Put("k", nil)
	c.flush()
	if _, ok := c.Get("k"); ok {
		t.Fatal("flush kept a ticket")
	}
	c.Put("k", &tls.ClientSessionState{})
	c.Put("k", nil)
	c.Put("k", nil)
	if _, ok := c.Get("k"); !ok {
		t.Fatal("failure count survived the flush")
	}
}
