package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func ptr[T any](v T) *T { return &v }

// A complete, valid file; tests override single keys on top of it.
const baseYAML = `
robot_id: file-robot
robot_type: lekiwi
servers: [ws://file-a:8080, http://file-b:8080]
state_dir: /file/state
heartbeat_interval: 20s
log_level: warn
roots: {proc: testdata/proc}
hardware: {serial: file-serial}
insecure: true
`

func TestPrecedenceFileEnvFlags(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		flags Flags
		check func(c Config) string
	}{
		{name: "file only", check: func(c Config) string {
			want := []string{"ws://file-a:8080", "http://file-b:8080"}
			if c.RobotID != "file-robot" || !reflect.DeepEqual(c.Servers, want) || c.StateDir != "/file/state" || c.HeartbeatInterval != 20*time.Second || c.LogLevel != "warn" {
				return "file values not applied"
			}
			if c.TelemetryMaxInterval != DefaultTelemetryMaxInterval || c.QueueMaxItems != DefaultQueueMaxItems {
				return "defaults lost for keys the file does not set"
			}
			return ""
		}},
		{name: "env beats file", env: map[string]string{
			EnvRobotID: "env-robot", EnvServers: " ws://env-a:1 , ,wss://env-b ", EnvStateDir: "/env/state",
			EnvHeartbeatInterval: "45s", EnvQueueMaxItems: "77", EnvRobotType: "xle", EnvHardwareModel: "env-model",
		}, check: func(c Config) string {
			if c.RobotID != "env-robot" || !reflect.DeepEqual(c.Servers, []string{"ws://env-a:1", "wss://env-b"}) || c.StateDir != "/env/state" ||
				c.HeartbeatInterval != 45*time.Second || c.QueueMaxItems != 77 || c.RobotType != "xle" || c.Hardware.Model != "env-model" {
				return "env values not applied"
			}
			if c.LogLevel != "warn" {
				return "file value not set in env was lost"
			}
			return ""
		}},
		{name: "empty env variable is ignored", env: map[string]string{EnvRobotID: "", EnvServers: " "}, check: func(c Config) string {
			if c.RobotID != "file-robot" || len(c.Servers) != 2 {
				return "empty variables overrode the file"
			}
			return ""
		}},
		{name: "flags beat env", env: map[string]string{EnvRobotID: "env-robot", EnvServers: "ws://env-a:1", EnvHeartbeatInterval: "45s", EnvLogLevel: "error"},
			flags: Flags{RobotID: ptr("flag-robot"), Servers: []string{"ws://flag:9"}, HeartbeatInterval: ptr(5 * time.Second), StateDir: ptr("/flag/state"), RobotType: ptr("xle"), LogLevel: ptr("debug")},
			check: func(c Config) string {
				if c.RobotID != "flag-robot" || !reflect.DeepEqual(c.Servers, []string{"ws://flag:9"}) || c.HeartbeatInterval != 5*time.Second ||
					c.StateDir != "/flag/state" || c.RobotType != "xle" || c.LogLevel != "debug" {
					return "flag values not applied"
				}
				return ""
			}},
		{name: "hardware: configured fields win, the rest comes from the proc tree", check: func(c Config) string {
			if c.Hardware != (Hardware{Serial: "file-serial", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "d04170"}) {
				return "hardware not merged"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(Sources{File: writeFile(t, baseYAML), LookupEnv: envMap(tt.env), Flags: tt.flags})
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(c); msg != "" {
				t.Fatalf("%s: %+v", msg, c)
			}
		})
	}
}

