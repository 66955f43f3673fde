// Package profiles holds the robot profiles — what an image for a LeKiwi or
// an XLE robot contains and how its agent behaves — as YAML files embedded
// in the binary (lekiwi.yaml, xle.yaml), and loads them with strict schema
// validation.
//
// Profiles are edited by people and read by the image builder, netboot and
// the agent's configuration, so a mistake must be caught at load time and
// pointed at precisely: every problem is reported as "file:line:col:
// message", all of them at once (errors.Join of *Error), and unknown keys
// and wrong value types are errors rather than silently ignored.
package profiles

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed *.yaml
var embedded embed.FS

// RobotType is the kind of robot a profile is for. The values match the
// wire protocol's robot types.
type RobotType string

// Known robot types.
const (
	LeKiwi RobotType = "lekiwi"
	XLE    RobotType = "xle"
)

// Profile describes one kind of robot: the contents of its image and the
// configuration its agent starts with. YAML keys are the snake_case names in
// the struct tags; every key below is documented where it is declared.
type Profile struct {
	// Name identifies the profile ("lekiwi", "xle"): lowercase letters,
	// digits and hyphens. An embedded profile's name equals its file name.
	Name string `yaml:"name"`
	// RobotType is "lekiwi" or "xle" (required).
	RobotType RobotType `yaml:"robot_type"`
	// Description is free text for people (optional).
	Description string `yaml:"description"`
	// Arch is the Debian architecture the image targets. Only "arm64" is
	// accepted today: both robots run on a Raspberry Pi 5 (required).
	Arch string `yaml:"arch"`
	// HostnamePattern names each robot, such as "lekiwi-{serial}". The
	// placeholders {serial} (the board serial number) and {robot_id} are
	// replaced when an image is customised for one robot; the pattern must
	// contain at least one, so that robots on one LAN get distinct names,
	// and every expansion must be a valid host name label (RFC 1123:
	// lowercase letters, digits, inner hyphens, at most 63 characters).
	HostnamePattern string `yaml:"hostname_pattern"`
	// Packages are Debian package names to install on first boot (optional;
	// Debian policy syntax, no duplicates).
	Packages []string `yaml:"packages"`
	// Services lists systemd units to enable, disable, and wait for.
	Services Services `yaml:"services"`
	// Agent is the starting configuration of the heartbeat agent (required).
	Agent Agent `yaml:"agent"`
	// Teleop says how the agent recognises that someone is teleoperating
	// the robot.
	Teleop Teleop `yaml:"teleop"`
	// Users are the local accounts created on first boot (optional).
	Users []User `yaml:"users"`
	// Hardware describes the servo buses the robot has.
	Hardware Hardware `yaml:"hardware"`
	// Files are extra files written into the root filesystem (optional).
	Files []File `yaml:"files"`
	// Health is the check a trial boot must pass before an update commits.
	Health Health `yaml:"health"`
}

// Services are systemd unit names with their type suffix
// ("ssh.service", "lekiwi-agent.service", "multi-user.target").
type Services struct {
	// Enable are units enabled at first boot.
	Enable []string `yaml:"enable"`
	// Disable are units disabled at first boot; a unit may not be both
	// enabled and disabled.
	Disable []string `yaml:"disable"`
	// Required are units that must be active for a trial boot to be
	// healthy; none of them may be disabled.
	Required []string `yaml:"required"`
	// Watch are further units the agent reports on (state changes,
	// restarts) without the image enabling them: the robot's own software,
	// such as the LeRobot host, installed and enabled by its owner.
	Watch []string `yaml:"watch"`
}

// Agent is the agent configuration a profile starts robots with.
type Agent struct {
	// HeartbeatInterval is how often the agent sends a heartbeat until a
	// control node's hello reply sets its own, such as "30s" (required,
	// between 1s and 10m).
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// TelemetryMinInterval is the debounce between two telemetry messages,
	// such as "10s" (required, between 100ms and 1h).
	TelemetryMinInterval time.Duration `yaml:"telemetry_min_interval"`
	// Extra are further agent settings passed through as key: "value"
	// strings; keys are snake_case (optional).
	Extra map[string]string `yaml:"extra"`
}

