package cloudinit

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/lekiwi/heartbeat/profiles"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// identities are the robots the golden files are rendered for.
var identities = map[string]Identity{
	"lekiwi": {RobotID: "lk-0001", Serial: "10000000ABCDEF01"},
	"xle":    {RobotID: "xle-0002", Hostname: "xle-bench-2"},
}

func seedFor(t *testing.T, name string) Seed {
	t.Helper()
	p, err := profiles.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := FromProfile(p, identities[name])
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGolden(t *testing.T) {
	for _, name := range profiles.Names() {
		t.Run(name, func(t *testing.T) {
			files, err := seedFor(t, name).Files()
			if err != nil {
				t.Fatal(err)
			}
			if got := sortedNames(files); !reflect.DeepEqual(got, []string{MetaDataFile, NetworkConfigFile, UserDataFile}) {
				t.Fatalf("files %v", got)
			}
			for file, data := range files {
				golden := filepath.Join("testdata", name, file)
				if *update {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, data, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./cloudinit -update to create it)", err)
				}
				if !bytes.Equal(data, want) {
					t.Errorf("%s differs from %s (run with -update if the change is intended):\n%s", file, golden, data)
				}
			}
		})
	}
}

func sortedNames(m map[string][]byte) []string {
	var names []string
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// The rendered files must parse back (yaml.v3) to what the seed says.
func TestFilesParseBack(t *testing.T) {
	s := seedFor(t, "lekiwi")
	s.WriteFiles = append(s.WriteFiles,
		File{Path: "/opt/blob", Content: "\x00\xff\x01binary", Permissions: 0o755 | fs.ModeSetuid},
		File{Path: "/etc/quoted", Content: "key: \"value\" # not a comment\n- not a list\n", Owner: "lekiwi:lekiwi"})
	s.Users[0].SSHAuthorizedKeys = []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f ops@example"}
	s.Network.WiFis = map[string]WiFi{"wlan0": {DHCP4: true, Optional: true, RegulatoryDomain: "GB",
		AccessPoints: map[string]AccessPoint{"lab: 5GHz": {Password: "correct horse"}, "open": {}, "psk": {Password: strings.Repeat("0f", 32)}}}}
	files, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	ud := files[UserDataFile]
	if !bytes.HasPrefix(ud, []byte("#cloud-config\n")) {
		t.Fatalf("user-data does not start with #cloud-config:\n%s", ud)
	}
	var user struct {
		Hostname string `yaml:"hostname"`
		Users    []struct {
			Name   string   `yaml:"name"`
			Groups string   `yaml:"groups"`
			Sudo   string   `yaml:"sudo"`
			Lock   bool     `yaml:"lock_passwd"`
			Keys   []string `yaml:"ssh_authorized_keys"`
		} `yaml:"users"`
		Packages   []string   `yaml:"packages"`
		RunCmd     [][]string `yaml:"runcmd"`
		SSHPwauth  bool       `yaml:"ssh_pwauth"`
		Timezone   string     `yaml:"timezone"`
		WriteFiles []struct {
			Path, Content, Permissions, Owner, Encoding string
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal(ud, &user); err != nil {
		t.Fatalf("user-data is not YAML: %v\n%s", err, ud)
	}
	if user.Hostname != "lekiwi-10000000abcdef01" || user.Timezone != "Etc/UTC" || user.SSHPwauth {
		t.Errorf("user-data: %+v", user)
	}
	if len(user.Users) != 1 || user.Users[0].Name != "lekiwi" || user.Users[0].Groups != "dialout, video, plugdev" ||
		user.Users[0].Sudo != "ALL=(ALL) NOPASSWD:ALL" || !user.Users[0].Lock || !reflect.DeepEqual(user.Users[0].Keys, s.Users[0].SSHAuthorizedKeys) {
		t.Errorf("users: %+v", user.Users)
	}
	if !reflect.DeepEqual(user.Packages, s.Packages) || !reflect.DeepEqual(user.RunCmd, s.RunCmd) {
		t.Errorf("packages %v runcmd %v", user.Packages, user.RunCmd)
	}
	if len(user.WriteFiles) != 3 {
		t.Fatalf("write_files: %+v", user.WriteFiles)
	}
	blob, quoted := user.WriteFiles[1], user.WriteFiles[2]
	if blob.Encoding != "b64" || blob.Permissions != "4755" || blob.Owner != "root:root" {
		t.Errorf("binary file: %+v", blob)
	}
	if quoted.Content != s.WriteFiles[2].Content || quoted.Owner != "lekiwi:lekiwi" || quoted.Permissions != "" {
		t.Errorf("text file: %+v", quoted)
	}

	var meta map[string]string
	if err := yaml.Unmarshal(files[MetaDataFile], &meta); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(meta, map[string]string{"dsmode": "local", "instance-id": "lk-0001", "local-hostname": "lekiwi-10000000abcdef01"}) {
		t.Errorf("meta-data: %v", meta)
	}

	var net struct {
		Network struct {
			Version   int `yaml:"version"`
			Ethernets map[string]struct {
				DHCP4    bool `yaml:"dhcp4"`
				Optional bool `yaml:"optional"`
			} `yaml:"ethernets"`
			WiFis map[string]struct {
				AccessPoints map[string]map[string]string `yaml:"access-points"`
				Reg          string                       `yaml:"regulatory-domain"`
			} `yaml:"wifis"`
		} `yaml:"network"`
	}
	if err := yaml.Unmarshal(files[NetworkConfigFile], &net); err != nil {
		t.Fatal(err)
	}
	if net.Network.Version != 2 || !net.Network.Ethernets["eth0"].DHCP4 || !net.Network.Ethernets["eth0"].Optional {
		t.Errorf("network-config: %+v", net)
	}
	if aps := net.Network.WiFis["wlan0"].AccessPoints; aps["lab: 5GHz"]["password"] != "correct horse" || aps["open"] == nil || aps["psk"]["password"] != strings.Repeat("0f", 32) || net.Network.WiFis["wlan0"].Reg != "GB" {
		t.Errorf("wifis: %+v", net.Network.WiFis)
	}
}

func TestDeterministic(t *testing.T) {
	s := seedFor(t, "xle")
	s.Network.Ethernets["eth1"] = Ethernet{DHCP4: true}
	s.Network.Ethernets["end0"] = Ethernet{}
	first, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ { // map iteration order differs run to run
		again, err := seedFor(t, "xle").Files()
		if err != nil {
			t.Fatal(err)
		}
		s2 := seedFor(t, "xle")
		s2.Network.Ethernets["end0"] = Ethernet{}
		s2.Network.Ethernets["eth1"] = Ethernet{DHCP4: true}
		other, err := s2.Files()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(first, other) {
			t.Fatalf("two renders of the same seed differ")
		}
		if reflect.DeepEqual(first, again) {
			t.Fatalf("a different seed rendered the same bytes")
		}
	}
}

func TestNilNetworkDisablesConfig(t *testing.T) {
	s := seedFor(t, "lekiwi")
	s.Network = nil
	files, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(files[NetworkConfigFile]); got != "network:\n  config: disabled\n" {
		t.Errorf("network-config = %q", got)
	}
}

func TestCmdlineArg(t *testing.T) {
	// The exact form Raspberry Pi OS users put in cmdline.txt; cloud-init
	// appends file names to the seed URL, so the trailing slash matters.
	if CmdlineArg != "ds=nocloud;s=file:///boot/firmware/" {
		t.Fatalf("CmdlineArg = %q", CmdlineArg)
	}
	if strings.ContainsAny(CmdlineArg, " \t\n") {
		t.Fatal("CmdlineArg must be one kernel argument")
	}
}

func TestValidateRejects(t *testing.T) {
	good := func() Seed { return seedFor(t, "lekiwi") }
	cases := []struct {
		name   string
		mutate func(*Seed)
		want   string
	}{
		{"empty instance id", func(s *Seed) { s.InstanceID = "" }, "instance id \"\""},
		{"instance id with slash", func(s *Seed) { s.InstanceID = "a/b" }, "instance id \"a/b\""},
		{"bad hostname", func(s *Seed) { s.Hostname = "Lekiwi_1" }, "hostname \"Lekiwi_1\""},
		{"bad user", func(s *Seed) { s.Users[0].Name = "Root" }, "users[0]: \"Root\" is not a valid user name"},
		{"duplicate user", func(s *Seed) { s.Users = append(s.Users, s.Users[0]) }, "users[1]: user \"lekiwi\" is listed twice"},
		{"bad group", func(s *Seed) { s.Users[0].Groups = []string{"a b"} }, "\"a b\" is not a valid group name"},
		{"private key as ssh key", func(s *Seed) {
			s.Users[0].SSHAuthorizedKeys = []string{"-----BEGIN OPENSSH PRIVATE KEY----- b3Bl"}
		}, "is not a one-line OpenSSH public key"},
		{"bad package", func(s *Seed) { s.Packages = []string{"Foo"} }, "packages[0]: \"Foo\""},
		{"empty command", func(s *Seed) { s.RunCmd = append(s.RunCmd, nil) }, "runcmd[6]: empty command"},
		{"secret in runcmd", func(s *Seed) {
			s.RunCmd = [][]string{{"sh", "-c", "echo '-----BEGIN EC PRIVATE KEY-----' > /x"}}
		}, "runcmd[0]: argument holds private key material"},
		{"relative path", func(s *Seed) { s.WriteFiles[0].Path = "etc/x" }, "path \"etc/x\" must be absolute"},
		{"dotdot path", func(s *Seed) { s.WriteFiles[0].Path = "/etc/../x" }, "must be absolute and clean"},
		{"duplicate path", func(s *Seed) { s.WriteFiles = append(s.WriteFiles, s.WriteFiles[0]) }, "is written twice"},
		{"private key file", func(s *Seed) {
			s.WriteFiles[0].Content = "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n"
		}, "content holds private key material"},
		{"mode type bits", func(s *Seed) { s.WriteFiles[0].Permissions = fs.ModeDir | 0o755 }, "hold more than mode bits"},
		{"bad owner", func(s *Seed) { s.WriteFiles[0].Owner = "root:" }, "owner \"root:\""},
		{"bad timezone", func(s *Seed) { s.Timezone = "../../etc/passwd" }, "timezone"},
		{"no interfaces", func(s *Seed) { s.Network = &Network{} }, "network: no interfaces"},
		{"bad interface", func(s *Seed) { s.Network.Ethernets["a very long interface"] = Ethernet{} }, "ethernet interface name"},
		{"wifi without ap", func(s *Seed) { s.Network.WiFis = map[string]WiFi{"wlan0": {}} }, "wifi \"wlan0\" has no access points"},
		{"short wifi password", func(s *Seed) {
			s.Network.WiFis = map[string]WiFi{"wlan0": {AccessPoints: map[string]AccessPoint{"lab": {Password: "short"}}}}
		}, "must be 8-63 characters"},
		{"64 characters but not hex", func(s *Seed) {
			s.Network.WiFis = map[string]WiFi{"wlan0": {AccessPoints: map[string]AccessPoint{"lab": {Password: strings.Repeat("z", 64)}}}}
		}, "must be 8-63 characters"},
		{"bad regdom", func(s *Seed) {
			s.Network.WiFis = map[string]WiFi{"wlan0": {RegulatoryDomain: "gb", AccessPoints: map[string]AccessPoint{"lab": {}}}}
		}, "regulatory domain \"gb\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good()
			c.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, c.want)
			}
			if _, ferr := s.Files(); ferr == nil {
				t.Fatal("Files() rendered an invalid seed")
			}
		})
	}
	// Several problems are reported together.
	s := good()
	s.Hostname, s.InstanceID = "", ""
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "hostname") || !strings.Contains(err.Error(), "instance id") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestFromProfile(t *testing.T) {
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromProfile(p, Identity{Serial: "abc"}); err == nil || !strings.Contains(err.Error(), "robot id is empty") {
		t.Errorf("empty robot id: %v", err)
	}
	if _, err := FromProfile(p, Identity{RobotID: "r1"}); err == nil || !strings.Contains(err.Error(), "needs the board serial") {
		t.Errorf("pattern needs serial: %v", err)
	}
	if _, err := FromProfile(p, Identity{RobotID: "r1", Hostname: "Bad Name"}); err == nil || !strings.Contains(err.Error(), "hostname \"Bad Name\"") {
		t.Errorf("bad explicit hostname: %v", err)
	}
	if _, err := FromProfile(nil, Identity{RobotID: "r1"}); err == nil {
		t.Error("nil profile accepted")
	}
	s, err := FromProfile(p, Identity{RobotID: "r1", Serial: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"systemctl", "disable", "--now", "apt-daily.timer"},
		{"systemctl", "disable", "--now", "apt-daily-upgrade.timer"},
		{"systemctl", "enable", "--now", "lekiwi-agent.service"},
		{"systemctl", "enable", "--now", "ssh.service"},
		{"systemctl", "enable", "--now", "avahi-daemon.service"},
		{"systemctl", "enable", "--now", "chrony.service"},
	}
	if !reflect.DeepEqual(s.RunCmd, want) {
		t.Errorf("runcmd = %v", s.RunCmd)
	}
	if s.Hostname != "lekiwi-abc" || s.InstanceID != "r1" || len(s.WriteFiles) != 1 || s.WriteFiles[0].Permissions != 0o644 {
		t.Errorf("seed %+v", s)
	}
	// The seed must not alias the profile's slices.
	s.Packages[0] = "changed"
	if p.Packages[0] == "changed" {
		t.Error("FromProfile shares the profile's package slice")
	}
}

