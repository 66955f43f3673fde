package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"time"
)

// Defaults for lifetimes and names.
const (
	DefaultCAName       = "Lekiwi Fleet CA"
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour // 87600h
	DefaultNodeLifetime = 365 * 24 * time.Hour
	// DefaultRobotLifetime is short on purpose: robots renew over their live
	// connection, and a stolen robot's certificate dies on its own.
	DefaultRobotLifetime = 90 * 24 * time.Hour
	// ClockSkew backdates NotBefore so that a robot whose clock is a little
	// behind (a Pi has no RTC until NTP syncs) accepts its fresh certificate.
	ClockSkew = time.Minute
)

// organization is the O of every subject we issue, so certificates are
// recognisable in openssl output and logs.
const organization = "Lekiwi Heartbeat"

// CA is a loaded certificate authority: its certificate and the key that
// signs with it.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// CreateOptions configure a new CA.
type CreateOptions struct {
	Name     string        // subject CN; default DefaultCAName
	KeyType  KeyType       // default KeyECDSAP256
	Lifetime time.Duration // default DefaultCALifetime (10 years)
	Now      func() time.Time
}

// Create generates a CA key and its self-signed certificate. The CA may sign
// leaves only (path length 0): there are no intermediates to manage.
func Create(o CreateOptions) (*CA, error) {
	if o.Name == "" {
		o.Name = DefaultCAName
	}
	if o.Lifetime == 0 {
		o.Lifetime = DefaultCALifetime
	}
	if o.Lifetime < 0 {
		return nil, fmt.Errorf("create CA %q: lifetime %v is negative: give a positive duration such as 87600h", o.Name, o.Lifetime)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	key, err := generateKey(o.KeyType)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", o.Name, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", o.Name, err)
	}
	now := o.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.Name, Organization: []string{organization}},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(o.Lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: self-sign certificate: %w", o.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: parse the certificate just made: %w", o.Name, err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCertPEM(der)}, nil
}

// Pool returns a fresh pool holding only this CA, for tls.Config RootCAs or
// ClientCAs. Fresh each call so no caller can add to another's trust.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// ParseCACert parses a PEM CA certificate (the first CERTIFICATE block) and
// checks that it may sign certificates.
func ParseCACert(pemBytes []byte) (*x509.Certificate, error) {
	cert, err := ParseCertPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	if err := checkIsCA(cert); err != nil {
		return nil, err
	}
	return cert, nil
}

func checkIsCA(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("certificate %q is not a CA certificate (basic constraints CA:FALSE or absent): point at the CA's ca.crt, not a node or robot certificate", cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("CA certificate %q lacks the keyCertSign key usage and cannot sign certificates", cert.Subject.CommonName)
	}
	return nil
}

// checkCanSign refuses to sign outside the CA's own validity: a leaf from an
// expired CA would never verify, and failing here says why.
func (ca *CA) checkCanSign(now time.Time) error {
	if now.After(ca.Cert.NotAfter) {
		return fmt.Errorf("CA %q expired at %s: create a new CA and re-issue certificates", ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(ca.Cert.NotBefore) {
		return fmt.Errorf("CA %q is not valid before %s and the clock says %s: check this machine's clock", ca.Cert.Subject.CommonName, ca.Cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// validity computes a leaf's NotBefore/NotAfter: backdated by ClockSkew (but
// not before the CA) and capped at the CA's expiry, since a chain is only
// valid while every certificate in it is.
func (ca *CA) validity(now time.Time, lifetime time.Duration) (notBefore, notAfter time.Time, err error) {
	if lifetime < 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("lifetime %v is negative: give a positive duration", lifetime)
	}
	if err := ca.checkCanSign(now); err != nil {
		return time.Time{}, time.Time{}, err
	}
	notBefore = now.Add(-ClockSkew)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	notAfter = now.Add(lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	return notBefore, notAfter, nil
}

// sign creates a leaf certificate from tmpl for pub and returns its PEM and
// parsed form.
func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, *x509.Certificate, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, nil, errors.New("CA is not loaded: use pki.Load or pki.Create")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate just signed for %q: %w", tmpl.Subject.CommonName, err)
	}
	return encodeCertPEM(der), cert, nil
}
