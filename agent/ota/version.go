package ota

import (
	"strconv"
	"strings"
)

// parseVersion reads a dotted numeric version ("1.4", "v2.0.3", "1.2.0-rc1"
// — anything from the first '-' or '+' on is ignored); ok is false when
// it is not one (e.g. "dev").
func parseVersion(s string) (parts []int, ok bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(s, "-+"); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		return nil, false
	}
	for _, f := range strings.Split(s, ".") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, false
		}
		parts = append(parts, n)
	}
	return parts, true
}

// agentSatisfies reports whether an agent of version have may install a
// release that needs at least min. An empty min is no requirement; an
// agent version that is not numeric ("dev", a developer build) is taken to
// be new enough, while an unreadable min refuses (the release asks for
// something this agent cannot judge).
func agentSatisfies(have, min string) bool {
	if strings.TrimSpace(min) == "" {
		return true
	}
	m, ok := parseVersion(min)
	if !ok {
		return false
	}
	h, ok := parseVersion(have)
	if !ok {
		return true
	}
	for i := range max(len(h), len(m)) {
		var a, b int
		if i < len(h) {
			a = h[i]
		}
		if i < len(m) {
			b = m[i]
		}
		if a != b {
			return a > b
		}
	}
	return true
}
