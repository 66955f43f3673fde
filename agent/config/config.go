// Package config loads the agent's configuration from a YAML file, the
// environment and command-line flags — in that order of precedence, each
// layer overriding only what it sets — and validates the result with errors
// that say which setting is wrong and how to fix it.
//
// The file is optional at its default path (a robot provisioned by netboot
// may be configured by environment alone) but required when named
// explicitly: a typo in --config must not silently run with defaults.
// Unknown keys in the file are errors, for the same reason.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/endpoint"
	"github.com/lekiwi/heartbeat/protocol"
)

// Defaults.
const (
	DefaultFile                    = "/etc/lekiwi/agent.yml"
	DefaultCAFile                  = "/etc/lekiwi/ca.pem"
	DefaultStateDir                = "/var/lib/lekiwi/agent"
	DefaultHeartbeatInterval       = 30 * time.Second
	DefaultTelemetrySampleInterval = 5 * time.Second
	DefaultTelemetryMinInterval    = 10 * time.Second
	DefaultTelemetryMaxInterval    = 5 * time.Minute
	DefaultBackoffBase             = time.Second
	DefaultBackoffCap              = 60 * time.Second
	DefaultFirstReconnectJitter    = 10 * time.Second
	DefaultQueueMaxItems           = 10000
	DefaultQueueMaxBytes           = 8 << 20
	DefaultDiskPath                = "/"
	DefaultLogLevel                = "info"
	DefaultUpdateKeysDir           = "/etc/lekiwi/update-keys"
	DefaultUpdateImageInfo         = "/etc/lekiwi/image.json"
	// DefaultTeleopInterval is how often the socket tables are read: one
	// read costs ~5 ms of kernel time on a busy host (docs/BENCHMARKS.md),
	// and a session is only counted after 3 s of presence anyway.
	DefaultTeleopInterval = 2 * time.Second
	// DefaultMDNSPort is the SRV port advertised over mDNS. The agent
	// listens on nothing, so the robot is advertised with its SSH port
	// (ssh.service is required by every profile).
	DefaultMDNSPort = 22
)

// Config is everything the agent daemon needs. YAML keys are the snake_case
// names in the tags.
type Config struct {
	RobotID   string             `yaml:"robot_id"`
	RobotType protocol.RobotType `yaml:"robot_type"`
	// Servers are control base URLs (ws, wss, http or https); the agent
	// dials <base>/v1/agent and rotates through them on each attempt.
	Servers  []string `yaml:"servers"`
	StateDir string   `yaml:"state_dir"`

	// CAFile is the fleet CA (PEM) shipped in the image: the only CA the
	// agent trusts control's certificate with when it enrolls. After
	// enrollment the identity keeps its own copy (state_dir/identity/ca.pem).
	CAFile string `yaml:"ca_file"`
	// EnrollmentToken or EnrollmentTokenFile (not both) hold the single-use
	// token a robot without an identity enrolls with. The daemon deletes
	// the file after a successful enrollment; prefer it to the inline token,
	// which stays in the configuration (and, as a flag, in ps).
	EnrollmentToken     string `yaml:"enrollment_token"`
	EnrollmentTokenFile string `yaml:"enrollment_token_file"`
	// Insecure allows ws:// and http:// servers and skips the identity:
	// no TLS, no client certificate. Development only.
	Insecure bool `yaml:"insecure"`

	// HeartbeatInterval applies until a control node's hello reply sets its own.
	HeartbeatInterval       time.Duration `yaml:"heartbeat_interval"`
	TelemetrySampleInterval time.Duration `yaml:"telemetry_sample_interval"`
	TelemetryMinInterval    time.Duration `yaml:"telemetry_min_interval"` // debounce
	TelemetryMaxInterval    time.Duration `yaml:"telemetry_max_interval"` // send even without change

	BackoffBase          time.Duration `yaml:"backoff_base"`
	BackoffCap           time.Duration `yaml:"backoff_cap"`
	FirstReconnectJitter time.Duration `yaml:"first_reconnect_jitter"`

	QueueMaxItems int   `yaml:"queue_max_items"`
	QueueMaxBytes int64 `yaml:"queue_max_bytes"`

	Roots    Roots  `yaml:"roots"`
	DiskPath string `yaml:"disk_path"`
	// Hardware overrides what the board reports; empty fields are read from
	// the device tree and <proc>/cpuinfo (collect.ReadHardware).
	Hardware Hardware `yaml:"hardware"`

	LogLevel string `yaml:"log_level"` // debug, info, warn, error

	// Updates: over-the-air A/B updates from control's registry.
	Update `yaml:",inline"`
	// Live fleet view: teleoperation detection, service watch,
	// mDNS advertisement.
	Live `yaml:",inline"`
}

