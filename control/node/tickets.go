package node

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/control/pki"
)

// ticketPeriod is how long one session-ticket key is current. Tickets stay
// valid one more period, so a robot resumes for up to two days.
const ticketPeriod = 24 * time.Hour

// ticketKeys derives TLS 1.3 session-ticket keys from the fleet CA's
// private key and the period number. Every control node holds the CA, so
// every node derives the same keys: a robot resumes its TLS session on any
// node and across restarts, which is what turns a reconnect storm after a
// node restart into cheap resumptions instead of 5,000 full handshakes.
// The first key encrypts new tickets; both decrypt.
func ticketKeys(ca *pki.CA, now time.Time) ([][32]byte, error) {
	secret, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("session ticket keys: %w", err)
	}
	period := now.Unix() / int64(ticketPeriod/time.Second)
	var keys [][32]byte
	for _, p := range []int64{period, period - 1} {
		b, err := hkdf.Key(sha256.New, secret, nil, fmt.Sprintf("lekiwi control session tickets %d", p), 32)
		if err != nil {
			return nil, fmt.Errorf("session ticket keys: %w", err)
		}
		keys = append(keys, [32]byte(b))
	}
	return keys, nil
}

// rotateTicketKeys installs the HTTPS server's session-ticket keys now,
// and runs a component that installs the next ones at every period
// boundary (nothing to do in --insecure mode).
func (n *Node) rotateTicketKeys(ctx context.Context) error {
	cfg := n.server.TLSConfig
	if cfg == nil {
		return nil
	}
	set := func() error {
		keys, err := ticketKeys(n.ca, time.Now())
		if err != nil {
			return err
		}
		cfg.SetSessionTicketKeys(keys)
		return nil
	}
	if err := set(); err != nil {
		return err
	}
	n.run(ctx, func(ctx context.Context) error {
		for {
			next := time.Now().Truncate(ticketPeriod).Add(ticketPeriod)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Until(next) + time.Second):
			}
			if err := set(); err != nil {
				n.log.Error("session ticket key rotation failed; resumption keeps the old keys", "err", err)
			}
		}
	})
	return nil
}
