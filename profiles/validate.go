package profiles

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// IDRange is an inclusive range of servo IDs, written "1-9" (or "6" for a
// single ID).
type IDRange struct{ From, To int }

// MaxServoID is the highest Feetech servo ID; 254 is the broadcast ID.
const MaxServoID = 253

// ParseIDRange parses "N-M" or "N" with 0 <= N <= M <= 253.
func ParseIDRange(s string) (IDRange, error) {
	from, to, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		to = from
	}
	a, err1 := strconv.Atoi(strings.TrimSpace(from))
	b, err2 := strconv.Atoi(strings.TrimSpace(to))
	if err1 != nil || err2 != nil {
		return IDRange{}, fmt.Errorf("servo IDs %q: write a range such as \"1-9\" or a single ID such as \"6\"", s)
	}
	if a < 0 || b > MaxServoID || a > b {
		return IDRange{}, fmt.Errorf("servo IDs %q: need 0 <= first <= last <= %d", s, MaxServoID)
	}
	return IDRange{From: a, To: b}, nil
}

func (r IDRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(r.From)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// Count is how many IDs the range holds.
func (r IDRange) Count() int { return r.To - r.From + 1 }

var (
	validName    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	debPackage   = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`) // Debian policy 5.6.1
	systemdUnit  = regexp.MustCompile(`^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|socket|target|timer|path|mount|automount|swap|slice)$`)
	userName     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	extraKey     = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	usbID        = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{4}$`) // vendor:product as sysfs spells it
	sshKeyTypes  = []string{"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}
	requiredKeys = []string{"name", "robot_type", "arch", "hostname_pattern", "agent"}
)

// validator checks the meaning of a decoded profile, reporting at the
// positions the decoder recorded.
type validator struct {
	*decoder
	p *Profile
}

// errf reports a problem with the value at path, unless decoding that value
// already failed (one error per mistake, not two).
func (v *validator) errf(path, format string, args ...any) {
	if v.failed[path] {
		return
	}
	p, ok := v.pos[path]
	for !ok && path != "" { // fall back to the nearest recorded parent
		path = parent(path)
		p, ok = v.pos[path]
	}
	v.errAt(p, "%s%s", label(path), fmt.Sprintf(format, args...))
}

// errKey reports at the key of path (for problems with the key itself).
func (v *validator) errKey(path, format string, args ...any) {
	if p, ok := v.keyPos[path]; ok {
		v.errAt(p, "%s%s", label(path), fmt.Sprintf(format, args...))
		return
	}
	v.errf(path, format, args...)
}

func parent(path string) string {
	if i := strings.LastIndexAny(path, ".["); i >= 0 {
		return path[:i]
	}
	return ""
}

func (v *validator) present(path string) bool { _, ok := v.pos[path]; return ok }

func (v *validator) validate() {
	if v.failed[""] {
		return // not a mapping at all: that one error says it
	}
	root := v.pos[""]
	for _, k := range requiredKeys {
		if !v.present(k) {
			v.errAt(root, "missing required key %q", k)
		}
	}
	p := v.p
	if v.present("name") && !validName.MatchString(p.Name) {
		v.errf("name", "%q is not a profile name: use lowercase letters, digits and hyphens, starting with a letter", p.Name)
	}
	if v.present("robot_type") && p.RobotType != LeKiwi && p.RobotType != XLE {
		v.errf("robot_type", "unknown robot type %q: use %q or %q", p.RobotType, LeKiwi, XLE)
	}
	if v.present("arch") && p.Arch != "arm64" {
		v.errf("arch", "architecture %q is not supported: only \"arm64\" (Raspberry Pi 5) is", p.Arch)
	}
	if v.present("hostname_pattern") {
		if err := checkHostnamePattern(p.HostnamePattern); err != nil {
			v.errf("hostname_pattern", "%v", err)
		}
	}
	v.packages()
	v.services()
	v.agent()
	v.teleop()
	v.users()
	v.hardware()
	v.files()
	v.health()
}

func (v *validator) packages() {
	seen := map[string]string{}
	for i, pkg := range v.p.Packages {
		at := fmt.Sprintf("packages[%d]", i)
		if !debPackage.MatchString(pkg) {
			v.errf(at, "%q is not a Debian package name: lowercase letters, digits, '+', '-', '.', at least two characters, starting with a letter or digit", pkg)
			continue
		}
		if first, dup := seen[pkg]; dup {
			v.errf(at, "package %q is listed twice (also at %s)", pkg, first)
		}
		seen[pkg] = at
	}
}