// Live configures what the agent watches and announces besides telemetry
// (agent/teleop, agent/services, agent/mdns). Each part is optional and on
// by default; a part that cannot start (no systemd bus, port 5353 refused)
// is logged and retried or skipped without stopping the agent.
type Live struct {
	// Profile names the robot profile whose teleop ports and systemd
	// units are watched; "" means the profile in update_image_info
	// (image.json), else the embedded profile named like robot_type.
	Profile string `yaml:"profile"`
	// TeleopEnabled turns on teleoperation detection (teleop.started and
	// teleop.stopped events).
	TeleopEnabled bool `yaml:"teleop_enabled"`
	// TeleopInterval is how often the socket tables are read.
	TeleopInterval time.Duration `yaml:"teleop_interval"`
	// ServicesEnabled turns on the watch of the profile's systemd units
	// (service.changed events) over systemd's D-Bus API.
	ServicesEnabled bool `yaml:"services_enabled"`
	// MDNSEnabled advertises the robot as _lekiwi._tcp or _xle._tcp.
	MDNSEnabled bool `yaml:"mdns_enabled"`
	// MDNSPort is the SRV port advertised.
	MDNSPort int `yaml:"mdns_port"`
}

// Update configures the OTA updater (agent/ota, agent/ota/updatecmd).
type Update struct {
	// UpdateEnabled answers "update" commands; off, they are refused as
	// unknown. Needs the A/B disk layout and baked update keys.
	UpdateEnabled bool `yaml:"update_enabled"`
	// UpdateKeysDir holds the trusted release-signing public keys.
	UpdateKeysDir string `yaml:"update_keys_dir"`
	// UpdateStateDir and UpdateCacheDir (persistent partition) hold the
	// updater's state and partial downloads; "" means <state_dir>/update
	// and <state_dir>/update/cache.
	UpdateStateDir string `yaml:"update_state_dir"`
	UpdateCacheDir string `yaml:"update_cache_dir"`
	// UpdateDisk is the whole boot disk (like /dev/mmcblk0); "" means the
	// disk holding the running root filesystem.
	UpdateDisk string `yaml:"update_disk"`
	// UpdateImageInfo is the running image's metadata (image.json:
	// version, profile), read at start whether updates are on or not: its
	// release goes into hello, its profile picks the watched units. A
	// missing file means a system not made by provision image build.
	UpdateImageInfo string `yaml:"update_image_info"`
	// UpdateHealthCommand is run with /bin/sh -c in a trial boot's health
	// check; "" uses the profile's health.command, if any.
	UpdateHealthCommand string `yaml:"update_health_command"`
}

// Roots are the directories read instead of /proc, /sys and /etc.
type Roots struct {
	Proc string `yaml:"proc"`
	Sys  string `yaml:"sys"`
	Etc  string `yaml:"etc"`
}

// Hardware identifies the board.
type Hardware struct {
	Serial   string `yaml:"serial"`
	Model    string `yaml:"model"`
	Revision string `yaml:"revision"`
}

// Default is the configuration before any file, variable or flag.
func Default() Config {
	return Config{
		StateDir:                DefaultStateDir,
		CAFile:                  DefaultCAFile,
		HeartbeatInterval:       DefaultHeartbeatInterval,
		TelemetrySampleInterval: DefaultTelemetrySampleInterval,
		TelemetryMinInterval:    DefaultTelemetryMinInterval,
		TelemetryMaxInterval:    DefaultTelemetryMaxInterval,
		BackoffBase:             DefaultBackoffBase,
		BackoffCap:              DefaultBackoffCap,
		FirstReconnectJitter:    DefaultFirstReconnectJitter,
		QueueMaxItems:           DefaultQueueMaxItems,
		QueueMaxBytes:           DefaultQueueMaxBytes,
		Roots:                   Roots{Proc: "/proc", Sys: "/sys", Etc: "/etc"},
		DiskPath:                DefaultDiskPath,
		LogLevel:                DefaultLogLevel,
		Update:                  Update{UpdateKeysDir: DefaultUpdateKeysDir, UpdateImageInfo: DefaultUpdateImageInfo},
		Live: Live{TeleopEnabled: true, TeleopInterval: DefaultTeleopInterval, ServicesEnabled: true,
			MDNSEnabled: true, MDNSPort: DefaultMDNSPort},
	}
}

