// Package pki is the fleet's certificate authority: it creates and stores the
// CA, issues node certificates (control nodes, the dqlite witness, netboot
// stations), signs robot certificates from CSRs, and verifies the chains that
// robots and nodes present during mTLS handshakes.
//
// A robot's identity is its certificate: CN and the URI SAN
// lekiwi://robot/<id> carry the robot id, and only the CA decides them — a
// CSR contributes its public key and nothing else. Robot certificates are
// short-lived (90 days by default) and renewed over the live connection.
//
// The package is pure Go (no cgo) so that provision, netboot and control can
// all link it, and it keeps no package-level mutable state: time always comes
// in as an argument so tests and callers control the clock.
package pki