func TestConfigFileLocation(t *testing.T) {
	file := writeFile(t, baseYAML)
	missing := filepath.Join(t.TempDir(), "nope.yml")
	minimalEnv := map[string]string{EnvRobotID: "r1", EnvRobotType: "lekiwi", EnvServers: "ws://c:1", EnvProcRoot: "testdata/proc", EnvInsecure: "true"}
	tests := []struct {
		name    string
		src     Sources
		wantID  string
		wantErr string
	}{
		{name: "missing default file is fine", src: Sources{DefaultFile: missing, LookupEnv: envMap(minimalEnv)}, wantID: "r1"},
		{name: "missing --config is an error", src: Sources{File: missing, LookupEnv: envMap(minimalEnv)}, wantErr: "read config file " + missing},
		{name: "missing LEKIWI_AGENT_CONFIG file is an error", src: Sources{DefaultFile: file, LookupEnv: envMap(map[string]string{EnvConfig: missing})}, wantErr: "read config file " + missing},
		{name: "LEKIWI_AGENT_CONFIG replaces the default path", src: Sources{DefaultFile: missing, LookupEnv: envMap(map[string]string{EnvConfig: file})}, wantID: "file-robot"},
		{name: "--config beats LEKIWI_AGENT_CONFIG", src: Sources{File: file, LookupEnv: envMap(map[string]string{EnvConfig: missing})}, wantID: "file-robot"},
		{name: "default path is read when present", src: Sources{DefaultFile: file}, wantID: "file-robot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.src)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.RobotID != tt.wantID {
				t.Fatalf("Load = robot %q, %v; want %q", c.RobotID, err, tt.wantID)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string
		flags   Flags
		wantErr []string
	}{
		{name: "unknown key names the key", yaml: baseYAML + "heartbeat_intervall: 10s\n", wantErr: []string{"heartbeat_intervall", "not found"}},
		{name: "unknown nested key", yaml: baseYAML + "hardware2: {}\n", wantErr: []string{"hardware2"}},
		{name: "duration without unit", yaml: baseYAML + "telemetry_min_interval: 10\n", wantErr: []string{"config file", "30s"}},
		{name: "bad robot id", flags: Flags{RobotID: ptr("Robot_1")}, wantErr: []string{"robot_id", "DNS label", "--robot-id"}},
		{name: "empty robot id", yaml: strings.Replace(baseYAML, "robot_id: file-robot", "robot_id: \"\"", 1), wantErr: []string{"robot id is empty"}},
		{name: "bad robot type", flags: Flags{RobotType: ptr("lekiwi2")}, wantErr: []string{`robot_type "lekiwi2"`, `"lekiwi" or "xle"`}},
		{name: "no servers", flags: Flags{Servers: []string{}}, wantErr: []string{"servers: at least one"}},
		{name: "unparseable server", flags: Flags{Servers: []string{"ws://ok:1", "control:8080"}}, wantErr: []string{"servers[1]", "no scheme"}},
		{name: "bad env duration", env: map[string]string{EnvHeartbeatInterval: "often"}, wantErr: []string{EnvHeartbeatInterval, `"often" is not a duration`}},
		{name: "bad env integer", env: map[string]string{EnvQueueMaxItems: "lots"}, wantErr: []string{EnvQueueMaxItems, "not an integer"}},
		{name: "zero interval", flags: Flags{HeartbeatInterval: ptr(time.Duration(0))}, wantErr: []string{"heartbeat_interval is 0s: must be positive"}},
		{name: "min above max", env: map[string]string{EnvTelemetryMinInterval: "10m"}, wantErr: []string{"telemetry_min_interval 10m0s is above telemetry_max_interval 5m0s"}},
		{name: "tiny queue", env: map[string]string{EnvQueueMaxBytes: "1000"}, wantErr: []string{"queue_max_bytes is 1000"}},
		{name: "bad log level", flags: Flags{LogLevel: ptr("loud")}, wantErr: []string{`log_level: level "loud"`}},
		{name: "every problem at once", flags: Flags{RobotID: ptr("-x"), RobotType: ptr("cat"), Servers: []string{}}, wantErr: []string{"robot_id", "robot_type", "servers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := tt.yaml
			if y == "" {
				y = baseYAML
			}
			_, err := Load(Sources{File: writeFile(t, y), LookupEnv: envMap(tt.env), Flags: tt.flags})
			if err == nil {
				t.Fatal("Load accepted bad input")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestEmptyFileMeansDefaults(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, "# nothing yet\n"), LookupEnv: envMap(map[string]string{
		EnvRobotID: "r1", EnvRobotType: "xle", EnvServers: "wss://c:1", EnvProcRoot: "testdata/proc"})})
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.RobotID, want.RobotType, want.Servers, want.Roots.Proc = "r1", "xle", []string{"wss://c:1"}, "testdata/proc"
	want.Hardware = Hardware{Serial: "3f2a9c1e5b7d8e01", Model: "Raspberry Pi 5 Model B Rev 1.0", Revision: "d04170"}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load =\n%+v\nwant\n%+v", c, want)
	}
}

func TestEnvVarsDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, ev := range EnvVars() {
		if !strings.HasPrefix(ev.Name, "LEKIWI_AGENT_") || ev.Help == "" || seen[ev.Name] {
			t.Errorf("variable %+v: want a unique LEKIWI_AGENT_ name with help", ev)
		}
		seen[ev.Name] = true
	}
	for _, must := range []string{EnvRobotID, EnvServers, EnvStateDir, EnvHeartbeatInterval} {
		if !seen[must] {
			t.Errorf("%s is not listed", must)
		}
	}
}

// TestSecurityRules: without insecure only encrypted servers are accepted
// and the error says both ways out; insecure allows plain ones; the
// enrollment settings layer like every other key.
func TestSecurityRules(t *testing.T) {
	const secureYAML = `
robot_id: r1
robot_type: lekiwi
servers: [wss://control.lan:8443]
roots: {proc: testdata/proc}
`
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string
		flags   Flags
		wantErr []string
		check   func(c Config) string
	}{
		{name: "wss and https are accepted, defaults are secure", flags: Flags{Servers: []string{"wss://a:1", "https://b:2"}}, check: func(c Config) string {
			if c.Insecure || c.CAFile != DefaultCAFile || c.EnrollmentToken != "" || c.EnrollmentTokenFile != "" {
				return "defaults: want secure, ca_file " + DefaultCAFile + ", no token"
			}
			return ""
		}},
		{name: "ws is refused without insecure", flags: Flags{Servers: []string{"wss://a:1", "ws://b:2"}},
			wantErr: []string{`servers[1] "ws://b:2" is not encrypted`, "wss://", "--insecure", EnvInsecure}},
		{name: "http is refused without insecure", env: map[string]string{EnvServers: "http://b:2"}, wantErr: []string{"servers[0]", "not encrypted"}},
		{name: "insecure flag allows ws", flags: Flags{Servers: []string{"ws://b:2", "http://c:3"}, Insecure: ptr(true)}, check: func(c Config) string {
			if !c.Insecure {
				return "insecure not set"
			}
			return ""
		}},
		{name: "insecure from the file", yaml: strings.Replace(secureYAML, "wss://", "ws://", 1) + "insecure: true\n", check: func(c Config) string {
			if !c.Insecure {
				return "insecure not set"
			}
			return ""
		}},
		{name: "insecure from the environment", env: map[string]string{EnvInsecure: "1", EnvServers: "ws://b:2"}, check: func(c Config) string {
			if !c.Insecure {
				return "insecure not set"
			}
			return ""
		}},
		{name: "--insecure=false beats the environment", env: map[string]string{EnvInsecure: "true", EnvServers: "ws://b:2"}, flags: Flags{Insecure: ptr(false)}, wantErr: []string{"not encrypted"}},
		{name: "bad insecure value", env: map[string]string{EnvInsecure: "sometimes"}, wantErr: []string{EnvInsecure, `"sometimes" is not true or false`}},
		{name: "enrollment settings: file < env < flags", yaml: secureYAML + "ca_file: /file/ca.pem\nenrollment_token_file: /file/token\n",
			env:   map[string]string{EnvCAFile: "/env/ca.pem", EnvEnrollmentTokenFile: "/env/token"},
			flags: Flags{EnrollmentTokenFile: ptr("/flag/token")},
			check: func(c Config) string {
				if c.CAFile != "/env/ca.pem" || c.EnrollmentTokenFile != "/flag/token" {
					return "ca_file / enrollment_token_file not layered"
				}
				return ""
			}},
		{name: "inline token", env: map[string]string{EnvEnrollmentToken: "lke_abc"}, check: func(c Config) string {
			if c.EnrollmentToken != "lke_abc" {
				return "token not read"
			}
			return ""
		}},
		{name: "token and token file", yaml: secureYAML + "enrollment_token: lke_abc\n", flags: Flags{EnrollmentTokenFile: ptr("/t")},
			wantErr: []string{"enrollment_token and enrollment_token_file are both set"}},
		{name: "no CA without insecure", flags: Flags{CAFile: ptr("")}, wantErr: []string{"ca_file is empty", "--insecure"}},
		{name: "no CA is fine when insecure", flags: Flags{CAFile: ptr(""), Insecure: ptr(true)}, check: func(Config) string { return "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := tt.yaml
			if y == "" {
				y = secureYAML
			}
			c, err := Load(Sources{File: writeFile(t, y), LookupEnv: envMap(tt.env), Flags: tt.flags})
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("Load accepted it")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(c); msg != "" {
				t.Fatalf("%s: %+v", msg, c)
			}
		})
	}
}