// Flags are the command-line settings; nil (or a nil slice) means the flag
// was not given and the lower layers stand.
type Flags struct {
	RobotID             *string
	RobotType           *string
	Servers             []string
	StateDir            *string
	HeartbeatInterval   *time.Duration
	LogLevel            *string
	CAFile              *string
	EnrollmentToken     *string
	EnrollmentTokenFile *string
	Insecure            *bool
}

// Sources are where Load reads from.
type Sources struct {
	// File is the YAML file given on the command line; "" means the
	// LEKIWI_AGENT_CONFIG variable or, failing that, DefaultFile.
	File string
	// LookupEnv reads the environment (os.LookupEnv in the daemon); nil
	// means an empty environment.
	LookupEnv func(string) (string, bool)
	Flags     Flags
	// DefaultFile replaces the package's DefaultFile (tests); "" keeps it.
	DefaultFile string
}

// Load builds the configuration: defaults < YAML file < environment < flags,
// then fills missing hardware identity from the proc tree and validates.
func Load(src Sources) (Config, error) {
	env := src.LookupEnv
	if env == nil {
		env = func(string) (string, bool) { return "", false }
	}
	c := Default()

	path, explicit := src.File, src.File != ""
	if !explicit {
		if v, ok := env(EnvConfig); ok && v != "" {
			path, explicit = v, true
		} else if path = src.DefaultFile; path == "" {
			path = DefaultFile
		}
	}
	if err := c.mergeFile(path, explicit); err != nil {
		return Config{}, err
	}
	if err := c.mergeEnv(env); err != nil {
		return Config{}, err
	}
	c.mergeFlags(src.Flags)
	if err := c.resolveHardware(); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) mergeFile(path string, explicit bool) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read config file %s: %w (give an existing file with --config or %s)", path, err, EnvConfig)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w (keys are listed by `agent run --help`; durations are written like 30s or 5m)", path, err)
	}
	return nil
}

func (c *Config) mergeFlags(f Flags) {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&c.RobotID, f.RobotID)
	if f.RobotType != nil {
		c.RobotType = protocol.RobotType(*f.RobotType)
	}
	if f.Servers != nil {
		c.Servers = append([]string(nil), f.Servers...)
	}
	set(&c.StateDir, f.StateDir)
	if f.HeartbeatInterval != nil {
		c.HeartbeatInterval = *f.HeartbeatInterval
	}
	set(&c.LogLevel, f.LogLevel)
	set(&c.CAFile, f.CAFile)
	set(&c.EnrollmentToken, f.EnrollmentToken)
	set(&c.EnrollmentTokenFile, f.EnrollmentTokenFile)
	if f.Insecure != nil {
		c.Insecure = *f.Insecure
	}
}

// resolveHardware fills identity fields nobody configured from the board.
func (c *Config) resolveHardware() error {
	h := &c.Hardware
	if h.Serial != "" && h.Model != "" && h.Revision != "" {
		return nil
	}
	hw, err := collect.ReadHardware(collect.Roots{Proc: c.Roots.Proc, Sys: c.Roots.Sys})
	if err != nil {
		return fmt.Errorf("read board identity under %s and %s: %w (or set hardware.serial, hardware.model and hardware.revision)", c.Roots.Proc, c.Roots.Sys, err)
	}
	if h.Serial == "" {
		h.Serial = hw.Serial
	}
	if h.Model == "" {
		h.Model = hw.Model
	}
	if h.Revision == "" {
		h.Revision = hw.Revision
	}
	return nil
}