func (v *validator) units(list []string, key string) map[string]string {
	seen := map[string]string{}
	for i, u := range list {
		at := fmt.Sprintf("services.%s[%d]", key, i)
		if len(u) > 255 || !systemdUnit.MatchString(u) {
			v.errf(at, "%q is not a systemd unit name: give the full name with its type, such as \"ssh.service\"", u)
			continue
		}
		if first, dup := seen[u]; dup {
			v.errf(at, "unit %q is listed twice (also at %s)", u, first)
		}
		seen[u] = at
	}
	return seen
}

func (v *validator) services() {
	enable := v.units(v.p.Services.Enable, "enable")
	disable := v.units(v.p.Services.Disable, "disable")
	required := v.units(v.p.Services.Required, "required")
	v.units(v.p.Services.Watch, "watch")
	for u, at := range disable {
		if other, both := enable[u]; both {
			v.errf(at, "unit %q is both disabled here and enabled at %s", u, other)
		}
		if other, both := required[u]; both {
			v.errf(at, "unit %q is disabled here but required for a healthy boot at %s", u, other)
		}
	}
}

func (v *validator) agent() {
	a := v.p.Agent
	if !v.present("agent") {
		return
	}
	v.duration("agent.heartbeat_interval", a.HeartbeatInterval, time.Second, 10*time.Minute, true)
	v.duration("agent.telemetry_min_interval", a.TelemetryMinInterval, 100*time.Millisecond, time.Hour, true)
	for k := range a.Extra {
		if !extraKey.MatchString(k) {
			v.errKey("agent.extra."+k, "key %q is not snake_case (lowercase letters, digits, underscores, starting with a letter)", k)
		}
	}
}

// duration checks min <= d <= max; a missing required one is reported at
// its parent mapping.
func (v *validator) duration(at string, d, min, max time.Duration, required bool) {
	if !v.present(at) {
		if required {
			v.errf(parent(at), "missing required key %q", at[strings.LastIndexByte(at, '.')+1:])
		}
		return
	}
	if d < min || d > max {
		v.errf(at, "%s is out of range: use between %s and %s", d, min, max)
	}
}

func (v *validator) teleop() {
	t := v.p.Teleop
	seen := map[int]string{}
	for i, port := range t.TCPPorts {
		at := fmt.Sprintf("teleop.tcp_ports[%d]", i)
		if !v.present(at + ".port") {
			v.errf(at, "missing required key \"port\"")
		} else if port.Port < 1 || port.Port > 65535 {
			v.errf(at+".port", "%d is not a TCP port: use 1 to 65535", port.Port)
		} else if first, dup := seen[port.Port]; dup {
			v.errf(at+".port", "port %d is listed twice (also at %s)", port.Port, first)
		} else {
			seen[port.Port] = at
		}
		if !v.present(at + ".name") {
			v.errf(at, "missing required key \"name\"")
		} else if !validName.MatchString(port.Name) {
			v.errf(at+".name", "%q is not a port name: use lowercase letters, digits and hyphens, starting with a letter", port.Name)
		}
	}
	if len(t.TCPPorts) > 0 || v.present("teleop.idle_timeout") {
		v.duration("teleop.idle_timeout", t.IdleTimeout, time.Second, time.Hour, len(t.TCPPorts) > 0)
	}
}

func (v *validator) users() {
	seen := map[string]string{}
	for i, u := range v.p.Users {
		at := fmt.Sprintf("users[%d]", i)
		if !v.present(at + ".name") {
			v.errf(at, "missing required key \"name\"")
		} else if !userName.MatchString(u.Name) {
			v.errf(at+".name", "%q is not a user name: lowercase letter or '_' first, then lowercase letters, digits, '_' or '-', at most 32 characters", u.Name)
		} else if first, dup := seen[u.Name]; dup {
			v.errf(at+".name", "user %q is defined twice (also at %s)", u.Name, first)
		} else {
			seen[u.Name] = at
		}
		for j, g := range u.Groups {
			if !userName.MatchString(g) {
				v.errf(fmt.Sprintf("%s.groups[%d]", at, j), "%q is not a group name: lowercase letter or '_' first, then lowercase letters, digits, '_' or '-'", g)
			}
		}
		for j, k := range u.SSHAuthorizedKeys {
			if err := checkSSHPublicKey(k); err != nil {
				v.errf(fmt.Sprintf("%s.ssh_authorized_keys[%d]", at, j), "%v", err)
			}
		}
	}
}

