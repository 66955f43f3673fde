// Package auth decides who is calling control's API and what they may do:
// bearer tokens (stored hashed), optional OIDC JWTs, roles and permissions.
//
// Roles come from the seed: operator (read, teleoperate), engineer (read,
// deploy, configure), admin (everything). Every API route declares one
// permission; the API's route table is the single place that says which.
package auth
