package discovery

import (
	"fmt"
	"strings"
)

// TXT keys the agent's advertiser (agent/mdns) publishes; control must not
// import agent, so they are repeated here.
const (
	keyRobotID      = "id"
	keyRobotType    = "type"
	keyAgentVersion = "agent"
	keyOSVersion    = "os"
)

// maxTXTPairs bounds how many entries one record may contribute, so a hostile
// packet cannot make a large map (a 9000-byte packet holds at most ~4500).
const maxTXTPairs = 64

// ParseTXT decodes TXT RDATA (a sequence of length-prefixed
// character-strings) into key/value pairs per RFC 6763 §6: keys are
// case-insensitive and returned lowercase, the first occurrence of a key
// wins, keys that are not printable ASCII are skipped, "key" without "=" has the empty value, an empty key or an empty
// string is skipped, and so is a lone zero byte (the empty TXT record).
// Values are kept byte for byte.
func ParseTXT(rdata []byte) (map[string]string, error) {
	out := make(map[string]string)
	for off := 0; off < len(rdata); {
		n := int(rdata[off])
		off++
		if off+n > len(rdata) {
			return nil, fmt.Errorf("TXT string at byte %d says %d bytes but only %d remain: record is truncated or not TXT", off-1, n, len(rdata)-off)
		}
		entry := string(rdata[off : off+n])
		off += n
		key, value, _ := strings.Cut(entry, "=")
		if key == "" || !printableASCII(key) {
			continue
		}
		key = strings.ToLower(key)
		if _, seen := out[key]; seen {
			continue
		}
		if len(out) == maxTXTPairs {
			return nil, fmt.Errorf("TXT record has more than %d keys: not a robot's record", maxTXTPairs)
		}
		out[key] = value
	}
	return out, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