// Validate reports every problem at once, each naming the setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if err := protocol.ValidRobotID(c.RobotID); err != nil {
		bad("robot_id: %w (set robot_id, %s or --robot-id)", err, EnvRobotID)
	}
	if !c.RobotType.Valid() {
		bad("robot_type %q: must be %q or %q (set robot_type, %s or --robot-type)", c.RobotType, protocol.RobotLeKiwi, protocol.RobotXLE, EnvRobotType)
	}
	if len(c.Servers) == 0 {
		bad("servers: at least one control server URL is required, like ws://control.local:8080 (set servers, %s or --server)", EnvServers)
	}
	for i, s := range c.Servers {
		u, err := endpoint.AgentURL(s)
		if err != nil {
			bad("servers[%d]: %w", i, err)
			continue
		}
		if !c.Insecure && !strings.HasPrefix(u, "wss://") {
			bad("servers[%d] %q is not encrypted: robots connect with their certificate over TLS, use wss:// (or https://); "+
				"for development against a plain control, pass --insecure (insecure: true, %s=true)", i, s, EnvInsecure)
		}
	}
	if c.EnrollmentToken != "" && c.EnrollmentTokenFile != "" {
		bad("enrollment_token and enrollment_token_file are both set: give only one (the file is better: the agent deletes it once used)")
	}
	if !c.Insecure && c.CAFile == "" {
		bad("ca_file is empty: name the fleet CA shipped in the image (default %s), or pass --insecure for development", DefaultCAFile)
	}
	if c.StateDir == "" {
		bad("state_dir is empty: the agent needs a directory for its queue (default %s)", DefaultStateDir)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"heartbeat_interval", c.HeartbeatInterval},
		{"telemetry_sample_interval", c.TelemetrySampleInterval},
		{"telemetry_min_interval", c.TelemetryMinInterval},
		{"telemetry_max_interval", c.TelemetryMaxInterval},
		{"backoff_base", c.BackoffBase},
		{"backoff_cap", c.BackoffCap},
	} {
		if d.v <= 0 {
			bad("%s is %v: must be positive, like 30s", d.name, d.v)
		}
	}
	if c.FirstReconnectJitter < 0 {
		bad("first_reconnect_jitter is %v: must be zero or positive", c.FirstReconnectJitter)
	}
	if c.TelemetryMinInterval > c.TelemetryMaxInterval {
		bad("telemetry_min_interval %v is above telemetry_max_interval %v", c.TelemetryMinInterval, c.TelemetryMaxInterval)
	}
	if c.BackoffBase > c.BackoffCap {
		bad("backoff_base %v is above backoff_cap %v", c.BackoffBase, c.BackoffCap)
	}
	if c.QueueMaxItems <= 0 {
		bad("queue_max_items is %d: must be positive", c.QueueMaxItems)
	}
	if minBytes := int64(2 * protocol.MaxFrameBytes); c.QueueMaxBytes < minBytes {
		bad("queue_max_bytes is %d: must be at least %d so the queue holds a maximum-size frame", c.QueueMaxBytes, minBytes)
	}
	if c.Roots.Proc == "" || c.Roots.Sys == "" || c.Roots.Etc == "" {
		bad("roots.proc, roots.sys and roots.etc must not be empty (defaults /proc, /sys, /etc)")
	}
	if c.DiskPath == "" {
		bad("disk_path is empty: name the filesystem to report, like /")
	}
	if c.UpdateEnabled && (c.UpdateKeysDir == "" || c.UpdateImageInfo == "") {
		bad("update_enabled needs update_keys_dir (default %s) and update_image_info (default %s)", DefaultUpdateKeysDir, DefaultUpdateImageInfo)
	}
	if c.TeleopEnabled && c.TeleopInterval < 100*time.Millisecond {
		bad("teleop_interval is %v: must be at least 100ms, like 2s", c.TeleopInterval)
	}
	if c.MDNSEnabled && (c.MDNSPort < 1 || c.MDNSPort > 65535) {
		bad("mdns_port is %d: must be a port number 1-65535 (default %d)", c.MDNSPort, DefaultMDNSPort)
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		bad("log_level: %w", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid agent configuration:\n  %w", joinIndented(errs))
	}
	return nil
}

// ParseLogLevel maps debug, info, warn and error to slog levels.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("level %q is not debug, info, warn or error", s)
}

// joinedErrors prints one problem per indented line and still unwraps to
// every one of them.
type joinedErrors []error

func (j joinedErrors) Error() string {
	parts := make([]string, len(j))
	for i, e := range j {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n  ")
}

func (j joinedErrors) Unwrap() []error { return j }

func joinIndented(errs []error) error { return joinedErrors(errs) }