// Teleop tells the agent how teleoperation shows on this robot.
type Teleop struct {
	// TCPPorts are local TCP ports on which an established connection
	// means a teleoperator is connected (no duplicates).
	TCPPorts []Port `yaml:"tcp_ports"`
	// IdleTimeout is how long all those ports must be without connections
	// before teleoperation counts as stopped, such as "30s" (required when
	// tcp_ports is set).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// Port is one TCP port with a name for people and event payloads.
type Port struct {
	// Port is the TCP port number, 1 to 65535.
	Port int `yaml:"port"`
	// Name says what listens there, such as "zmq-cmd" (required,
	// lowercase letters, digits and hyphens).
	Name string `yaml:"name"`
}

// User is a local account.
type User struct {
	// Name is the login name (Debian's useradd syntax: lowercase letter or
	// underscore first, then lowercase letters, digits, "_" or "-"; at most
	// 32 characters).
	Name string `yaml:"name"`
	// Groups are supplementary groups, such as "dialout" (serial ports,
	// hence the servo bus) and "video" (cameras).
	Groups []string `yaml:"groups"`
	// Sudo gives the user password-less sudo.
	Sudo bool `yaml:"sudo"`
	// SSHAuthorizedKeys are OpenSSH public keys ("ssh-ed25519 AAAA…
	// comment"). Only public keys belong in a profile: it is compiled into
	// binaries and images.
	SSHAuthorizedKeys []string `yaml:"ssh_authorized_keys"`
	// LockPassword disables password login for the user (keys only).
	LockPassword bool `yaml:"lock_password"`
}

// Hardware is what the robot is built from. It is descriptive today;
// netboot's hardware matcher will use it to tell robots apart.
type Hardware struct {
	// Buses are the servo buses (one USB serial adapter each).
	Buses []Bus `yaml:"buses"`
	// ServoAdapters are further USB IDs ("vendor:product", 4 lowercase hex
	// digits each, as sysfs idVendor and idProduct read) of serial
	// adapters this robot's servo buses may be wired to, beyond the common
	// chips the factory probe knows (agent/factory.DefaultServoAdapters).
	// The probe pings only ports on known adapters; it runs before the
	// board's profile is known, so it takes every profile's (optional).
	ServoAdapters []string `yaml:"servo_adapters"`
}

// Bus is one servo bus and the servo IDs that answer on it.
type Bus struct {
	// IDs is the range of servo IDs that answer a ping, such as "1-9"
	// (Feetech IDs 0 to 253; 254 is the broadcast ID).
	IDs IDRange `yaml:"ids"`
	// Role says what the servos drive, such as "arm+base" (required).
	Role string `yaml:"role"`
}

// File is an extra file for the root filesystem.
type File struct {
	// Path is absolute and clean: no "..", no "//", no trailing "/".
	Path string `yaml:"path"`
	// Content is the file's text, written as is.
	Content string `yaml:"content"`
	// Mode is the octal permission, such as "0644" (required; quote it or
	// keep the leading zero).
	Mode fs.FileMode `yaml:"mode"`
}

// Health is the trial-boot health check.
type Health struct {
	// Command is run by the agent through "/bin/sh -c"; exit status 0
	// means healthy (optional: without it only services.required count).
	Command string `yaml:"command"`
	// Timeout bounds the command, such as "60s" (required with command).
	Timeout time.Duration `yaml:"timeout"`
}

// Names returns the names of the embedded profiles, sorted.
func Names() []string {
	entries, err := fs.ReadDir(embedded, ".")
	if err != nil {
		return nil // cannot happen with a compiled-in FS
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".yaml"); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Load returns the embedded profile called name ("lekiwi", "xle").
func Load(name string) (*Profile, error) {
	known := Names()
	if !validName.MatchString(name) || !contains(known, name) {
		return nil, fmt.Errorf("unknown profile %q: known profiles are %s", name, strings.Join(known, ", "))
	}
	file := name + ".yaml"
	data, err := embedded.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read embedded profile %s: %w", file, err)
	}
	p, err := Parse("profiles/"+file, data)
	if err != nil {
		return nil, err
	}
	if p.Name != name {
		return nil, fmt.Errorf("embedded profile %s names itself %q: the name must equal the file name", file, p.Name)
	}
	return p, nil
}

// LoadAll returns every embedded profile, in name order.
func LoadAll() ([]*Profile, error) {
	var ps []*Profile
	for _, name := range Names() {
		p, err := Load(name)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// LoadFile reads and validates a profile from a file on disk; errors carry
// the path as given.
func LoadFile(path string) (*Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates one profile document. source names the input
// in error messages. On failure the error joins one *Error per problem,
// each formatted "source:line:col: message", sorted by position; YAML
// syntax errors, for which the parser gives a line but no column, read
// "source:line: message".
func Parse(source string, data []byte) (*Profile, error) {
	root, err := parseDocument(source, data)
	if err != nil {
		return nil, err
	}
	d := newDecoder(source)
	var p Profile
	d.decode(root, reflect.ValueOf(&p).Elem(), "")
	v := &validator{decoder: d, p: &p}
	v.validate()
	if len(d.errs) > 0 {
		sortErrors(d.errs)
		errs := make([]error, len(d.errs))
		for i, e := range d.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return &p, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseDocument returns the root node of the single YAML document in data.
func parseDocument(source string, data []byte) (root *yaml.Node, err error) {
	defer func() {
		// yaml.v3 has had panics on malformed input; a profile loader must
		// answer bad bytes with an error, never take the process down.
		if r := recover(); r != nil {
			root, err = nil, &Error{Source: source, Msg: fmt.Sprintf("YAML parser failed on this input: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	empty := &Error{Source: source, Line: 1, Column: 1, Msg: "empty profile: expected a mapping with name, robot_type, arch, …"}
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil, empty // only comments
	} else if err != nil {
		return nil, syntaxError(source, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{Source: source, Line: extra.Line, Column: extra.Column, Msg: "a profile file holds one YAML document; remove the second one (after \"---\")"}
	} else if !errors.Is(err, io.EOF) {
		return nil, syntaxError(source, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || isNull(doc.Content[0]) {
		return nil, empty
	}
	return doc.Content[0], nil
}

func syntaxError(source string, err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		var line int
		fmt.Sscanf(m[1], "%d", &line)
		return &Error{Source: source, Line: line, Msg: "YAML syntax: " + m[2]}
	}
	return &Error{Source: source, Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