// TestUpdateKeys: the update keys come from the file (flat, next to the
// others), update_enabled from the environment too, with defaults for
// the keys directory and image metadata.
func TestUpdateKeys(t *testing.T) {
	file := writeFile(t, baseYAML+"update_state_dir: /p/update\nupdate_disk: /dev/mmcblk0\nupdate_health_command: /usr/bin/true\n")
	c, err := Load(Sources{File: file, LookupEnv: envMap(map[string]string{EnvUpdateEnabled: "true"})})
	if err != nil {
		t.Fatal(err)
	}
	want := Update{UpdateEnabled: true, UpdateKeysDir: DefaultUpdateKeysDir, UpdateStateDir: "/p/update", UpdateDisk: "/dev/mmcblk0",
		UpdateImageInfo: DefaultUpdateImageInfo, UpdateHealthCommand: "/usr/bin/true"}
	if c.Update != want {
		t.Fatalf("update settings %+v, want %+v", c.Update, want)
	}
	if _, err := Load(Sources{File: writeFile(t, baseYAML+"update_enabled: true\nupdate_keys_dir: \"\"\n")}); err == nil || !strings.Contains(err.Error(), "update_keys_dir") {
		t.Fatalf("update_enabled without keys: %v", err)
	}
	if _, err := Load(Sources{File: file, LookupEnv: envMap(map[string]string{EnvUpdateEnabled: "sometimes"})}); err == nil || !strings.Contains(err.Error(), EnvUpdateEnabled) {
		t.Fatalf("bad %s: %v", EnvUpdateEnabled, err)
	}
}

