package profiles

import (
	"fmt"
	"regexp"
	"strings"
)

// Hostname placeholders.
const (
	PlaceholderSerial  = "{serial}"
	PlaceholderRobotID = "{robot_id}"
)

var hostLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Hostname expands the profile's hostname pattern for one robot. Values
// are lowercased (host names are case-insensitive and Pi serials are
// printed in lowercase hex); the result must be a valid host name label.
func (p *Profile) Hostname(serial, robotID string) (string, error) {
	return ExpandHostname(p.HostnamePattern, serial, robotID)
}

// ExpandHostname replaces {serial} and {robot_id} in pattern and checks
// that the result is a valid RFC 1123 host name label.
func ExpandHostname(pattern, serial, robotID string) (string, error) {
	if err := checkHostnamePattern(pattern); err != nil {
		return "", err
	}
	if strings.Contains(pattern, PlaceholderSerial) && serial == "" {
		return "", fmt.Errorf("hostname pattern %q needs the board serial, which is empty", pattern)
	}
	if strings.Contains(pattern, PlaceholderRobotID) && robotID == "" {
		return "", fmt.Errorf("hostname pattern %q needs the robot id, which is empty", pattern)
	}
	h := strings.NewReplacer(PlaceholderSerial, strings.ToLower(serial), PlaceholderRobotID, strings.ToLower(robotID)).Replace(pattern)
	if !hostLabel.MatchString(h) {
		return "", fmt.Errorf("hostname %q (from pattern %q) is not a valid host name: use lowercase letters, digits and inner hyphens, at most 63 characters", h, pattern)
	}
	return h, nil
}

// checkHostnamePattern checks a pattern's syntax without values.
func checkHostnamePattern(pattern string) error {
	if pattern == "" {
		return fmt.Errorf("hostname pattern is empty")
	}
	rest := pattern
	var literal strings.Builder
	placeholders := 0
	for rest != "" {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			literal.WriteString(rest)
			break
		}
		literal.WriteString(rest[:i])
		if rest[i] == '}' {
			return fmt.Errorf("hostname pattern %q has a \"}\" without \"{\"", pattern)
		}
		end := strings.IndexByte(rest[i:], '}')
		if end < 0 {
			return fmt.Errorf("hostname pattern %q has a \"{\" without \"}\"", pattern)
		}
		ph := rest[i : i+end+1]
		if ph != PlaceholderSerial && ph != PlaceholderRobotID {
			return fmt.Errorf("hostname pattern %q has unknown placeholder %s: use %s or %s", pattern, ph, PlaceholderSerial, PlaceholderRobotID)
		}
		placeholders++
		literal.WriteString("x") // stands for the value in the checks below
		rest = rest[i+end+1:]
	}
	if placeholders == 0 {
		return fmt.Errorf("hostname pattern %q has no placeholder: every robot would get the same name; add %s or %s", pattern, PlaceholderSerial, PlaceholderRobotID)
	}
	if !hostLabel.MatchString(literal.String()) {
		return fmt.Errorf("hostname pattern %q is not a host name label: use lowercase letters, digits and inner hyphens around the placeholders", pattern)
	}
	// A Pi serial is 16 hex digits; refuse patterns that cannot fit one.
	sample := strings.NewReplacer(PlaceholderSerial, "10000000abcdef01", PlaceholderRobotID, "r1").Replace(pattern)
	if len(sample) > 63 {
		return fmt.Errorf("hostname pattern %q is too long: with a 16-digit serial it exceeds 63 characters", pattern)
	}
	return nil
}
