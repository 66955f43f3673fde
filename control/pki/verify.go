package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Reason classifies why a presented certificate was rejected, so the caller
// can record a precise audit event (and metrics) without parsing messages.
type Reason string

// Rejection reasons. The values are stable: they go into events and metric
// labels.
const (
	ReasonNoCertificate    Reason = "no_certificate"    // the peer presented none
	ReasonUnknownAuthority Reason = "unknown_authority" // not signed by this CA
	ReasonExpired          Reason = "expired"           // expired or not yet valid (this CA's, though)
	ReasonNotRobot         Reason = "not_robot"         // this CA's, but no or mismatched robot identity, or wrong usage
	ReasonNotNode          Reason = "not_node"          // this CA's, but not a node certificate
	ReasonInvalid          Reason = "invalid"           // anything else (malformed, constraints, ...)
)

// VerifyError is a rejected certificate chain.
type VerifyError struct {
	Reason Reason
	Err    error
}

func (e *VerifyError) Error() string {
	if e.Err == nil {
		return "certificate rejected: " + string(e.Reason)
	}
	return fmt.Sprintf("certificate rejected (%s): %v", e.Reason, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of a *VerifyError anywhere in err's chain, or
// "" when err is nil or not a verification error.
func ReasonOf(err error) Reason {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}

// verifyChain checks that chain's leaf was signed by this CA, is valid at
// now and allows usage. Certificates after the leaf are ignored: this CA
// signs leaves directly (path length 0), so no intermediate could ever make
// a chain valid, and ignoring them spares work an attacker could ask for.
func (ca *CA) verifyChain(chain []*x509.Certificate, now time.Time, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(chain) == 0 || chain[0] == nil {
		return nil, &VerifyError{Reason: ReasonNoCertificate, Err: errors.New("the peer presented no client certificate")}
	}
	leaf := chain[0]
	verify := func(at time.Time) error {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:       ca.Pool(),
			CurrentTime: at,
			KeyUsages:   []x509.ExtKeyUsage{usage},
		})
		return err
	}
	err := verify(now)
	if err == nil {
		return leaf, nil
	}
	reason := classify(err, usage)
	if reason == ReasonExpired {
		// x509 checks dates before signatures, so an expired certificate
		// from a stranger also says "expired". Check again inside the
		// leaf's validity: only our own certificates count as expired.
		mid := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if again := verify(mid); again != nil {
			if r := classify(again, usage); r != ReasonExpired {
				reason, err = r, again
			}
		}
	}
	return nil, &VerifyError{Reason: reason, Err: fmt.Errorf("certificate %q (serial %s): %w", leaf.Subject.CommonName, SerialHex(leaf), err)}
}

// classify maps x509 verification errors to reasons.
func classify(err error, usage x509.ExtKeyUsage) Reason {
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return ReasonUnknownAuthority
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return ReasonExpired
		case x509.IncompatibleUsage:
			if usage == x509.ExtKeyUsageClientAuth {
				return ReasonNotRobot
			}
			return ReasonNotNode
		}
	}
	return ReasonInvalid
}
