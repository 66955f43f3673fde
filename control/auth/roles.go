package auth

import (
	"fmt"
	"slices"
)

// Role is a user's role.
type Role string

// The roles.
const (
	RoleOperator Role = "operator"
	RoleEngineer Role = "engineer"
	RoleAdmin    Role = "admin"
	// RoleNode is held by callers that present a node certificate (netboot
	// stations, control nodes, the witness) instead of a token. It is not a
	// user role: no token can be made with it.
	RoleNode Role = "node"
)

// Roles lists every role, least to most powerful.
func Roles() []Role { return []Role{RoleOperator, RoleEngineer, RoleAdmin} }

// ParseRole validates a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !slices.Contains(Roles(), r) {
		return "", fmt.Errorf("role %q is not operator, engineer or admin", s)
	}
	return r, nil
}

// Permission is what a route needs.
type Permission string

// The permissions. Public routes need no credentials at all.
const (
	PermPublic      Permission = "public"
	PermRead        Permission = "read"
	PermTeleoperate Permission = "teleoperate"
	PermDeploy      Permission = "deploy"
	PermConfigure   Permission = "configure"
	PermAdmin       Permission = "admin"
	// PermFactory is what a netboot station needs: report devices and
	// factory steps, and mint one-time enrollments for robots it provisions.
	PermFactory Permission = "factory"
)

// Permissions lists every permission that needs credentials.
func Permissions() []Permission {
	return []Permission{PermRead, PermTeleoperate, PermDeploy, PermConfigure, PermFactory, PermAdmin}
}

// Grants lists the permissions a role holds.
func (r Role) Grants() []Permission {
	switch r {
	case RoleOperator:
		return []Permission{PermRead, PermTeleoperate}
	case RoleEngineer:
		return []Permission{PermRead, PermDeploy, PermConfigure}
	case RoleAdmin:
		return Permissions()
	case RoleNode:
		return []Permission{PermRead, PermFactory}
	}
	return nil
}

// Allows reports whether the role holds the permission.
func (r Role) Allows(p Permission) bool {
	return p == PermPublic || slices.Contains(r.Grants(), p)
}

// rank orders roles so a principal with several (OIDC groups) gets the
// strongest one.
func (r Role) rank() int { return slices.Index(Roles(), r) }