// checkSSHPublicKey accepts one OpenSSH authorized_keys line without
// options: "<type> <base64 blob> [comment]", where the blob must decode and
// name the same type (which also rejects a private key pasted by mistake).
func checkSSHPublicKey(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("an SSH key must be one line; this one has a line break (is it a private key? those never go in a profile)")
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return fmt.Errorf("%q is not an OpenSSH public key: expected \"<type> <base64> [comment]\", such as \"ssh-ed25519 AAAA… user@host\"", abbreviate(line))
	}
	if !contains(sshKeyTypes, f[0]) {
		return fmt.Errorf("SSH key type %q is not supported: use one of %s", f[0], strings.Join(sshKeyTypes, ", "))
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return fmt.Errorf("SSH key %q: its key data is not valid base64", abbreviate(line))
	}
	if len(blob) < 4 {
		return fmt.Errorf("SSH key %q: its key data is truncated", abbreviate(line))
	}
	n := binary.BigEndian.Uint32(blob)
	if uint64(n) > uint64(len(blob)-4) || string(blob[4:4+n]) != f[0] {
		return fmt.Errorf("SSH key %q: its key data does not encode a %s key (truncated or mislabelled)", abbreviate(line), f[0])
	}
	return nil
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

func (v *validator) hardware() {
	seen := map[string]bool{}
	for i, id := range v.p.Hardware.ServoAdapters {
		at := fmt.Sprintf("hardware.servo_adapters[%d]", i)
		switch {
		case !usbID.MatchString(id):
			v.errf(at, "%q is not a USB vendor:product ID: want 4 lowercase hex digits each, as lsusb and sysfs idVendor/idProduct show them, such as \"0403:6014\"", abbreviate(id))
		case seen[id]:
			v.errf(at, "%s is listed twice", id)
		}
		seen[id] = true
	}
	for i := range v.p.Hardware.Buses {
		at := fmt.Sprintf("hardware.buses[%d]", i)
		if !v.present(at + ".ids") {
			v.errf(at, "missing required key \"ids\"")
		}
		if !v.present(at+".role") || strings.TrimSpace(v.p.Hardware.Buses[i].Role) == "" {
			v.errf(at, "missing required key \"role\" (what the servos drive, such as \"arm+base\")")
		}
	}
}

func (v *validator) files() {
	seen := map[string]string{}
	for i, f := range v.p.Files {
		at := fmt.Sprintf("files[%d]", i)
		if !v.present(at + ".path") {
			v.errf(at, "missing required key \"path\"")
		} else if err := checkFilePath(f.Path); err != nil {
			v.errf(at+".path", "%v", err)
		} else if first, dup := seen[f.Path]; dup {
			v.errf(at+".path", "file %q is listed twice (also at %s)", f.Path, first)
		} else {
			seen[f.Path] = at
		}
		if !v.present(at + ".mode") {
			v.errf(at, "missing required key \"mode\" (such as \"0644\")")
		}
	}
}

func checkFilePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q must be absolute (start with \"/\")", p)
	}
	for _, elem := range strings.Split(p, "/") {
		if elem == ".." {
			return fmt.Errorf("path %q must not contain \"..\"", p)
		}
	}
	if p == "/" || path.Clean(p) != p {
		return fmt.Errorf("path %q must name a file and be clean (no \".\", \"//\" or trailing \"/\"); did you mean %q?", p, path.Clean(p))
	}
	if strings.ContainsAny(p, "\x00\n") {
		return fmt.Errorf("path %q contains a NUL or newline", p)
	}
	return nil
}

func (v *validator) health() {
	h := v.p.Health
	if v.present("health.command") && strings.TrimSpace(h.Command) == "" {
		v.errf("health.command", "command is empty: remove the key or give a command")
	}
	if h.Command != "" || v.present("health.timeout") {
		v.duration("health.timeout", h.Timeout, time.Second, 30*time.Minute, h.Command != "")
	}
}
