package protocol

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// RobotURIScheme and RobotURIHost form a robot certificate's URI SAN:
// lekiwi://robot/<robot id>.
const (
	RobotURIScheme = "lekiwi"
	RobotURIHost   = "robot"
)

// RobotURI is the URI SAN naming robot id in its certificate.
func RobotURI(id string) *url.URL {
	return &url.URL{Scheme: RobotURIScheme, Host: RobotURIHost, Path: "/" + id}
}

// RobotIDFromURI extracts the robot id from a lekiwi://robot/<id> URI.
func RobotIDFromURI(u *url.URL) (string, error) {
	if u == nil || u.Scheme != RobotURIScheme || u.Host != RobotURIHost {
		return "", fmt.Errorf("URI %v is not lekiwi://robot/<id>", u)
	}
	id := strings.TrimPrefix(u.Path, "/")
	if err := ValidRobotID(id); err != nil {
		return "", err
	}
	return id, nil
}

// Message types for certificate renewal over the live connection.
const (
	// TypeRenew (robot → control) carries a CSR for a new key.
	TypeRenew Type = "renew"
	// TypeCertificate (control → robot) answers a renew with the new
	// certificate.
	TypeCertificate Type = "certificate"
)

// CapRenew announces certificate renewal over the connection.
const CapRenew = "renew.v1"

// Renew asks control to sign a new certificate for the robot's new key.
type Renew struct {
	CSR string `json:"csr"` // PEM "CERTIFICATE REQUEST"
}

// Validate implements Validator.
func (r *Renew) Validate() error {
	if !strings.Contains(r.CSR, "BEGIN CERTIFICATE REQUEST") {
		return errors.New("csr must be a PEM certificate request")
	}
	return nil
}

// Certificate is a signed robot certificate with the CA that signed it.
type Certificate struct {
	Certificate   string    `json:"certificate"`    // PEM leaf
	CACertificate string    `json:"ca_certificate"` // PEM CA
	NotAfter      time.Time `json:"not_after"`
}

// Validate implements Validator.
func (c *Certificate) Validate() error {
	if !strings.Contains(c.Certificate, "BEGIN CERTIFICATE") {
		return errors.New("certificate must be PEM")
	}
	return nil
}

// EnrollPath is control's HTTPS endpoint where a new robot trades a
// single-use enrollment token and a CSR for its first certificate.
const EnrollPath = "/v1/enroll"

// EnrollRequest is the JSON body of POST /v1/enroll.
type EnrollRequest struct {
	Token string `json:"token"`
	CSR   string `json:"csr"` // PEM; CN and URI SAN are set by control from the token
}

// EnrollResponse is the JSON answer to a successful enrollment.
type EnrollResponse = Certificate
