package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is a control node's configuration. Precedence: YAML file, then
// environment (LEKIWI_CONTROL_*), then command-line flags.
type Config struct {
	// NodeID names this node in events; defaults to the dqlite address.
	NodeID string `yaml:"node_id"`
	// DataDir holds the dqlite data of this node.
	DataDir string `yaml:"data_dir"`
	// Listen is the HTTP address for robots (/v1/agent), the API and metrics.
	Listen string `yaml:"listen"`
	// DBAddress is where this node's dqlite talks to its peers.
	DBAddress string `yaml:"db_address"`
	// Join lists dqlite addresses of existing members (empty on the first node).
	Join []string `yaml:"join"`
	// HeartbeatInterval is the interval robots are told to heartbeat at.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// OfflineGrace is added to 1.5 heartbeat intervals before a silent robot
	// is declared offline.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
}

// Defaults are the values of an unconfigured node.
func Defaults() Config {
	return Config{
		DataDir:           "/var/lib/lekiwi/control",
		Listen:            "127.0.0.1:8080",
		DBAddress:         "127.0.0.1:9001",
		HeartbeatInterval: 30 * time.Second,
		OfflineGrace:      15 * time.Second,
		LogLevel:          "info",
	}
}

// EnvPrefix starts every environment override.
const EnvPrefix = "LEKIWI_CONTROL_"

// LoadFile overlays a YAML file onto c. Unknown keys are errors, so a typo
// does not silently leave a default in place.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read control config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("parse control config %s: %w", path, err)
	}
	return nil
}

// LoadEnv overlays LEKIWI_CONTROL_* variables read through getenv.
func (c *Config) LoadEnv(getenv func(string) string) error {
	str := func(name string, dst *string) {
		if v := getenv(EnvPrefix + name); v != "" {
			*dst = v
		}
	}
	dur := func(name string, dst *time.Duration) error {
		v := getenv(EnvPrefix + name)
		if v == "" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s%s=%q is not a duration like 30s: %w", EnvPrefix, name, v, err)
		}
		*dst = d
		return nil
	}
	str("NODE_ID", &c.NodeID)
	str("DATA_DIR", &c.DataDir)
	str("LISTEN", &c.Listen)
	str("DB_ADDRESS", &c.DBAddress)
	str("LOG_LEVEL", &c.LogLevel)
	if v := getenv(EnvPrefix + "JOIN"); v != "" {
		c.Join = splitList(v)
	}
	return errors.Join(dur("HEARTBEAT_INTERVAL", &c.HeartbeatInterval), dur("OFFLINE_GRACE", &c.OfflineGrace))
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	for name, addr := range map[string]string{"listen": c.Listen, "db_address": c.DBAddress} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q must be host:port: %w", name, addr, err))
		}
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			errs = append(errs, fmt.Errorf("join address %q must be host:port: %w", j, err))
		}
		if j == c.DBAddress {
			errs = append(errs, fmt.Errorf("join lists this node's own db_address %q: name the other members", j))
		}
	}
	if c.HeartbeatInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat_interval %s is below 100ms", c.HeartbeatInterval))
	}
	if c.OfflineGrace < 0 {
		errs = append(errs, fmt.Errorf("offline_grace %s is negative", c.OfflineGrace))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
