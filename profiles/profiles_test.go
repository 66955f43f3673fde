package profiles

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// minimal is a valid profile of 7 lines; cases append from line 8 on.
const minimal = `name: t
robot_type: lekiwi
arch: arm64
hostname_pattern: "t-{serial}"
agent:
  heartbeat_interval: 30s
  telemetry_min_interval: 10s
`

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f ops@example"

func TestMinimalIsValid(t *testing.T) {
	p, err := Parse("min.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "t" || p.RobotType != LeKiwi || p.Agent.HeartbeatInterval != 30*time.Second {
		t.Fatalf("decoded %+v", p)
	}
}

func TestParseRejects(t *testing.T) {
	cases := []struct {
		name   string
		yaml   string // whole file when it does not start with "+", else appended to minimal
		want   []string
		errors int // expected number of joined errors; 0 = don't check
	}{
		{"unknown top-level key", "+colour: red\n", []string{"bad.yaml:8:1: unknown key \"colour\""}, 1},
		{"unknown nested key", "+services:\n  enabled: [a.service]\n", []string{"bad.yaml:9:3: services: unknown key \"enabled\" (known keys: enable, disable, required, watch)"}, 1},
		{"wrong type string", "+description: 42\n", []string{"bad.yaml:8:14: description: expected a string, found an integer 42 (quote it if you meant the text \"42\")"}, 1},
		{"list where string", "+description: [a]\n", []string{"bad.yaml:8:14: description: expected a string, found a list"}, 1},
		{"wrong type bool", "+users:\n  - name: a\n    sudo: maybe\n", []string{"bad.yaml:10:11: users[0].sudo: expected true or false, found the string \"maybe\""}, 1},
		{"duration without unit", "+teleop:\n  idle_timeout: 30\n", []string{"bad.yaml:9:17: teleop.idle_timeout: a duration needs a unit"}, 1},
		{"bad duration", "+teleop:\n  idle_timeout: soon\n", []string{"bad.yaml:9:17: teleop.idle_timeout: \"soon\" is not a duration"}, 1},
		{"duration out of range", "+health:\n  command: \"true\"\n  timeout: 1h\n", []string{"bad.yaml:10:12: health.timeout: 1h0m0s is out of range"}, 1},
		{"duplicate key", "+arch: arm64\n", []string{"bad.yaml:8:1: key \"arch\" appears twice (first on line 3)"}, 1},
		{"bad robot type", "name: t\nrobot_type: drone\narch: arm64\nhostname_pattern: \"t-{serial}\"\nagent: {heartbeat_interval: 30s, telemetry_min_interval: 10s}\n",
			[]string{"bad.yaml:2:13: robot_type: unknown robot type \"drone\""}, 1},
		{"bad arch", "name: t\nrobot_type: xle\narch: amd64\nhostname_pattern: \"t-{serial}\"\nagent: {heartbeat_interval: 30s, telemetry_min_interval: 10s}\n",
			[]string{"bad.yaml:3:7: arch: architecture \"amd64\" is not supported"}, 1},
		{"missing keys", "description: nothing else\n", []string{
			"bad.yaml:1:1: missing required key \"name\"", "bad.yaml:1:1: missing required key \"robot_type\"",
			"bad.yaml:1:1: missing required key \"arch\"", "bad.yaml:1:1: missing required key \"hostname_pattern\"",
			"bad.yaml:1:1: missing required key \"agent\""}, 5},
		{"missing agent interval", "name: t\nrobot_type: xle\narch: arm64\nhostname_pattern: \"t-{serial}\"\nagent:\n  telemetry_min_interval: 10s\n",
			[]string{"bad.yaml:6:3: agent: missing required key \"heartbeat_interval\""}, 1},
		{"hostname without placeholder", "name: t\nrobot_type: xle\narch: arm64\nhostname_pattern: robot\nagent: {heartbeat_interval: 30s, telemetry_min_interval: 10s}\n",
			[]string{"bad.yaml:4:19: hostname_pattern: hostname pattern \"robot\" has no placeholder"}, 1},
		{"hostname unknown placeholder", "name: t\nrobot_type: xle\narch: arm64\nhostname_pattern: \"r-{mac}\"\nagent: {heartbeat_interval: 30s, telemetry_min_interval: 10s}\n",
			[]string{"bad.yaml:4:19: hostname_pattern: hostname pattern \"r-{mac}\" has unknown placeholder {mac}"}, 1},
		{"hostname uppercase", "name: t\nrobot_type: xle\narch: arm64\nhostname_pattern: \"Robot_{serial}\"\nagent: {heartbeat_interval: 30s, telemetry_min_interval: 10s}\n",
			[]string{"bad.yaml:4:19: hostname_pattern: hostname pattern \"Robot_{serial}\" is not a host name label"}, 1},
		{"bad package", "+packages:\n  - ok-pkg\n  - Bad_Pkg\n  - ok-pkg\n", []string{
			"bad.yaml:10:5: packages[1]: \"Bad_Pkg\" is not a Debian package name",
			"bad.yaml:11:5: packages[2]: package \"ok-pkg\" is listed twice (also at packages[0])"}, 2},
		{"bad unit", "+services:\n  enable: [ssh]\n", []string{"bad.yaml:9:12: services.enable[0]: \"ssh\" is not a systemd unit name"}, 1},
		{"enabled and disabled", "+services:\n  enable: [a.service]\n  disable: [a.service]\n  required: [a.service]\n", []string{
			"bad.yaml:10:13: services.disable[0]: unit \"a.service\" is both disabled here and enabled at services.enable[0]",
			"bad.yaml:10:13: services.disable[0]: unit \"a.service\" is disabled here but required"}, 2},
		{"port out of range", "+teleop:\n  tcp_ports:\n    - {port: 70000, name: big}\n  idle_timeout: 30s\n",
			[]string{"bad.yaml:10:14: teleop.tcp_ports[0].port: 70000 is not a TCP port"}, 1},
		{"duplicate port and missing timeout", "+teleop:\n  tcp_ports:\n    - {port: 1, name: a}\n    - {port: 1, name: b}\n", []string{
			"bad.yaml:9:3: teleop: missing required key \"idle_timeout\"",
			"bad.yaml:11:14: teleop.tcp_ports[1].port: port 1 is listed twice"}, 2},
		{"port name missing", "+teleop:\n  tcp_ports:\n    - port: 22\n  idle_timeout: 30s\n",
			[]string{"bad.yaml:10:7: teleop.tcp_ports[0]: missing required key \"name\""}, 1},
		{"bad user", "+users:\n  - name: Root\n    groups: [dial out]\n", []string{
			"bad.yaml:9:11: users[0].name: \"Root\" is not a user name",
			"bad.yaml:10:14: users[0].groups[0]: \"dial out\" is not a group name"}, 2},
		{"private key pasted", "+users:\n  - name: a\n    ssh_authorized_keys:\n      - \"-----BEGIN OPENSSH PRIVATE KEY-----\\nb3Bl\"\n",
			[]string{"bad.yaml:11:9: users[0].ssh_authorized_keys[0]: an SSH key must be one line"}, 1},
		{"mislabelled key", "+users:\n  - name: a\n    ssh_authorized_keys: [\"ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\"]\n",
			[]string{"bad.yaml:10:27: users[0].ssh_authorized_keys[0]: SSH key \"ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAABA...\": its key data does not encode a ssh-rsa key"}, 1},
		{"bad bus ids", "+hardware:\n  buses:\n    - {ids: \"9-1\", role: arm}\n    - {ids: \"1-300\", role: arm}\n    - {ids: \"1-6\"}\n", []string{
			"bad.yaml:10:13: hardware.buses[0].ids: servo IDs \"9-1\": need 0 <= first <= last <= 253",
			"bad.yaml:11:13: hardware.buses[1].ids: servo IDs \"1-300\"",
			"bad.yaml:12:7: hardware.buses[2]: missing required key \"role\""}, 3},
		{"bad servo adapters", "+hardware:\n  servo_adapters: [\"0403:6014\", \"0403:6014\", \"FTDI\", \"0403:6O14\"]\n", []string{
			"bad.yaml:9:33: hardware.servo_adapters[1]: 0403:6014 is listed twice",
			"bad.yaml:9:46: hardware.servo_adapters[2]: \"FTDI\" is not a USB vendor:product ID",
			"bad.yaml:9:54: hardware.servo_adapters[3]: \"0403:6O14\" is not a USB vendor:product ID"}, 3},
		{"relative file path", "+files:\n  - path: etc/x\n    mode: \"0644\"\n", []string{"bad.yaml:9:11: files[0].path: path \"etc/x\" must be absolute"}, 1},
		{"dotdot file path", "+files:\n  - path: /etc/../root/x\n    mode: \"0644\"\n", []string{"bad.yaml:9:11: files[0].path: path \"/etc/../root/x\" must not contain \"..\""}, 1},
		{"unclean file path", "+files:\n  - path: /etc//x/\n    mode: \"0644\"\n", []string{"bad.yaml:9:11: files[0].path: path \"/etc//x/\" must name a file and be clean"}, 1},
		{"decimal mode", "+files:\n  - path: /etc/x\n    mode: 644\n", []string{"bad.yaml:10:11: files[0].mode: file mode \"644\" must be written in octal with a leading zero"}, 1},
		{"mode too big", "+files:\n  - path: /etc/x\n    mode: \"017777\"\n", []string{"bad.yaml:10:11: files[0].mode: \"017777\" is not a file mode"}, 1},
		{"missing mode", "+files:\n  - path: /etc/x\n", []string{"bad.yaml:9:5: files[0]: missing required key \"mode\""}, 1},
		{"extra key not snake", "+agent:\n", []string{"bad.yaml:8:1: key \"agent\" appears twice (first on line 5)"}, 1},
		{"alias", "+description: &d hi\nhealth: {command: *d, timeout: 5s}\n", []string{
			"bad.yaml:8:14: description: anchors and aliases are not supported",
			"bad.yaml:9:19: health.command: anchors and aliases are not supported"}, 2},
		{"second document", minimal + "---\nname: u\n", []string{"bad.yaml:8:1: a profile file holds one YAML document"}, 1},
		{"syntax error", "name: t\n  robot_type: [\n", []string{"bad.yaml:2: YAML syntax:"}, 1},
		{"tab indentation", "name: t\nagent:\n\theartbeat_interval: 30s\n", []string{"bad.yaml:3: YAML syntax: found character that cannot start any token"}, 1},
		{"empty", "\n  \n", []string{"bad.yaml:1:1: empty profile"}, 1},
		{"only comments", "# nothing yet\n", []string{"bad.yaml:1:1: empty profile"}, 1},
		{"empty document", "---\n", []string{"bad.yaml:1:1: empty profile"}, 1},
		{"null document", "~\n", []string{"bad.yaml:1:1: empty profile"}, 1},
		{"not a mapping", "- a\n- b\n", []string{"bad.yaml:1:1: expected a mapping (key: value lines), found a list"}, 1},
		{"many errors at once", "+colour: red\ndescription: 1\npackages: [\"X\"]\n", []string{
			"bad.yaml:8:1: unknown key \"colour\"", "bad.yaml:9:14: description: expected a string",
			"bad.yaml:10:12: packages[0]: \"X\" is not a Debian package name"}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.yaml
			if strings.HasPrefix(src, "+") {
				src = minimal + src[1:]
			}
			p, err := Parse("bad.yaml", []byte(src))
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %+v", src, p)
			}
			msg := err.Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q; got:\n%s", w, msg)
				}
			}
			if c.errors > 0 {
				if n := len(strings.Split(msg, "\n")); n != c.errors {
					t.Errorf("got %d errors, want %d:\n%s", n, c.errors, msg)
				}
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Source != "bad.yaml" {
				t.Errorf("error is not a *profiles.Error with the source: %#v", err)
			}
		})
	}
}

