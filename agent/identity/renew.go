package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// NeedsRenewal reports whether the current certificate is due for renewal
// at now: once two thirds of its lifetime (NotBefore to NotAfter) have
// passed — day 60 of a 90-day certificate — leaving a month to get it done.
func (i *Identity) NeedsRenewal(now time.Time) bool {
	i.mu.Lock()
	leaf := i.leaf
	i.mu.Unlock()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return !now.Before(leaf.NotBefore.Add(life / 3 * 2))
}

// RenewalCSR returns a certificate signing request for a new key, which is
// kept in memory until Install receives its certificate. Until then every
// call returns a request for the same pending key, so a late answer to an
// earlier request still installs.
func (i *Identity) RenewalCSR() ([]byte, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.pending == nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate renewal key: %w", err)
		}
		i.pending = key
	}
	return csrFor(i.pending, i.robotID)
}

// Install makes a renewed certificate current. It must be for the key of
// the last RenewalCSR, name this robot, chain to the fleet CA and be valid
// now. The new key and certificate are saved together (when the identity
// has a directory) before the in-memory certificate is swapped, so memory
// and disk never disagree; the next TLS handshake presents the new
// certificate, and the old one is simply no longer used. The fleet CA is not
// changed: c.CACertificate is not trusted from the wire.
func (i *Identity) Install(c protocol.Certificate) error {
	leaf, err := parseLeaf([]byte(c.Certificate))
	if err != nil {
		return fmt.Errorf("install renewed certificate: %w: %w", ErrCorrupt, err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.pending == nil {
		return fmt.Errorf("install renewed certificate (serial %x): no renewal is pending on this robot", leaf.SerialNumber)
	}
	if _, err := check(leaf, i.pending, i.roots, i.robotID, time.Now()); err != nil {
		return fmt.Errorf("install renewed certificate (serial %x): %w", leaf.SerialNumber, err)
	}
	keyPEM, err := encodeKey(i.pending)
	if err != nil {
		return err
	}
	certPEM := []byte(c.Certificate)
	if i.dir != "" {
		if err := savePair(i.dir, keyPEM, certPEM); err != nil {
			return fmt.Errorf("install renewed certificate: save in %s: %w", i.dir, err)
		}
	}
	i.set(i.pending, keyPEM, certPEM, leaf)
	i.pending = nil
	i.sessions.flush()
	return nil
}
