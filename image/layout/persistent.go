package layout

// Per-robot files in the persistent partition: `provision image customize`
// writes them before the robot's first boot and the agent reads them, so
// both take the names from here. Paths are relative to the partition's
// root, which the image mounts at /var/lib/lekiwi.
const (
	// AgentStateDir is the agent's state directory (LEKIWI_AGENT_STATE_DIR).
	AgentStateDir = "agent"
	// IdentityDir holds the robot identity, under the agent's state
	// directory.
	IdentityDir      = "identity"
	IdentityKeyFile  = "key.pem"  // PKCS#8 private key, in IdentityDir
	IdentityCertFile = "cert.pem" // the robot certificate, in IdentityDir
	IdentityCAFile   = "ca.pem"   // the fleet CA, in IdentityDir
	// EnrollmentTokenFile is the single-use enrollment token, under the
	// agent's state directory (not in /etc: the agent deletes it once used).
	EnrollmentTokenFile = "enrollment-token"
)