// TestLiveKeys: teleop, services and mDNS are on by default, each can be
// turned off in the file or the environment (the environment winning),
// and bad values name the key.
func TestLiveKeys(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, baseYAML)})
	if err != nil {
		t.Fatal(err)
	}
	want := Live{TeleopEnabled: true, TeleopInterval: DefaultTeleopInterval, ServicesEnabled: true, MDNSEnabled: true, MDNSPort: DefaultMDNSPort}
	if c.Live != want {
		t.Fatalf("defaults %+v, want %+v", c.Live, want)
	}
	file := writeFile(t, baseYAML+"teleop_enabled: false\nservices_enabled: false\nmdns_port: 2222\nprofile: xle\nteleop_interval: 500ms\n")
	c, err = Load(Sources{File: file, LookupEnv: envMap(map[string]string{EnvTeleopEnabled: "true", EnvMDNSEnabled: "false"})})
	if err != nil {
		t.Fatal(err)
	}
	want = Live{Profile: "xle", TeleopEnabled: true, TeleopInterval: 500 * time.Millisecond, ServicesEnabled: false, MDNSEnabled: false, MDNSPort: 2222}
	if c.Live != want {
		t.Fatalf("file+env %+v, want %+v", c.Live, want)
	}
	for _, tc := range []struct {
		yaml, env, value, want string
	}{
		{yaml: "mdns_port: 70000\n", want: "mdns_port"},
		{yaml: "teleop_interval: 1ms\n", want: "teleop_interval"},
		{env: EnvServicesEnabled, value: "maybe", want: EnvServicesEnabled},
		{env: EnvMDNSPort, value: "ssh", want: EnvMDNSPort},
	} {
		env := map[string]string{}
		if tc.env != "" {
			env[tc.env] = tc.value
		}
		_, err := Load(Sources{File: writeFile(t, baseYAML+tc.yaml), LookupEnv: envMap(env)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %s=%q: error %v, want one naming %s", tc.yaml, tc.env, tc.value, err, tc.want)
		}
	}
	// mdns_port is not checked when mDNS is off.
	if _, err := Load(Sources{File: writeFile(t, baseYAML+"mdns_enabled: false\nmdns_port: 0\n")}); err != nil {
		t.Fatalf("mdns off with port 0: %v", err)
	}
}
