package mdns

import (
	"fmt"
	"strings"
)

// TXT keys of the robot's service (RFC 6763 §6: short, lowercase, the
// version key first). control/discovery parses the same keys.
const (
	KeyTXTVersion   = "txtvers"
	KeyRobotID      = "id"
	KeyRobotType    = "type"
	KeyAgentVersion = "agent"
	KeyOSVersion    = "os"
)

// txtVersion is the version of the key set above; bump it when the meaning
// of a key changes, so that browsers can tell.
const txtVersion = "1"

// maxTXTString is the largest character-string in a TXT record (one length
// byte, RFC 1035 §3.3).
const maxTXTString = 255

// EncodeTXT returns the TXT strings for the robot, in the form the
// underlying DNS library packs them: "key=value", with backslashes escaped,
// because github.com/miekg/dns reads a backslash in a TXT string as the
// start of an escape sequence. Empty versions are left out rather than sent
// as "key=" (which RFC 6763 §6.4 defines as "present, empty").
func EncodeTXT(robotID, robotType, agentVersion, osVersion string) ([]string, error) {
	pairs := [][2]string{
		{KeyTXTVersion, txtVersion},
		{KeyRobotID, robotID},
		{KeyRobotType, robotType},
		{KeyAgentVersion, agentVersion},
		{KeyOSVersion, osVersion},
	}
	txt := make([]string, 0, len(pairs))
	for _, p := range pairs {
		if p[1] == "" {
			continue
		}
		entry := p[0] + "=" + p[1]
		if len(entry) > maxTXTString {
			return nil, fmt.Errorf("TXT entry %q is %d bytes, over the %d byte limit of a DNS character-string: shorten the %s value",
				entry[:40]+"…", len(entry), maxTXTString, p[0])
		}
		txt = append(txt, strings.ReplaceAll(entry, `\`, `\\`))
	}
	return txt, nil
}