func TestExtraKeysAndModes(t *testing.T) {
	src := minimal[:len(minimal)] + "  extra:\n    Bad-Key: x\n    good_key: y\n"
	_, err := Parse("x.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), "x.yaml:9:5: agent.extra.Bad-Key: key \"Bad-Key\" is not snake_case") {
		t.Fatalf("got %v", err)
	}

	for text, want := range map[string]fs.FileMode{
		`"0644"`: 0o644, `0755`: 0o755, `"0o600"`: 0o600, `"0"`: 0, `"04755"`: 0o755 | fs.ModeSetuid, `"01777"`: 0o777 | fs.ModeSticky,
	} {
		p, err := Parse("m.yaml", []byte(minimal+"files:\n  - {path: /x, mode: "+text+"}\n"))
		if err != nil {
			t.Fatalf("mode %s: %v", text, err)
		}
		if got := p.Files[0].Mode; got != want {
			t.Errorf("mode %s: got %v, want %v", text, got, want)
		}
	}
}

func TestEmbeddedProfiles(t *testing.T) {
	if got, want := Names(), []string{"lekiwi", "xle"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	lk, err := Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	if lk.RobotType != LeKiwi || lk.Arch != "arm64" || len(lk.Hardware.Buses) != 1 || lk.Hardware.Buses[0].IDs != (IDRange{1, 9}) {
		t.Errorf("lekiwi: %+v", lk)
	}
	if ports := portsOf(lk); !reflect.DeepEqual(ports, []int{5555, 5556}) {
		t.Errorf("lekiwi teleop ports %v", ports)
	}
	xle, err := Load("xle")
	if err != nil {
		t.Fatal(err)
	}
	if xle.RobotType != XLE || len(xle.Hardware.Buses) != 2 || xle.Hardware.Buses[0].IDs != (IDRange{1, 8}) || xle.Hardware.Buses[1].IDs != (IDRange{1, 9}) {
		t.Errorf("xle: %+v", xle.Hardware)
	}
	if ports := portsOf(xle); !reflect.DeepEqual(ports, []int{8443, 8442, 8554}) {
		t.Errorf("xle teleop ports %v", ports)
	}
	if lk.Files[0].Mode != 0o644 || !strings.Contains(lk.Files[0].Content, "RuntimeWatchdogSec=") {
		t.Errorf("lekiwi files: %+v", lk.Files)
	}
	h, err := lk.Hostname("10000000ABCDEF01", "")
	if err != nil || h != "lekiwi-10000000abcdef01" {
		t.Errorf("Hostname = %q, %v", h, err)
	}
}

func portsOf(p *Profile) []int {
	var ports []int
	for _, tp := range p.Teleop.TCPPorts {
		ports = append(ports, tp.Port)
	}
	return ports
}

func TestLoadUnknown(t *testing.T) {
	for _, name := range []string{"drone", "", "../profiles/lekiwi", "LEKIWI"} {
		_, err := Load(name)
		if err == nil || !strings.Contains(err.Error(), "known profiles are lekiwi, xle") {
			t.Errorf("Load(%q) = %v", name, err)
		}
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custom.yaml")
	if err := os.WriteFile(path, []byte(minimal+"colour: red\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadFile(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+":8:1: unknown key") {
		t.Fatalf("got %v", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestExpandHostname(t *testing.T) {
	cases := []struct {
		pattern, serial, id, want, err string
	}{
		{"lekiwi-{serial}", "abc", "", "lekiwi-abc", ""},
		{"{robot_id}", "", "Kiwi-07", "kiwi-07", ""},
		{"r-{serial}-{robot_id}", "a", "b", "r-a-b", ""},
		{"lekiwi-{serial}", "", "x", "", "needs the board serial"},
		{"x-{robot_id}", "s", "bad_id", "", "not a valid host name"},
		{"x-{robot_id}", "s", strings.Repeat("a", 70), "", "not a valid host name"},
		{"-{serial}", "s", "", "", "not a host name label"},
		{"x-{serial", "s", "", "", "without \"}\""},
		{strings.Repeat("a", 50) + "{serial}", "s", "", "", "too long"},
	}
	for _, c := range cases {
		got, err := ExpandHostname(c.pattern, c.serial, c.id)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ExpandHostname(%q,%q,%q) = %q, %v; want error containing %q", c.pattern, c.serial, c.id, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ExpandHostname(%q,%q,%q) = %q, %v; want %q", c.pattern, c.serial, c.id, got, err, c.want)
		}
	}
}

func TestParseIDRange(t *testing.T) {
	for s, want := range map[string]IDRange{"1-9": {1, 9}, "6": {6, 6}, " 1 - 8 ": {1, 8}, "0-253": {0, 253}} {
		got, err := ParseIDRange(s)
		if err != nil || got != want {
			t.Errorf("ParseIDRange(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "a-b", "9-1", "1-254", "-1", "1-2-3"} {
		if _, err := ParseIDRange(s); err == nil {
			t.Errorf("ParseIDRange(%q) accepted", s)
		}
	}
	if (IDRange{1, 9}).String() != "1-9" || (IDRange{6, 6}).String() != "6" || (IDRange{1, 9}).Count() != 9 {
		t.Error("IDRange String/Count")
	}
}

// The test key must itself be a valid key, or the "mislabelled" case above
// would pass for the wrong reason.
func TestSSHKeyCheck(t *testing.T) {
	if err := checkSSHPublicKey(testKey); err != nil {
		t.Fatalf("valid key rejected: %v", err)
	}
	p, err := Parse("k.yaml", []byte(minimal+"users:\n  - name: ops\n    ssh_authorized_keys: [\""+testKey+"\"]\n"))
	if err != nil || p.Users[0].SSHAuthorizedKeys[0] != testKey {
		t.Fatalf("%v %+v", err, p)
	}
}
