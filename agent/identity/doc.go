// Package identity is the robot's cryptographic identity: its private key,
// the certificate control signed for it and the fleet CA that signed it.
//
// The key is an ECDSA P-256 key generated on the robot; it never leaves the
// robot — control only ever sees certificate signing requests. The
// certificate names the robot twice: subject common name = robot id, and the
// URI SAN lekiwi://robot/<id> (protocol.RobotURI).
//
// Life cycle:
//
//   - Enrollment. A new robot has a single-use enrollment token (created by
//     an operator with `control enroll create --robot-id ...`) and the fleet
//     CA (shipped in the image). Enroll generates the key, POSTs
//     {token, csr} to control's /v1/enroll over TLS trusting only that CA,
//     checks the certificate it gets back and saves everything.
//   - Every start. Load reads the identity back; TLSConfig gives the mTLS
//     client configuration for the agent's WebSocket.
//   - Renewal. Once two thirds of the certificate's lifetime have passed
//     (NeedsRenewal), the runtime sends a CSR for a fresh key (RenewalCSR)
//     over its live connection and installs the answer (Install): the new
//     key and certificate are saved, the in-memory certificate is swapped,
//     and the next TLS handshake presents it. Connections already open keep
//     the certificate they were made with.
//
// On disk, in one directory (normally <state_dir>/identity, mode 0700):
//
//	key.pem   PKCS#8 "PRIVATE KEY", mode 0600
//	cert.pem  the robot certificate, mode 0600
//	ca.pem    the fleet CA, mode 0644
//
// Every file is written to a temporary file, fsync'd, renamed into place
// and the directory fsync'd, so a power cut leaves the old file or the new
// one, never half of one. Key and certificate must also change together:
// they are first staged side by side as key.pem.new and cert.pem.new (both
// durable), then renamed key first. Load finishes an interrupted switch, so
// the key and certificate it returns always belong together.
package identity
