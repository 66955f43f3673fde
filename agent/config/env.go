package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// Environment variables. Each overrides the file's key of the same meaning;
// a variable set to the empty string is ignored.
const (
	EnvConfig                  = "LEKIWI_AGENT_CONFIG"
	EnvRobotID                 = "LEKIWI_AGENT_ROBOT_ID"
	EnvRobotType               = "LEKIWI_AGENT_ROBOT_TYPE"
	EnvServers                 = "LEKIWI_AGENT_SERVERS"
	EnvStateDir                = "LEKIWI_AGENT_STATE_DIR"
	EnvHeartbeatInterval       = "LEKIWI_AGENT_HEARTBEAT_INTERVAL"
	EnvTelemetrySampleInterval = "LEKIWI_AGENT_TELEMETRY_SAMPLE_INTERVAL"
	EnvTelemetryMinInterval    = "LEKIWI_AGENT_TELEMETRY_MIN_INTERVAL"
	EnvTelemetryMaxInterval    = "LEKIWI_AGENT_TELEMETRY_MAX_INTERVAL"
	EnvBackoffBase             = "LEKIWI_AGENT_BACKOFF_BASE"
	EnvBackoffCap              = "LEKIWI_AGENT_BACKOFF_CAP"
	EnvFirstReconnectJitter    = "LEKIWI_AGENT_FIRST_RECONNECT_JITTER"
	EnvQueueMaxItems           = "LEKIWI_AGENT_QUEUE_MAX_ITEMS"
	EnvQueueMaxBytes           = "LEKIWI_AGENT_QUEUE_MAX_BYTES"
	EnvProcRoot                = "LEKIWI_AGENT_PROC_ROOT"
	EnvSysRoot                 = "LEKIWI_AGENT_SYS_ROOT"
	EnvEtcRoot                 = "LEKIWI_AGENT_ETC_ROOT"
	EnvDiskPath                = "LEKIWI_AGENT_DISK_PATH"
	EnvHardwareSerial          = "LEKIWI_AGENT_HARDWARE_SERIAL"
	EnvHardwareModel           = "LEKIWI_AGENT_HARDWARE_MODEL"
	EnvHardwareRevision        = "LEKIWI_AGENT_HARDWARE_REVISION"
	EnvLogLevel                = "LEKIWI_AGENT_LOG_LEVEL"
	EnvCAFile                  = "LEKIWI_AGENT_CA_FILE"
	EnvEnrollmentToken         = "LEKIWI_AGENT_ENROLLMENT_TOKEN"
	EnvEnrollmentTokenFile     = "LEKIWI_AGENT_ENROLLMENT_TOKEN_FILE"
	EnvInsecure                = "LEKIWI_AGENT_INSECURE"
	EnvUpdateEnabled           = "LEKIWI_AGENT_UPDATE_ENABLED"
	EnvProfile                 = "LEKIWI_AGENT_PROFILE"
	EnvTeleopEnabled           = "LEKIWI_AGENT_TELEOP_ENABLED"
	EnvTeleopInterval          = "LEKIWI_AGENT_TELEOP_INTERVAL"
	EnvServicesEnabled         = "LEKIWI_AGENT_SERVICES_ENABLED"
	EnvMDNSEnabled             = "LEKIWI_AGENT_MDNS_ENABLED"
	EnvMDNSPort                = "LEKIWI_AGENT_MDNS_PORT"
)

// EnvVar documents one environment variable.
type EnvVar struct {
	Name string
	Key  string // the YAML key it overrides
	Help string
	set  func(c *Config, v string) error
}