// cloud-init itself (Debian's cloud-init package) validates the rendered
// user-data against its schema, and its network-state parser reads the
// network-config, as it would on the robot.
func TestCloudInitAcceptsSeeds(t *testing.T) {
	ci, err := exec.LookPath("cloud-init")
	if err != nil {
		t.Skip("cloud-init is not installed (apt-get install cloud-init): skipping the third-party schema check")
	}
	for _, name := range profiles.Names() {
		t.Run(name, func(t *testing.T) {
			s := seedFor(t, name)
			s.Network.WiFis = map[string]WiFi{"wlan0": {DHCP4: true, Optional: true, RegulatoryDomain: "GB",
				AccessPoints: map[string]AccessPoint{"lab": {Password: "correct horse"}}}}
			s.WriteFiles = append(s.WriteFiles, File{Path: "/opt/blob", Content: "\x00\xff", Permissions: 0o600})
			files, err := s.Files()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			for file, data := range files {
				if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := exec.Command(ci, "schema", "--config-file", filepath.Join(dir, UserDataFile)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
				t.Fatalf("cloud-init schema rejected user-data: %v\n%s\n%s", err, out, files[UserDataFile])
			}
			if err := checkNetworkConfig(t, ci, filepath.Join(dir, NetworkConfigFile)); err != nil {
				t.Fatal(err)
			}
		})
	}
	// And the checker is not a rubber stamp.
	bad := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(bad, []byte("#cloud-config\nusers:\n  - name: a\n    lock_passwd: maybe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ci, "schema", "--config-file", bad).CombinedOutput(); err == nil {
		t.Fatalf("cloud-init schema accepted an invalid file:\n%s", out)
	}
	badNet := filepath.Join(t.TempDir(), "network-config")
	if err := os.WriteFile(badNet, []byte("network:\n  version: 2\n  ethernets: [eth0]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkNetworkConfig(t, ci, badNet); err == nil {
		t.Fatal("the network-config check accepted a malformed file")
	}
}

// checkNetworkConfig runs network-config through cloud-init's own Python
// code as the robot would: the top-level "network" key removed (as
// cloud-init's stages do), parsed into network state (which raises on
// malformed v2 config), then rendered by the netplan renderer Raspberry Pi
// OS uses, whose output must carry our configuration unchanged.
func checkNetworkConfig(t *testing.T, cloudInit, file string) error {
	t.Helper()
	const script = `
import sys, os, yaml, tempfile
from cloudinit.net import network_state, netplan
cfg = yaml.safe_load(open(sys.argv[1]))
cfg = cfg.get("network", cfg)
network_state.parse_net_config_data(cfg, skip_broken=False)
out = os.path.join(tempfile.mkdtemp(), "50-cloud-init.yaml")
r = netplan.Renderer({"netplan_path": out, "postcmds": False})
assert r.netplan_path == out  # absolute, so nothing is written outside the temporary directory
r.render_network_state(network_state.parse_net_config_data(cfg, skip_broken=False, renderer=r), target=os.path.dirname(out))
rendered = yaml.safe_load(open(out))["network"]
if rendered != cfg:
    sys.exit("netplan output differs from network-config: %r" % rendered)
print(" ".join(sorted(list(cfg.get("ethernets", {})) + list(cfg.get("wifis", {})))))
`
	// The interpreter cloud-init runs under is the one that has its modules
	// (another python3 may come first on PATH).
	python := "python3"
	if head, err := os.ReadFile(cloudInit); err == nil {
		if line, _, _ := bytes.Cut(head, []byte("\n")); bytes.HasPrefix(line, []byte("#!/")) {
			python = strings.Fields(string(line[2:]))[0]
		}
	}
	out, err := exec.Command(python, "-c", script, file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cloud-init's network code rejected %s: %v\n%s", file, err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "eth0 wlan0" {
		return fmt.Errorf("cloud-init saw interfaces %q, want \"eth0 wlan0\"", got)
	}
	return nil
}