// EnvVars lists every variable Load reads, in the order the help shows them.
func EnvVars() []EnvVar {
	str := func(f func(*Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *f(c) = v; return nil }
	}
	boolean := func(f func(*Config) *bool) func(*Config, string) error {
		return func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not true or false: %w", v, err)
			}
			*f(c) = b
			return nil
		}
	}
	dur := func(f func(*Config) *time.Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("%q is not a duration like 30s or 5m: %w", v, err)
			}
			*f(c) = d
			return nil
		}
	}
	return []EnvVar{
		{Name: EnvConfig, Help: "YAML config file (default " + DefaultFile + ")"},
		{Name: EnvRobotID, Key: "robot_id", Help: "robot id, a DNS label like lekiwi-0042", set: str(func(c *Config) *string { return &c.RobotID })},
		{Name: EnvRobotType, Key: "robot_type", Help: "lekiwi or xle", set: func(c *Config, v string) error { c.RobotType = protocol.RobotType(v); return nil }},
		{Name: EnvServers, Key: "servers", Help: "control base URLs, comma-separated", set: func(c *Config, v string) error {
			c.Servers = nil
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					c.Servers = append(c.Servers, s)
				}
			}
			return nil
		}},
		{Name: EnvStateDir, Key: "state_dir", Help: "directory of the queue and identity/ (default " + DefaultStateDir + ")", set: str(func(c *Config) *string { return &c.StateDir })},
		{Name: EnvCAFile, Key: "ca_file", Help: "fleet CA (PEM) trusted for enrollment (default " + DefaultCAFile + ")", set: str(func(c *Config) *string { return &c.CAFile })},
		{Name: EnvEnrollmentTokenFile, Key: "enrollment_token_file", Help: "file holding the single-use enrollment token; deleted once enrolled", set: str(func(c *Config) *string { return &c.EnrollmentTokenFile })},
		{Name: EnvEnrollmentToken, Key: "enrollment_token", Help: "the enrollment token itself (prefer the file)", set: str(func(c *Config) *string { return &c.EnrollmentToken })},
		{Name: EnvInsecure, Key: "insecure", Help: "true: allow ws:// servers, no TLS, no identity (development only; default false)", set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not true or false: %w", v, err)
			}
			c.Insecure = b
			return nil
		}},
		{Name: EnvHeartbeatInterval, Key: "heartbeat_interval", Help: "heartbeat interval until control sets one (default 30s)", set: dur(func(c *Config) *time.Duration { return &c.HeartbeatInterval })},
		{Name: EnvTelemetrySampleInterval, Key: "telemetry_sample_interval", Help: "how often telemetry is sampled (default 5s)", set: dur(func(c *Config) *time.Duration { return &c.TelemetrySampleInterval })},
		{Name: EnvTelemetryMinInterval, Key: "telemetry_min_interval", Help: "least time between two telemetry messages (default 10s)", set: dur(func(c *Config) *time.Duration { return &c.TelemetryMinInterval })},
		{Name: EnvTelemetryMaxInterval, Key: "telemetry_max_interval", Help: "telemetry is sent at least this often (default 5m)", set: dur(func(c *Config) *time.Duration { return &c.TelemetryMaxInterval })},
		{Name: EnvBackoffBase, Key: "backoff_base", Help: "first reconnect window (default 1s)", set: dur(func(c *Config) *time.Duration { return &c.BackoffBase })},
		{Name: EnvBackoffCap, Key: "backoff_cap", Help: "largest reconnect window (default 60s)", set: dur(func(c *Config) *time.Duration { return &c.BackoffCap })},
		{Name: EnvFirstReconnectJitter, Key: "first_reconnect_jitter", Help: "extra random delay before the first reconnect after losing a server (default 10s)", set: dur(func(c *Config) *time.Duration { return &c.FirstReconnectJitter })},
		{Name: EnvQueueMaxItems, Key: "queue_max_items", Help: "unacknowledged messages kept (default 10000)", set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%q is not an integer: %w", v, err)
			}
			c.QueueMaxItems = n
			return nil
		}},
		{Name: EnvQueueMaxBytes, Key: "queue_max_bytes", Help: "bytes of unacknowledged messages kept (default 8388608)", set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%q is not an integer number of bytes: %w", v, err)
			}
			c.QueueMaxBytes = n
			return nil
		}},
		{Name: EnvProcRoot, Key: "roots.proc", Help: "proc tree to read (default /proc)", set: str(func(c *Config) *string { return &c.Roots.Proc })},
		{Name: EnvSysRoot, Key: "roots.sys", Help: "sys tree to read (default /sys)", set: str(func(c *Config) *string { return &c.Roots.Sys })},
		{Name: EnvEtcRoot, Key: "roots.etc", Help: "etc tree to read os-release from (default /etc)", set: str(func(c *Config) *string { return &c.Roots.Etc })},
		{Name: EnvDiskPath, Key: "disk_path", Help: "filesystem whose usage is reported (default /)", set: str(func(c *Config) *string { return &c.DiskPath })},
		{Name: EnvHardwareSerial, Key: "hardware.serial", Help: "board serial (default: from the device tree)", set: str(func(c *Config) *string { return &c.Hardware.Serial })},
		{Name: EnvHardwareModel, Key: "hardware.model", Help: "board model (default: from the device tree)", set: str(func(c *Config) *string { return &c.Hardware.Model })},
		{Name: EnvHardwareRevision, Key: "hardware.revision", Help: "board revision code (default: from /proc/cpuinfo)", set: str(func(c *Config) *string { return &c.Hardware.Revision })},
		{Name: EnvUpdateEnabled, Key: "update_enabled", Help: "true: install over-the-air updates control sends (default false)", set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not true or false: %w", v, err)
			}
			c.UpdateEnabled = b
			return nil
		}},
		{Name: EnvProfile, Key: "profile", Help: "robot profile whose teleop ports and units are watched (default: from image.json, else robot_type)", set: str(func(c *Config) *string { return &c.Profile })},
		{Name: EnvTeleopEnabled, Key: "teleop_enabled", Help: "false: no teleoperation detection (default true)", set: boolean(func(c *Config) *bool { return &c.TeleopEnabled })},
		{Name: EnvTeleopInterval, Key: "teleop_interval", Help: "how often the socket tables are read for teleoperation (default 2s)", set: dur(func(c *Config) *time.Duration { return &c.TeleopInterval })},
		{Name: EnvServicesEnabled, Key: "services_enabled", Help: "false: no systemd unit watch (default true)", set: boolean(func(c *Config) *bool { return &c.ServicesEnabled })},
		{Name: EnvMDNSEnabled, Key: "mdns_enabled", Help: "false: do not advertise the robot over mDNS (default true)", set: boolean(func(c *Config) *bool { return &c.MDNSEnabled })},
		{Name: EnvMDNSPort, Key: "mdns_port", Help: "SRV port advertised over mDNS (default 22)", set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%q is not a port number: %w", v, err)
			}
			c.MDNSPort = n
			return nil
		}},
		{Name: EnvLogLevel, Key: "log_level", Help: "debug, info, warn or error (default info)", set: str(func(c *Config) *string { return &c.LogLevel })},
	}
}

func (c *Config) mergeEnv(lookup func(string) (string, bool)) error {
	for _, ev := range EnvVars() {
		if ev.set == nil {
			continue
		}
		// Set-but-empty counts as unset, as systemd's Environment= and
		// container runtimes make empty variables easy to leave behind.
		v, ok := lookup(ev.Name)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		if err := ev.set(c, strings.TrimSpace(v)); err != nil {
			return fmt.Errorf("environment variable %s: %w", ev.Name, err)
		}
	}
	return nil
}
